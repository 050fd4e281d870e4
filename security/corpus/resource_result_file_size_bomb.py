# attack: write 80 MiB into /out/result.json, the one file on the host's disk it can write
# expect: runtime_error
# checks: the host's disk is protected by RLIMIT_FSIZE (64 MiB): the write fails with EFBIG,
#   and the harness then overwrites the file with the runtime_error result
# control: ulimit fsize on the result channel (the host's disk)
# proof: ATTEMPTED result file size bomb
# proof: EFBIG after 64 MiB
# raises: OSError
import errno

import backtrader as bt

MIB = b"[" * (1 << 20)


class ResultFileSizeBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED result file size bomb", flush=True)
        written = 0
        with open("/out/result.json", "r+b", buffering=0) as stream:
            while written < 80:
                try:
                    stream.write(MIB)
                except OSError as e:
                    print(f"{errno.errorcode[e.errno]} after {written} MiB", flush=True)
                    raise
                written += 1
        print(f"wrote {written} MiB to the host's disk", flush=True)

# attack: fill /tmp with 1 MiB files until the disk is full
# expect: runtime_error
# checks: /tmp is a size-capped tmpfs: writes fail with ENOSPC at its cap, and nothing reaches
#   the host's disk
# control: /tmp tmpfs size cap (and its pages count against the memory limit)
# proof: ATTEMPTED /tmp bomb
# proof: /tmp full after \d+ MiB: ENOSPC
# raises: OSError
import errno
import os

import backtrader as bt

MIB = b"\xa5" * (1 << 20)


class TmpBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED /tmp bomb", flush=True)
        written = 0
        while True:
            try:
                with open(f"/tmp/fill-{written}", "wb") as stream:
                    stream.write(MIB)
            except OSError as e:
                print(f"/tmp full after {written} MiB: {errno.errorcode[e.errno]}", flush=True)
                raise
            written += 1
            if written > 100_000:
                os._exit(99)  # unreachable with a cap: a crash, never a completed run

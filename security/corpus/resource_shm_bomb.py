# attack: fill /dev/shm (shared memory) until it is full
# expect: runtime_error
# checks: /dev/shm is its own size-capped tmpfs in a private IPC namespace: writes fail with
#   ENOSPC at its cap, and no other container or the host shares it
# control: shm_size cap and the private IPC namespace
# proof: ATTEMPTED /dev/shm bomb
# proof: /dev/shm full after \d+ MiB: ENOSPC
# raises: OSError
import errno
import os

import backtrader as bt

MIB = b"\x5a" * (1 << 20)


class ShmBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED /dev/shm bomb", flush=True)
        written = 0
        while True:
            try:
                with open(f"/dev/shm/fill-{written}", "wb") as stream:
                    stream.write(MIB)
            except OSError as e:
                print(f"/dev/shm full after {written} MiB: {errno.errorcode[e.errno]}", flush=True)
                raise
            written += 1
            if written > 100_000:
                os._exit(99)  # unreachable with a cap: a crash, never a completed run

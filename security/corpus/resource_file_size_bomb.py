# attack: make one enormous file: seek 1 TiB into a file and write, then truncate to 1 TiB
# expect: runtime_error
# checks: RLIMIT_FSIZE refuses both with EFBIG (Python ignores SIGXFSZ, so it is an error, not
#   a signal); no file larger than the limit exists anywhere
# control: ulimit fsize
# proof: ATTEMPTED file size bomb
# proof: seek-and-write refused: EFBIG
# proof: truncate refused: EFBIG
# raises: OSError
import errno
import os

import backtrader as bt

TIB = 1 << 40


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class FileSizeBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED file size bomb", flush=True)
        fd = os.open("/tmp/sparse", os.O_CREAT | os.O_WRONLY, 0o600)
        refusals = []
        for label, action in (
            ("seek-and-write", lambda: os.pwrite(fd, b"x", TIB)),
            ("truncate", lambda: os.ftruncate(fd, TIB)),
        ):
            try:
                action()
            except OSError as e:
                print(f"{label} refused: {errno.errorcode[e.errno]}", flush=True)
                refusals.append(e)
                continue
            raise SandboxBreach(f"{label} made a 1 TiB file")
        raise refusals[0]

# attack: put a FIFO where the host reads the result, so that the host's read blocks forever
#   (a host worker hung by a sandbox)
# expect: completed
# checks: the FIFO cannot be created in /out (not writable), so the attempt fails. Were it to
#   succeed, the host opens with O_NONBLOCK and refuses a non-regular file (result_invalid)
# control: the root-owned /out; O_NONBLOCK, regular-file-only reads
# proof: ATTEMPTED mkfifo /out/result\.json: failed with E[A-Z]+
# proof: ATTEMPTED mkfifo /out/fifo: failed with EACCES
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def replace_with_fifo():
    try:
        os.unlink("/out/result.json")
    finally:
        os.mkfifo("/out/result.json")


ATTEMPTS = [
    ("mkfifo /out/result.json", replace_with_fifo),
    ("mkfifo /out/fifo", lambda: os.mkfifo("/out/fifo")),
    ("mknod /out/progress.fifo", lambda: os.mknod("/out/progress.fifo", 0o600 | 0o010000)),
]


class ResultFifo(bt.Strategy):
    def start(self):
        breaches = []
        for label, action in ATTEMPTS:
            try:
                action()
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"FIFO planted: {breaches}")

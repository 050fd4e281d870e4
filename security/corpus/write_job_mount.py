# attack: tamper with the job: append to the market data, add files, replace or delete the spec
# expect: completed
# checks: /job is a read-only bind: every write fails, so the data the host validated is the
#   data the backtest reads, and nothing is written back into the host's run dir
# control: the read-only bind mount of the run's input dir (owned by root as well)
# proof: ATTEMPTED append /job/data\.csv: failed with (EROFS|EACCES)
# proof: ATTEMPTED create /job/evil: failed with (EROFS|EACCES)
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def append(path):
    with open(path, "ab") as stream:
        stream.write(b"2006-12-31T00:00:00,1,1,1,1,1\n")


def create(path):
    with open(path, "wb") as stream:
        stream.write(b"evil")


ATTEMPTS = [
    ("append /job/data.csv", lambda: append("/job/data.csv")),
    ("create /job/evil", lambda: create("/job/evil")),
    ("rename /job/spec.json", lambda: os.rename("/job/spec.json", "/job/spec.old")),
    ("unlink /job/data.csv", lambda: os.unlink("/job/data.csv")),
    ("chmod /job/data.csv", lambda: os.chmod("/job/data.csv", 0o666)),
    ("mkdir /job/dir", lambda: os.mkdir("/job/dir")),
    ("symlink /job/link", lambda: os.symlink("/etc/passwd", "/job/link")),
]


class JobMount(bt.Strategy):
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
            raise SandboxBreach(f"wrote to /job: {breaches}")

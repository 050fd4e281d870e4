# attack: replace /out/result.json with a directory (or make the result a directory tree), to
#   crash or confuse the host's reader
# expect: completed
# checks: nothing can be created or removed in /out, so the attempt fails. Were it to succeed,
#   the host refuses a non-regular file (result_invalid), never completed
# control: the root-owned /out; regular-file-only reads
# proof: ATTEMPTED mkdir /out/result\.json: failed with E[A-Z]+
# proof: ATTEMPTED mkdir /out/dir: failed with EACCES
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def replace_with_directory():
    try:
        os.unlink("/out/result.json")
    finally:
        os.mkdir("/out/result.json")


ATTEMPTS = [
    ("mkdir /out/result.json", replace_with_directory),
    ("mkdir /out/dir", lambda: os.mkdir("/out/dir")),
]


class ResultDirectory(bt.Strategy):
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
            raise SandboxBreach(f"directory planted: {breaches}")

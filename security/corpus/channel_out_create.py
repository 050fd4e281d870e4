# attack: create files in /out (to fill the host's disk with many files, or to leave files
#   the host might pick up), hard-link the result elsewhere, or chown it
# expect: completed
# checks: /out accepts no new entry of any kind; the result cannot be hard-linked or given away
# control: the root-owned /out directory (mode 0755); no CAP_CHOWN
# proof: ATTEMPTED create /out/evil: failed with EACCES
# proof: ATTEMPTED hard link /out/result\.json to /out/link: failed with EACCES
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def create(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))


ATTEMPTS = [
    ("create /out/evil", lambda: create("/out/evil")),
    ("create /out/.hidden", lambda: create("/out/.hidden")),
    ("hard link /out/result.json to /out/link", lambda: os.link("/out/result.json", "/out/link")),
    ("hard link /out/result.json into /tmp", lambda: os.link("/out/result.json", "/tmp/link")),
    ("chown /out/result.json to root", lambda: os.chown("/out/result.json", 0, 0)),
    ("chmod /out", lambda: os.chmod("/out", 0o777)),
]


class OutCreate(bt.Strategy):
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
            raise SandboxBreach(f"/out changed: {breaches}")

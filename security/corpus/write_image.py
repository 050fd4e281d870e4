# attack: change the image: backtrader's code, the harness, python itself, /etc/passwd, and
#   create files anywhere outside /tmp (to persist, or to plant code a later run imports)
# expect: completed
# checks: the root filesystem is read-only and the image's files belong to root: every write
#   fails, and no later run can see anything of this one (single-use containers besides)
# control: read-only root filesystem; files owned by root; single-use containers
# proof: ATTEMPTED overwrite /opt/runner/harness\.py: failed with (EROFS|EACCES)
# proof: ATTEMPTED create /usr/local/lib/python3\.11/sitecustomize\.py: failed with (EROFS|EACCES)
import errno
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def write(path, mode="ab"):
    with open(path, mode) as stream:
        stream.write(b"\nraise SystemExit('tampered')\n")


BACKTRADER_INIT = os.path.join(os.path.dirname(bt.__file__), "__init__.py")
ATTEMPTS = [
    ("overwrite /opt/runner/harness.py", lambda: write("/opt/runner/harness.py")),
    ("overwrite backtrader", lambda: write(BACKTRADER_INIT)),
    ("create /usr/local/lib/python3.11/sitecustomize.py",
     lambda: write("/usr/local/lib/python3.11/sitecustomize.py", "wb")),
    ("append /etc/passwd", lambda: write("/etc/passwd")),
    ("replace /usr/bin/python3", lambda: os.rename("/usr/bin/python3", "/usr/bin/python3.old")),
    ("create /evil", lambda: write("/evil", "wb")),
    ("create /var/tmp/evil", lambda: write("/var/tmp/evil", "wb")),
    ("mkdir /opt/evil", lambda: os.mkdir("/opt/evil")),
    ("chmod /usr/bin", lambda: os.chmod("/usr/bin", 0o777)),
]  # fmt: skip


class ImageWrites(bt.Strategy):
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
            raise SandboxBreach(f"changed the image: {breaches}")

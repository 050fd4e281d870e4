# attack: read home directories, SSH and cloud credentials, the shadow file, and search every
#   readable file in the likely places for the host's canary
# expect: completed
# checks: /root and /etc/shadow are unreadable to the sandbox uid, /home is empty, and no file
#   the sandbox can read holds a host secret
# control: the non-root uid; the image holds no secrets; nothing of the host is mounted
# proof: ATTEMPTED list /root: failed with PermissionError
# proof: ATTEMPTED read /etc/shadow: failed with PermissionError
# proof: ATTEMPTED search: \d+ files read
import os

import backtrader as bt

SEARCH_ROOTS = ["/home", "/root", "/etc", "/tmp", "/job", "/out", "/run", "/var", "/opt", "/mnt"]
CREDENTIALS = ["/root/.ssh/id_rsa", "/root/.aws/credentials", "/tmp/.ssh", "/tmp/.aws",
               "/home/runner/.ssh", "/etc/ssh/ssh_host_rsa_key"]  # fmt: skip
# Built from parts: the strategy's own source (in /job/spec.json) must not match itself.
CANARY = b"host-" + b"canary-"


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def attempt(label, action):
    try:
        action()
    except OSError as e:
        print(f"ATTEMPTED {label}: failed with {type(e).__name__}", flush=True)
        return False
    print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
    return True


def read(path):
    with open(path, "rb") as stream:
        return stream.read(1 << 20)


class HomeDirs(bt.Strategy):
    def start(self):
        breaches = [label for label, action in [
            ("list /root", lambda: os.listdir("/root")),
            ("read /etc/shadow", lambda: read("/etc/shadow")),
            *((f"read {path}", lambda p=path: read(p)) for path in CREDENTIALS),
        ] if attempt(label, action)]  # fmt: skip
        if os.listdir("/home"):
            breaches.append(f"/home holds {os.listdir('/home')}")
        files = 0
        for root in SEARCH_ROOTS:
            for directory, _, names in os.walk(root):
                for name in names:
                    try:
                        content = read(os.path.join(directory, name))
                    except OSError:
                        continue
                    files += 1
                    if CANARY in content:
                        breaches.append(os.path.join(directory, name))
        print(f"ATTEMPTED search: {files} files read", flush=True)
        if breaches:
            raise SandboxBreach(f"readable: {breaches}")

# attack: reach the Docker and containerd APIs over their unix sockets (the usual escape: a
#   mounted docker.sock is root on the host), and the host's abstract unix sockets
# expect: completed
# checks: no daemon socket is mounted, and the container's network namespace has no abstract
#   socket of the host (containerd-shim's abstract sockets were CVE-2020-15257)
# control: the container spec (the socket is never mounted); network none (own net namespace)
# proof: ATTEMPTED connect /var/run/docker\.sock: failed with ENOENT
# proof: ATTEMPTED abstract sockets visible: \d+
import errno
import socket

import backtrader as bt

PATHS = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
    "/run/docker/plugins/docker.sock",
    "/run/podman/podman.sock",
]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class UnixSockets(bt.Strategy):
    def start(self):
        breaches = []
        for path in PATHS:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(path)
                except OSError as e:
                    name = errno.errorcode.get(e.errno, type(e).__name__)
                    print(f"ATTEMPTED connect {path}: failed with {name}", flush=True)
                    continue
            print(f"ATTEMPTED connect {path}: CONNECTED", flush=True)
            breaches.append(path)
        # Abstract sockets belong to a network namespace: only this container's are listed.
        with open("/proc/net/unix") as table:
            abstract = [line.split()[-1] for line in table if line.split()[-1].startswith("@")]
        print(f"ATTEMPTED abstract sockets visible: {len(abstract)}", flush=True)
        for name in abstract:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect("\0" + name[1:])
                except OSError:
                    continue
            breaches.append(name)
        if breaches:
            raise SandboxBreach(f"connected to {breaches}")

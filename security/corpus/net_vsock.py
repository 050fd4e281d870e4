# attack: open an AF_VSOCK socket, the channel between a VM and its hypervisor, which network
#   namespaces do not isolate (the host here is a Firecracker VM)
# expect: completed
# checks: the socket cannot even be created; it is never connected, so nothing is sent to the
#   hypervisor even when the attack would have worked (Docker 20.10's default profile allows it)
# control: the seccomp profile (socket() only for AF_UNIX, AF_INET, AF_INET6)
# proof: ATTEMPTED AF_VSOCK socket: failed with EPERM
import errno
import socket

import backtrader as bt

AF_VSOCK = 40


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class Vsock(bt.Strategy):
    def start(self):
        try:
            sock = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
        except OSError as e:
            name = errno.errorcode.get(e.errno, type(e).__name__)
            print(f"ATTEMPTED AF_VSOCK socket: failed with {name}", flush=True)
            return
        sock.close()  # never connected: the point is only whether it can exist
        print("ATTEMPTED AF_VSOCK socket: CREATED", flush=True)
        raise SandboxBreach("an AF_VSOCK socket could be created")

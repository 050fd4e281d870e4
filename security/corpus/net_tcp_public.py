# attack: open TCP connections to public addresses (IPv4 and IPv6 DNS resolvers, HTTPS)
# expect: completed
# checks: every connect fails inside the container (there is no interface but loopback; gVisor
#   says EHOSTUNREACH where Linux says ENETUNREACH); the
#   strategy raises if any succeeds, which would flip the verdict to runtime_error
# control: network none (no network namespace interface but lo)
# proof: ATTEMPTED tcp 1\.1\.1\.1:443: failed with E(NET|HOST)UNREACH
# proof: ATTEMPTED tcp 2606:4700:4700::1111:443: failed with
import errno
import socket

import backtrader as bt

TARGETS = [("1.1.1.1", 443), ("8.8.8.8", 53), ("9.9.9.9", 80), ("2606:4700:4700::1111", 443)]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class TcpPublic(bt.Strategy):
    def start(self):
        breaches = []
        for host, port in TARGETS:
            label = f"tcp {host}:{port}"
            try:
                with socket.create_connection((host, port), timeout=3):
                    pass
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: CONNECTED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"connected to {breaches}")

# attack: query cloud metadata services for credentials (AWS/GCP/Azure IMDS, ECS, Alibaba,
#   the IPv6 IMDS)
# expect: completed
# checks: link-local and metadata addresses are unreachable from inside: no instance role
#   credentials can be stolen
# control: network none
# proof: ATTEMPTED http 169\.254\.169\.254:80: failed with E(NET|HOST)UNREACH
import errno
import socket

import backtrader as bt

TARGETS = [
    ("169.254.169.254", 80),
    ("169.254.170.2", 80),
    ("100.100.100.200", 80),
    ("fd00:ec2::254", 80),
]
REQUEST = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.0\r\nMetadata: true\r\n\r\n"


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class Metadata(bt.Strategy):
    def start(self):
        breaches = []
        for host, port in TARGETS:
            label = f"http {host}:{port}"
            try:
                with socket.create_connection((host, port), timeout=2) as sock:
                    sock.sendall(REQUEST)
                    sock.recv(256)
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: ANSWERED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"metadata reachable at {breaches}")

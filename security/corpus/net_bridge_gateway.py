# attack: reach the host through the Docker bridge gateway (the daemon's TCP port, SSH, HTTP)
#   and the host's own resolver
# expect: completed
# checks: the bridge is not even routable from inside (no interface); the connects fail
#   locally, so nothing reaches the host's services. The host itself never sends to these.
# control: network none (the container is on no bridge)
# proof: ATTEMPTED tcp 172\.17\.0\.1:2375: failed with E(NET|HOST)UNREACH
import errno
import socket

import backtrader as bt

TARGETS = [
    ("172.17.0.1", 2375),  # dockerd over plain TCP, where someone enabled it
    ("172.17.0.1", 2376),
    ("172.17.0.1", 22),
    ("172.17.0.1", 80),
    ("172.18.0.1", 2375),
    ("10.0.0.1", 80),
]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class BridgeGateway(bt.Strategy):
    def start(self):
        breaches = []
        for host, port in TARGETS:
            label = f"tcp {host}:{port}"
            try:
                with socket.create_connection((host, port), timeout=2):
                    pass
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: CONNECTED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"reached {breaches}")

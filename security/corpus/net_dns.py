# attack: resolve public and cloud-internal names through the resolver the container was given
# expect: completed
# checks: name resolution fails (the resolver in /etc/resolv.conf is unreachable without a
#   network), so no DNS query can carry data out (no DNS tunnelling)
# control: network none
# proof: ATTEMPTED resolve example\.com: failed with
# proof: ATTEMPTED resolve metadata\.google\.internal: failed with
import socket

import backtrader as bt

NAMES = ["example.com", "metadata.google.internal", "host.docker.internal", "exfil.example.net"]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class Dns(bt.Strategy):
    def start(self):
        breaches = []
        for name in NAMES:
            try:
                answers = socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)
            except OSError as e:  # socket.gaierror
                print(f"ATTEMPTED resolve {name}: failed with {e}", flush=True)
                continue
            print(f"ATTEMPTED resolve {name}: RESOLVED {answers[:2]}", flush=True)
            breaches.append(name)
        if breaches:
            raise SandboxBreach(f"resolved {breaches}")

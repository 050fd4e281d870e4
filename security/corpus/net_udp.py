# attack: send UDP datagrams (a DNS query, a syslog line) to public addresses and wait for
#   an answer
# expect: completed
# checks: sendto fails inside the container (no route); nothing leaves it
# control: network none
# proof: ATTEMPTED udp 8\.8\.8\.8:53: failed with E(NET|HOST)UNREACH
import errno
import socket

import backtrader as bt

# A DNS query for example.com, type A: a real datagram, were it ever to leave.
QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
TARGETS = [("8.8.8.8", 53), ("1.1.1.1", 53), ("9.9.9.9", 514)]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class Udp(bt.Strategy):
    def start(self):
        breaches = []
        for host, port in TARGETS:
            label = f"udp {host}:{port}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                try:
                    sock.sendto(QUERY, (host, port))
                    sock.recvfrom(512)
                except OSError as e:
                    name = errno.errorcode.get(e.errno, type(e).__name__)
                    print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                    continue
            print(f"ATTEMPTED {label}: ANSWERED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"UDP answers from {breaches}")

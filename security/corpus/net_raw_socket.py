# attack: open raw sockets (raw IPv4/ICMP, raw IPv6, packet sockets) to forge packets or sniff,
#   and an unprivileged ICMP "ping" socket towards a public address
# expect: completed
# checks: raw and packet sockets are refused (no CAP_NET_RAW; packet sockets also by seccomp);
#   the ping socket, if the kernel lets it be created, cannot send anywhere
# control: cap_drop ALL (no CAP_NET_RAW); the seccomp socket-family filter; network none
# proof: ATTEMPTED raw AF_INET ICMP: failed with EPERM
# proof: ATTEMPTED packet socket: failed with EPERM
# proof: ATTEMPTED ping 1\.1\.1\.1: failed with
import errno
import socket

import backtrader as bt

ECHO_REQUEST = bytes.fromhex("0800f7ff00000000")
RAW_SOCKETS = [
    ("raw AF_INET ICMP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("raw AF_INET6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    ("packet socket", socket.AF_PACKET, socket.SOCK_RAW, 0x0300),  # ETH_P_ALL, big-endian
]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def failure(e: OSError) -> str:
    return errno.errorcode.get(e.errno, type(e).__name__)


class RawSockets(bt.Strategy):
    def start(self):
        breaches = []
        for label, family, kind, proto in RAW_SOCKETS:
            try:
                socket.socket(family, kind, proto).close()
            except OSError as e:
                print(f"ATTEMPTED {label}: failed with {failure(e)}", flush=True)
                continue
            print(f"ATTEMPTED {label}: OPENED", flush=True)
            breaches.append(label)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as ping:
                ping.settimeout(2)
                ping.sendto(ECHO_REQUEST, ("1.1.1.1", 0))
                ping.recvfrom(64)
        except OSError as e:
            print(f"ATTEMPTED ping 1.1.1.1: failed with {failure(e)}", flush=True)
        else:
            print("ATTEMPTED ping 1.1.1.1: ANSWERED", flush=True)
            breaches.append("ping")
        if breaches:
            raise SandboxBreach(f"opened {breaches}")

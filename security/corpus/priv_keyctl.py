# attack: use the kernel keyring (add_key, request_key, keyctl): keyrings are not namespaced,
#   so keys could be shared with, or read from, other containers of the same uid
# expect: completed
# checks: all three are refused (EPERM)
# control: the seccomp profile (Docker's default already denies them; kept denied)
# proof: ATTEMPTED add_key: failed with EPERM
# proof: ATTEMPTED keyctl\(KEYCTL_JOIN_SESSION_KEYRING\): failed with EPERM
import ctypes
import errno
import platform

import backtrader as bt

SYS_ADD_KEY, SYS_REQUEST_KEY, SYS_KEYCTL = 248, 249, 250  # x86_64
KEY_SPEC_SESSION_KEYRING, KEY_SPEC_USER_KEYRING = -3, -4
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_READ = 1, 11
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
PAYLOAD = b"stolen"


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def call(number: int, *args) -> int:
    return LIBC.syscall(ctypes.c_long(number), *args)


ATTEMPTS = [
    ("add_key", lambda: call(SYS_ADD_KEY, b"user", b"sandbox:key", PAYLOAD,
                             ctypes.c_size_t(len(PAYLOAD)), ctypes.c_long(KEY_SPEC_USER_KEYRING))),
    ("request_key", lambda: call(SYS_REQUEST_KEY, b"user", b"host:key", None,
                                 ctypes.c_long(KEY_SPEC_SESSION_KEYRING))),
    ("keyctl(KEYCTL_JOIN_SESSION_KEYRING)",
     lambda: call(SYS_KEYCTL, ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), b"_ses")),
    ("keyctl(KEYCTL_READ, user keyring)",
     lambda: call(SYS_KEYCTL, ctypes.c_long(KEYCTL_READ), ctypes.c_long(KEY_SPEC_USER_KEYRING),
                  None, ctypes.c_long(0))),
]  # fmt: skip


class Keyctl(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        breaches = []
        for label, action in ATTEMPTS:
            if action() == -1:
                name = errno.errorcode[ctypes.get_errno()]
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"keyring reachable: {breaches}")

# attack: mount filesystems (a tmpfs over /job, a new proc, a bind of / elsewhere), unmount the
#   read-only data mount, use the new mount API, and the setuid-root mount binary
# expect: completed
# checks: every mount call is refused (EPERM: no CAP_SYS_ADMIN, and the seccomp profile has no
#   mount family at all); the setuid binary gains nothing (no_new_privs)
# control: cap_drop ALL; the seccomp profile; no-new-privileges
# proof: ATTEMPTED mount tmpfs on /job: failed with EPERM
# proof: ATTEMPTED umount2 /job: failed with EPERM
# proof: ATTEMPTED /usr/bin/mount: exit status [1-9]
import ctypes
import errno
import os
import platform
import subprocess

import backtrader as bt

SYS_FSOPEN, SYS_OPEN_TREE = 430, 428  # x86_64
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def checked(result: int) -> None:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def mount(source: bytes, target: bytes, fs_type: bytes, flags: int = 0) -> None:
    checked(LIBC.mount(source, target, fs_type, ctypes.c_ulong(flags), None))


MS_BIND, MS_REC, MNT_DETACH, OPEN_TREE_CLONE = 0x1000, 0x4000, 2, 1
ATTEMPTS = [
    ("mount tmpfs on /job", lambda: mount(b"none", b"/job", b"tmpfs")),
    ("mount proc on /tmp", lambda: mount(b"proc", b"/tmp", b"proc")),
    ("bind-mount / on /tmp", lambda: mount(b"/", b"/tmp", b"", MS_BIND | MS_REC)),
    ("umount2 /job", lambda: checked(LIBC.umount2(b"/job", MNT_DETACH))),
    ("fsopen tmpfs", lambda: checked(LIBC.syscall(ctypes.c_long(SYS_FSOPEN), b"tmpfs",
                                                  ctypes.c_long(0)))),
    ("open_tree /", lambda: checked(LIBC.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_long(-100),
                                                 b"/", ctypes.c_long(OPEN_TREE_CLONE)))),
]  # fmt: skip


class Mount(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        breaches = []
        for label, action in ATTEMPTS:
            try:
                action()
            except OSError as e:
                print(f"ATTEMPTED {label}: failed with {errno.errorcode[e.errno]}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        setuid_mount = subprocess.run(
            ["/usr/bin/mount", "-t", "tmpfs", "none", "/tmp"], capture_output=True, timeout=10
        )
        print(f"ATTEMPTED /usr/bin/mount: exit status {setuid_mount.returncode}", flush=True)
        if setuid_mount.returncode == 0:
            breaches.append("setuid mount")
        if breaches:
            raise SandboxBreach(f"mounted: {breaches}")

# attack: create namespaces (a user namespace makes the caller "root" inside it, the first
#   step of most unprivileged kernel exploits), by unshare, clone and clone3, and join PID 1's
#   namespaces with setns
# expect: completed
# checks: unshare and setns are refused (EPERM), clone with namespace flags is refused (EPERM),
#   and clone3 answers ENOSYS (so glibc falls back to clone, whose flags can be checked)
# why: gVisor (runsc --oci-seccomp) applies the profile's rules but answers clone3 with EPERM
#   rather than the profile's ENOSYS, and has no /proc/1/ns/mnt to open (ENOENT)
# control: the seccomp profile (no unshare/setns; clone only without CLONE_NEW* flags; clone3
#   ENOSYS)
# proof: ATTEMPTED unshare\(CLONE_NEWUSER\): failed with EPERM
# proof: ATTEMPTED clone\(CLONE_NEWUSER\): failed with EPERM
# proof: ATTEMPTED clone3\(CLONE_NEWUSER\): failed with ENOSYS
# proof: ATTEMPTED setns\(/proc/1/ns/mnt\): failed with EPERM
# proof-runsc: ATTEMPTED unshare\(CLONE_NEWUSER\): failed with EPERM
# proof-runsc: ATTEMPTED clone\(CLONE_NEWUSER\): failed with EPERM
# proof-runsc: ATTEMPTED clone3\(CLONE_NEWUSER\): failed with EPERM
# proof-runsc: ATTEMPTED setns\(/proc/1/ns/mnt\): failed with ENOENT
import ctypes
import errno
import os
import platform
import signal

import backtrader as bt

SYS_CLONE, SYS_UNSHARE, SYS_SETNS, SYS_CLONE3 = 56, 272, 308, 435  # x86_64
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
        )
    ]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def syscall(number: int, *args) -> int:
    result = LIBC.syscall(ctypes.c_long(number), *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if result == 0 and number in (SYS_CLONE, SYS_CLONE3):
        os._exit(0)  # a child was created after all: it must never run the harness's code
    return result


def setns_init_mount_namespace() -> None:
    fd = os.open("/proc/1/ns/mnt", os.O_RDONLY)
    try:
        syscall(SYS_SETNS, ctypes.c_long(fd), ctypes.c_long(0))
    finally:
        os.close(fd)


def clone3_new_user() -> None:
    args = CloneArgs(flags=CLONE_NEWUSER, exit_signal=signal.SIGCHLD)
    syscall(SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))


def unshare(flags: int) -> None:
    syscall(SYS_UNSHARE, ctypes.c_long(flags))


def clone(flags: int) -> None:
    zero = ctypes.c_long(0)
    syscall(SYS_CLONE, ctypes.c_long(flags | signal.SIGCHLD), zero, zero, zero, zero)


ATTEMPTS = [
    ("unshare(CLONE_NEWUSER)", lambda: unshare(CLONE_NEWUSER)),
    ("unshare(CLONE_NEWUSER|CLONE_NEWNS)", lambda: unshare(CLONE_NEWUSER | CLONE_NEWNS)),
    ("unshare(CLONE_NEWNET)", lambda: unshare(CLONE_NEWNET)),
    ("clone(CLONE_NEWUSER)", lambda: clone(CLONE_NEWUSER)),
    ("clone(CLONE_NEWPID)", lambda: clone(CLONE_NEWPID)),
    ("clone3(CLONE_NEWUSER)", clone3_new_user),
    ("setns(/proc/1/ns/mnt)", setns_init_mount_namespace),
]


class Unshare(bt.Strategy):
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
        if breaches:
            raise SandboxBreach(f"namespaces created or joined: {breaches}")

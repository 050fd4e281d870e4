# attack: set up an io_uring (a large, fast-moving kernel interface behind many recent
#   privilege escalations; its requests also bypass seccomp's per-call filtering)
# expect: completed
# checks: io_uring_setup is refused (EPERM), so no ring exists to submit anything through.
#   Docker 20.10's default profile allows it: there the setup succeeds and the strategy raises
# control: the seccomp profile (io_uring_setup, io_uring_enter, io_uring_register removed)
# proof: ATTEMPTED io_uring_setup: failed with EPERM
# proof: ATTEMPTED io_uring_register: failed with EPERM
import ctypes
import errno
import os
import platform

import backtrader as bt

SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER = 425, 426, 427  # x86_64
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class IoUring(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
        breaches = []
        ring = LIBC.syscall(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_uint(8), params)
        if ring == -1:
            name = errno.errorcode[ctypes.get_errno()]
            print(f"ATTEMPTED io_uring_setup: failed with {name}", flush=True)
        else:
            print(f"ATTEMPTED io_uring_setup: SUCCEEDED (fd {ring})", flush=True)
            os.close(ring)
            breaches.append("io_uring_setup")
        for label, number in (("io_uring_enter", SYS_IO_URING_ENTER),
                              ("io_uring_register", SYS_IO_URING_REGISTER)):  # fmt: skip
            zero = ctypes.c_long(0)
            # On fd -1: EBADF where the call is allowed, EPERM where seccomp refuses it.
            if LIBC.syscall(ctypes.c_long(number), ctypes.c_long(-1), zero, zero, zero) == -1:
                name = errno.errorcode[ctypes.get_errno()]
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                if name != "EPERM":
                    breaches.append(f"{label} reached the kernel ({name})")
        if breaches:
            raise SandboxBreach(f"io_uring available: {breaches}")

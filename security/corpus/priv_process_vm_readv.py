# attack: read and write PID 1's memory directly with process_vm_readv/process_vm_writev (no
#   ptrace attach needed where they are allowed)
# expect: completed
# checks: both are refused (EPERM) for a target that is not the caller itself
# control: the seccomp profile (both removed)
# proof: ATTEMPTED process_vm_readv\(1\): failed with EPERM
# proof: ATTEMPTED process_vm_writev\(1\): failed with EPERM
import ctypes
import errno
import os
import platform

import backtrader as bt

SYS_PROCESS_VM_READV, SYS_PROCESS_VM_WRITEV = 310, 311  # x86_64
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def first_readable_address(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return int(maps.readline().split("-")[0], 16)
    except OSError:
        return 0x400000  # a typical text address: the call is refused before it matters


class ProcessVmReadv(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        address = first_readable_address(1)
        buffer = ctypes.create_string_buffer(16)
        local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
        remote = IoVec(ctypes.c_void_p(address), 16)
        breaches = []
        for name, number in (("process_vm_readv", SYS_PROCESS_VM_READV),
                             ("process_vm_writev", SYS_PROCESS_VM_WRITEV)):  # fmt: skip
            if number == SYS_PROCESS_VM_WRITEV:
                remote = IoVec(ctypes.c_void_p(0), 0)  # writes nothing even if allowed
            result = LIBC.syscall(ctypes.c_long(number), ctypes.c_long(1),
                                  ctypes.byref(local), ctypes.c_ulong(1),
                                  ctypes.byref(remote), ctypes.c_ulong(1),
                                  ctypes.c_ulong(0))  # fmt: skip
            if result == -1:
                code = errno.errorcode[ctypes.get_errno()]
                print(f"ATTEMPTED {name}(1): failed with {code}", flush=True)
                continue
            print(f"ATTEMPTED {name}(1): SUCCEEDED ({result} bytes)", flush=True)
            breaches.append(name)
        os.sched_yield()
        if breaches:
            raise SandboxBreach(f"cross-process memory access: {breaches}")

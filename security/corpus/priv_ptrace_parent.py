# attack: a forked child attaches to its parent (the harness, which holds the result file
#   open) and asks to be traced itself (PTRACE_TRACEME)
# expect: completed
# checks: ptrace of the parent and PTRACE_TRACEME are refused (EPERM); the child reports the
#   errno through its exit status
# control: the seccomp profile (ptrace removed)
# proof: ATTEMPTED ptrace\(PTRACE_ATTACH, parent\): failed with EPERM
# proof: ATTEMPTED ptrace\(PTRACE_TRACEME\): failed with EPERM
import ctypes
import errno
import os
import platform

import backtrader as bt

SYS_PTRACE = 101  # x86_64
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_DETACH = 0, 16, 17
WALL = 0x40000000  # __WALL: wait for a tracee that is not our child
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def ptrace(request: int, pid: int) -> int:
    result = LIBC.syscall(ctypes.c_long(SYS_PTRACE), ctypes.c_long(request), ctypes.c_long(pid),
                          ctypes.c_long(0), ctypes.c_long(0))  # fmt: skip
    if result == -1:
        return ctypes.get_errno()
    return 0


def in_child(request: int) -> int:
    """Fork; the child tries `request` (on its parent for ATTACH) and exits with the errno."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            target = os.getppid() if request == PTRACE_ATTACH else 0
            code = ptrace(request, target)
            if code == 0 and request == PTRACE_ATTACH:
                os.waitpid(target, WALL)  # consume the attach's SIGSTOP, or the parent stays
                ptrace(PTRACE_DETACH, target)  # stopped (and the run hangs to its timeout)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class PtraceParent(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        breaches = []
        for label, request in (("PTRACE_ATTACH, parent", PTRACE_ATTACH),
                               ("PTRACE_TRACEME", PTRACE_TRACEME)):  # fmt: skip
            code = in_child(request)
            if code == 0:
                print(f"ATTEMPTED ptrace({label}): SUCCEEDED", flush=True)
                breaches.append(label)
            else:
                name = errno.errorcode.get(code, str(code))
                print(f"ATTEMPTED ptrace({label}): failed with {name}", flush=True)
        if breaches:
            raise SandboxBreach(f"ptrace allowed: {breaches}")

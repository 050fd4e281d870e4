# attack: attach to PID 1 (docker-init, same uid) with ptrace, to inject code into the process
#   that reports the container's exit status, or to freeze it (the run then hangs)
# expect: completed
# checks: ptrace is refused (EPERM). Docker 20.10's default profile allows ptrace on kernels
#   >= 4.8, and there the attach succeeds and stops PID 1; the strategy detaches at once and
#   raises, so the verdict flips to runtime_error
# control: the seccomp profile (server/backtest_sandbox/sandbox/seccomp.json removes ptrace)
# proof: ATTEMPTED ptrace\(PTRACE_ATTACH, 1\): failed with EPERM
# proof: ATTEMPTED ptrace\(PTRACE_SEIZE, 1\): failed with EPERM
import ctypes
import errno
import os
import platform

import backtrader as bt

SYS_PTRACE = 101  # x86_64
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
WALL = 0x40000000  # __WALL: wait for a tracee that is not our child
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def ptrace(request: int, pid: int) -> int:
    result = LIBC.syscall(ctypes.c_long(SYS_PTRACE), ctypes.c_long(request), ctypes.c_long(pid),
                          ctypes.c_long(0), ctypes.c_long(0))  # fmt: skip
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


class PtracePid1(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        breaches = []
        for name, request in (("PTRACE_ATTACH", PTRACE_ATTACH), ("PTRACE_SEIZE", PTRACE_SEIZE)):
            try:
                ptrace(request, 1)
            except OSError as e:
                print(f"ATTEMPTED ptrace({name}, 1): failed with {errno.errorcode[e.errno]}",
                      flush=True)  # fmt: skip
                continue
            print(f"ATTEMPTED ptrace({name}, 1): ATTACHED", flush=True)
            if request == PTRACE_ATTACH:  # a seized tracee keeps running: nothing to undo
                os.waitpid(1, WALL)  # consume the attach's SIGSTOP, or PID 1 stays stopped
                ptrace(PTRACE_DETACH, 1)  # and let PID 1 run again before reporting
            breaches.append(name)
        if breaches:
            raise SandboxBreach(f"traced PID 1 with {breaches}")

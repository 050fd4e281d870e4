# attack: probe the rest of the kernel's privileged surface, one harmless call each: perf
#   events, userfaultfd (exploit timing), kexec, modules, file handles (the "shocker" escape),
#   the kernel log, accounting, quotas, pivot_root, chroot, personality (ASLR off), the LDT,
#   the clock, swap, reboot, hostname, port I/O, memfd_secret, vmsplice, and the socket
#   families a backtest never needs (AF_NETLINK, AF_ALG, AF_PACKET, AF_VSOCK)
# expect: completed
# checks: every call is refused with EPERM by the profile (never reaching the kernel code that
#   would have answered EINVAL or EBADF). Each argument is chosen to be harmless even if the
#   call were allowed (NULL times, Ctrl-Alt-Del off, I/O privilege level 0, ...)
# control: the seccomp profile (seccomp.json in the package; SECCOMP.md: the reason per call)
# proof: ATTEMPTED perf_event_open: failed with EPERM
# proof: ATTEMPTED open_by_handle_at: failed with EPERM
# proof: ATTEMPTED personality\(ADDR_NO_RANDOMIZE\): failed with EPERM
# proof: ATTEMPTED socket\(AF_ALG\): failed with EPERM
# proof: ATTEMPTED 29 calls, 0 allowed
import ctypes
import errno
import platform
import socket

import backtrader as bt

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
NULL, ZERO = None, ctypes.c_long(0)
PERF_ATTR = ctypes.create_string_buffer(128)  # zeroed struct perf_event_attr
HANDLE = ctypes.create_string_buffer(128)  # struct file_handle, zeroed
LDT = ctypes.create_string_buffer(16)
AT_FDCWD, ADDR_NO_RANDOMIZE, REBOOT_MAGIC1, REBOOT_MAGIC2, CAD_OFF = (
    -100,
    0x20000,
    0xFEE1DEAD,
    0x28121969,
    0,
)

# (name, x86_64 number, arguments)
CALLS = [
    ("perf_event_open", 298, (PERF_ATTR, ZERO, ctypes.c_long(-1), ctypes.c_long(-1), ZERO)),
    ("userfaultfd", 323, (ZERO,)),
    ("kexec_load", 246, (ZERO, ZERO, NULL, ZERO)),
    ("kexec_file_load", 320, (ctypes.c_long(-1), ctypes.c_long(-1), ZERO, NULL, ZERO)),
    ("init_module", 175, (NULL, ZERO, b"")),
    ("finit_module", 313, (ctypes.c_long(-1), b"", ZERO)),
    ("delete_module", 176, (b"no_such_module", ZERO)),
    ("open_by_handle_at", 304, (ctypes.c_long(AT_FDCWD), HANDLE, ZERO)),
    ("name_to_handle_at", 303, (ctypes.c_long(AT_FDCWD), b"/", HANDLE, NULL, ZERO)),
    ("syslog", 103, (ctypes.c_long(10), NULL, ZERO)),  # SYSLOG_ACTION_SIZE_BUFFER
    ("acct", 163, (NULL,)),
    ("quotactl", 179, (ctypes.c_long(0x800001), NULL, ZERO, NULL)),  # Q_SYNC
    ("pivot_root", 155, (b"/tmp", b"/tmp")),
    ("chroot", 161, (b"/tmp",)),
    ("personality(ADDR_NO_RANDOMIZE)", 135, (ctypes.c_long(ADDR_NO_RANDOMIZE),)),
    ("modify_ldt", 154, (ZERO, LDT, ctypes.c_long(16))),  # read the LDT
    ("clock_settime", 227, (ZERO, NULL)),
    ("settimeofday", 164, (NULL, NULL)),
    ("swapon", 167, (NULL, ZERO)),
    ("reboot(CAD_OFF)", 169, (ctypes.c_long(REBOOT_MAGIC1), ctypes.c_long(REBOOT_MAGIC2),
                               ctypes.c_long(CAD_OFF), NULL)),
    ("sethostname", 170, (b"sandbox", ctypes.c_long(7))),
    ("iopl", 172, (ZERO,)),
    ("ioperm", 173, (ZERO, ZERO, ZERO)),
    ("lookup_dcookie", 212, (ZERO, NULL, ZERO)),
    ("memfd_secret", 447, (ZERO,)),
    ("vmsplice", 278, (ctypes.c_long(-1), NULL, ZERO, ZERO)),
]  # fmt: skip
SOCKETS = [
    ("socket(AF_NETLINK)", socket.AF_NETLINK, socket.SOCK_RAW),
    ("socket(AF_ALG)", 38, socket.SOCK_SEQPACKET),
    ("socket(AF_PACKET, SOCK_DGRAM)", socket.AF_PACKET, socket.SOCK_DGRAM),
]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class KernelSurface(bt.Strategy):
    def start(self):
        if platform.machine() != "x86_64":
            raise RuntimeError("this probe uses x86_64 system call numbers")
        answers = {}
        for label, number, args in CALLS:
            result = LIBC.syscall(ctypes.c_long(number), *args)
            answers[label] = errno.errorcode[ctypes.get_errno()] if result == -1 else "ALLOWED"
            if label.startswith("personality") and result != -1:
                LIBC.syscall(ctypes.c_long(number), ctypes.c_long(result))  # restore
        for label, family, kind in SOCKETS:
            try:
                socket.socket(family, kind).close()
                answers[label] = "ALLOWED"
            except OSError as e:
                answers[label] = errno.errorcode.get(e.errno, str(e.errno))
        for label, answer in answers.items():
            outcome = "SUCCEEDED" if answer == "ALLOWED" else f"failed with {answer}"
            print(f"ATTEMPTED {label}: {outcome}", flush=True)
        wrong = {label: answer for label, answer in answers.items() if answer != "EPERM"}
        allowed = sum(answer == "ALLOWED" for answer in answers.values())
        print(f"ATTEMPTED {len(answers)} calls, {allowed} allowed", flush=True)
        if wrong:
            raise SandboxBreach(f"reached the kernel (not EPERM): {wrong}")

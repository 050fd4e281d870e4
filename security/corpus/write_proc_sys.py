# attack: the classic container escapes through /proc and /sys: core_pattern (a host command
#   run on the next crash), sysrq-trigger, the cgroup v1 release_agent (CVE-2022-0492),
#   uevent_helper, drop_caches, /dev/mem and the kernel log
# expect: completed
# checks: every one is refused (read-only /proc/sys and /sys, no capability, no device; under
#   gVisor these files do not exist at all: ENOENT). For
#   safety the probe only ever opens for writing or writes back the value it just read
# control: Docker's masked and read-only /proc and /sys paths; cap_drop ALL; the device cgroup
# proof: ATTEMPTED open /proc/sys/kernel/core_pattern for writing: failed with E[A-Z]+
# proof: ATTEMPTED open /proc/sysrq-trigger for writing: failed with E[A-Z]+
# proof: ATTEMPTED rewrite core_pattern: failed with E[A-Z]+
import errno
import glob
import os

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def open_for_writing(path):
    os.close(os.open(path, os.O_WRONLY))


def rewrite_same(path):
    """Write back exactly what is there: harmless even if the write were allowed."""
    with open(path, "rb") as stream:
        current = stream.read()
    with open(path, "wb") as stream:
        stream.write(current)


TARGETS = [
    "/proc/sys/kernel/core_pattern",
    "/proc/sysrq-trigger",
    "/proc/sys/vm/drop_caches",
    "/sys/kernel/uevent_helper",
    "/proc/sys/kernel/modprobe",
    *glob.glob("/sys/fs/cgroup/*/release_agent"),
    *glob.glob("/sys/fs/cgroup/*/notify_on_release"),
]
DEVICES = ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda"]


class ProcSys(bt.Strategy):
    def start(self):
        breaches = []
        attempts = [(f"open {path} for writing", path, open_for_writing) for path in TARGETS]
        attempts.append(("rewrite core_pattern", "/proc/sys/kernel/core_pattern", rewrite_same))
        attempts += [(f"open {dev}", dev, lambda p: os.close(os.open(p, os.O_RDONLY)))
                     for dev in DEVICES]  # fmt: skip
        for label, path, action in attempts:
            try:
                action(path)
            except OSError as e:
                name = errno.errorcode.get(e.errno, type(e).__name__)
                print(f"ATTEMPTED {label}: failed with {name}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        if breaches:
            raise SandboxBreach(f"escape paths open: {breaches}")

# attack: become root: setuid(0) and friends, extra groups, and exec of a setuid-root binary
#   (su) to see whether it runs with euid 0
# expect: completed
# checks: every id change is refused (EPERM), and su runs with the caller's uid: with
#   no_new_privs the setuid bit grants nothing (its /proc status is read while it waits)
# control: the non-root uid with cap_drop ALL; no-new-privileges
# proof: ATTEMPTED setuid\(0\): failed with EPERM
# proof: ATTEMPTED setgroups\(\[0\]\): failed with EPERM
# proof: ATTEMPTED exec setuid su: euid 10001
import errno
import os
import subprocess
import time

import backtrader as bt

ATTEMPTS = [
    ("setuid(0)", lambda: os.setuid(0)),
    ("seteuid(0)", lambda: os.seteuid(0)),
    ("setresuid(0, 0, 0)", lambda: os.setresuid(0, 0, 0)),
    ("setgid(0)", lambda: os.setgid(0)),
    ("setgroups([0])", lambda: os.setgroups([0])),
]


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def euid_of_setuid_su() -> str:
    """Start su (setuid root), read its effective uid once it has exec'd, then let it fail."""
    su = subprocess.Popen(["/usr/bin/su", "-c", "id", "root"], stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    euid = "unknown"
    try:
        for _ in range(2000):
            try:
                with open(f"/proc/{su.pid}/status") as stream:
                    fields = dict(line.split(":", 1) for line in stream if ":" in line)
            except OSError:
                break
            if fields["Name"].strip() == "su":
                euid = fields["Uid"].split()[1]
                break
            time.sleep(0.001)
    finally:
        su.stdin.close()
        su.wait(timeout=30)
    return euid


class SetuidRoot(bt.Strategy):
    def start(self):
        breaches = []
        for label, action in ATTEMPTS:
            try:
                action()
            except OSError as e:
                print(f"ATTEMPTED {label}: failed with {errno.errorcode[e.errno]}", flush=True)
                continue
            print(f"ATTEMPTED {label}: SUCCEEDED", flush=True)
            breaches.append(label)
        euid = euid_of_setuid_su()
        print(f"ATTEMPTED exec setuid su: euid {euid}", flush=True)
        if euid == "0":
            breaches.append("setuid su ran as root")
        if breaches:
            raise SandboxBreach(f"privileges gained: {breaches}")

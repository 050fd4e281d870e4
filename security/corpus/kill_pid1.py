# attack: kill PID 1 (docker-init) with SIGKILL and freeze it with SIGSTOP, to end the
#   container in a way the host cannot explain, or to hang the run
# expect: completed
# expect-runsc: crashed
# exit-code: 137
# why: Linux drops SIGKILL and SIGSTOP sent to a PID namespace's init from inside it, so under
#   runc PID 1 survives and the run completes. gVisor's kernel delivers the SIGKILL: its init
#   dies, the sandbox ends with 137, and the host says crashed (OOMKilled is false), never
#   memory_limit: a run that kills its own init only ends itself
# checks: PID 1 is still alive and running afterwards (runc), or the run ends crashed (runsc);
#   either way nothing outside the container is affected and the verdict is the host's
# control: the container's PID namespace (its init cannot be killed from inside); docker-init
# proof: ATTEMPTED kill\(1, SIGKILL\)
# proof-runc: ATTEMPTED kill\(1, SIGKILL\)
# proof-runc: PID 1 afterwards: state [RS]
import os
import signal
import time

import backtrader as bt


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def state_of_pid1() -> str:
    with open("/proc/1/stat") as stream:
        return stream.read().rpartition(")")[2].split()[0]


class KillPid1(bt.Strategy):
    def start(self):
        for name in ("SIGKILL", "SIGSTOP"):
            # Printed first: under gVisor the kill ends the run before anything else is said.
            print(f"ATTEMPTED kill(1, {name})", flush=True)
            os.kill(1, getattr(signal, name))
        time.sleep(0.5)
        state = state_of_pid1()
        print(f"PID 1 afterwards: state {state}", flush=True)
        if state not in ("R", "S"):
            raise SandboxBreach(f"PID 1 is in state {state}")

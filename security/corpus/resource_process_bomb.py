# attack: spawn long-lived external processes (fork + exec of /bin/sleep) without end
# expect: runtime_error
# expect-runsc: crashed
# exit-code-runsc: 2
# why: as resource_fork_bomb: under gVisor's ptrace platform the refused host stub process
#   aborts the whole sandbox (exit 2), so the bomb ends as crashed, contained
# checks: process creation is refused once the pids cgroup is full; no sleep survives the run
# control: pids limit (the container's pids cgroup)
# config: {"timeout_seconds": 20}
# proof: ATTEMPTED process bomb
# proof-runc: ATTEMPTED process bomb
# proof-runc: spawn refused after \d+ processes
# raises: BlockingIOError
import subprocess

import backtrader as bt

TARGET = 10_000


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class ProcessBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED process bomb", flush=True)
        children = []
        for spawned in range(TARGET):
            try:
                children.append(subprocess.Popen(["/bin/sleep", "600"]))
            except BlockingIOError:
                print(f"spawn refused after {spawned} processes", flush=True)
                raise
        raise SandboxBreach(f"spawned {TARGET} processes: nothing limits processes")

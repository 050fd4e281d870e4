# attack: a classic fork bomb: every process forks again, forever
# expect: runtime_error
# expect-runsc: crashed
# exit-code-runsc: 2
# why: under gVisor's ptrace platform every guest process needs a host stub process in the
#   container's pids cgroup; when the cgroup refuses one, the sentry aborts the whole sandbox
#   (exit 2) instead of failing the guest's fork with EAGAIN: crashed, bomb contained
# checks: fork() is refused (EAGAIN) once the pids cgroup is full, the parent reports it, and
#   no process of the bomb survives the run
# control: pids limit (the container's pids cgroup)
# config: {"timeout_seconds": 20, "memory_mb": 1024}
# proof: ATTEMPTED fork bomb
# proof-runc: ATTEMPTED fork bomb
# proof-runc: fork refused after \d+ forks
# raises: RuntimeError
import gc
import os
import time

import backtrader as bt

TARGET = 10_000  # far above any sane pids limit: the kernel must stop this, not the loop


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


def breed_forever() -> None:
    """A child: fork again and again; never return into the harness (it would write a result)."""
    try:
        gc.disable()  # no collections: they would copy every page of the parent
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    finally:
        os._exit(0)


class ForkBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED fork bomb", flush=True)
        gc.freeze()  # keep the children's copy-on-write pages shared
        for forks in range(TARGET):
            try:
                pid = os.fork()
            except BlockingIOError:
                print(f"fork refused after {forks} forks", flush=True)
                raise RuntimeError(f"fork refused after {forks} forks: pids limit held") from None
            if pid == 0:
                breed_forever()
        raise SandboxBreach(f"forked {TARGET} times: nothing limits processes")

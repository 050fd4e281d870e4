# attack: start threads until the process cannot start any more
# expect: runtime_error
# checks: threading refuses a new thread (the pids cgroup counts threads) and the strategy's
#   RuntimeError is the verdict; the run still ends cleanly with every thread gone
# control: pids limit (the container's pids cgroup)
# proof: ATTEMPTED thread bomb
# proof: thread refused after \d+ threads
# raises: RuntimeError
import threading

import backtrader as bt

TARGET = 100_000


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class ThreadBomb(bt.Strategy):
    def start(self):
        print("ATTEMPTED thread bomb", flush=True)
        forever = threading.Event()
        for started in range(TARGET):
            try:
                threading.Thread(target=forever.wait, daemon=True).start()
            except RuntimeError as e:  # "can't start new thread"
                print(f"thread refused after {started} threads: {e}", flush=True)
                raise
        raise SandboxBreach(f"started {TARGET} threads: nothing limits threads")

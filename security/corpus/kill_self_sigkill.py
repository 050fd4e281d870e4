# attack: SIGKILL itself: exit status 137 exactly as an OOM kill leaves it, without using
#   any memory
# expect: crashed
# exit-code: 137
# checks: memory_limit needs Docker's OOMKilled flag; a self-inflicted SIGKILL is crashed
# control: the supervisor's verdict order (OOMKilled read from the container state)
# proof: ATTEMPTED SIGKILL myself
import os
import signal

import backtrader as bt


class KillSelf(bt.Strategy):
    def start(self):
        print("ATTEMPTED SIGKILL myself", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

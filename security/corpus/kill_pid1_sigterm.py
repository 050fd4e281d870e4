# attack: send SIGTERM to PID 1, which forwards it to the harness: the run dies exactly as a
#   host timeout would kill it, hoping to be reported as a timeout (the platform's fault)
# expect: crashed
# exit-code: 143
# checks: a run that is killed before the host's deadline is crashed (exit 143, SIGTERM named),
#   never timeout: the host knows it sent no signal
# control: the supervisor's verdict order (timeout only from the host's clock)
# proof: ATTEMPTED kill\(1, SIGTERM\)
import os
import signal
import time

import backtrader as bt


class KillPid1Sigterm(bt.Strategy):
    def start(self):
        print("ATTEMPTED kill(1, SIGTERM)", flush=True)
        os.kill(1, signal.SIGTERM)
        time.sleep(10)  # docker-init forwards the signal to us; this never ends normally

# attack: stop answering in the middle of the run (sleep while holding bar 5)
# expect: timeout
# checks: the host's clock ends the run and kills the container; the referee is stopped too
# control: the supervisor's deadline and the gate's per-bar bound (verify/gate.py)
# proof: ATTEMPTED silence
# config: {"timeout_seconds": 5}
import time

import backtrader as bt


class Silent(bt.Strategy):
    def next(self):
        if len(self) == 5:
            print("ATTEMPTED silence", flush=True)
            time.sleep(3600)

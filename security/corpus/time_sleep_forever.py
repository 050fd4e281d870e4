# attack: sleep forever, holding a worker slot without using any CPU
# expect: timeout
# checks: an idle run is ended by the host's clock just like a busy one
# control: the supervisor's wall-clock deadline (not a CPU-time limit)
# config: {"timeout_seconds": 6}
# proof: ATTEMPTED sleep forever
import time

import backtrader as bt


class SleepForever(bt.Strategy):
    def start(self):
        print("ATTEMPTED sleep forever", flush=True)
        time.sleep(10**6)

# attack: exit 0 before the harness writes any result, hoping an empty result with a clean
#   exit passes for success
# expect: crashed
# exit-code: 0
# checks: a clean exit without a result is a crash, not a completed run with empty metrics
# control: the supervisor (an empty result file is crashed)
# proof: ATTEMPTED exit 0 without a result
import os

import backtrader as bt


class ExitZero(bt.Strategy):
    def start(self):
        print("ATTEMPTED exit 0 without a result", flush=True)
        os._exit(0)

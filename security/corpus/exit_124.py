# attack: exit with status 124, the status timeout(1) uses, to have the run reported as a
#   platform timeout
# expect: crashed
# exit-code: 124
# checks: timeout comes only from the host's own clock, never from an exit status
# control: the supervisor's verdict order (timeout from the host's clock)
# proof: ATTEMPTED fake a timeout
import os

import backtrader as bt


class Exit124(bt.Strategy):
    def start(self):
        print("ATTEMPTED fake a timeout with exit status 124", flush=True)
        os._exit(124)

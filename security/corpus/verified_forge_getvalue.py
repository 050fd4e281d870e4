# attack: patch BackBroker.getvalue to report 10,000,000 while trading an ordinary SMA cross,
#   so that the equity curve and every metric computed from it show a fortune
# expect: completed
# forged-final-value: 10000000.0
# integrity: {"mode": "verified", "verified": true, "claim_matches": false}
# checks: the published numbers are the referee's, computed by a process that ran no user
#   code, and the result says that the strategy's own claim did not match
# control: verified mode's referee (verify/referee.py) and the claim comparison (jobs/engine.py)
# proof: ATTEMPTED getvalue patch
import backtrader as bt


class ForgedValue(bt.Strategy):
    def __init__(self):
        self.sma = bt.indicators.SMA(self.data.close, period=10)
        bt.brokers.BackBroker.getvalue = lambda self, datas=None, mkt=False, lever=False: 1e7
        print("ATTEMPTED getvalue patch", flush=True)

    def next(self):
        if not self.position and self.data.close[0] > self.sma[0]:
            self.buy(size=10)
        elif self.position and self.data.close[0] < self.sma[0]:
            self.close()

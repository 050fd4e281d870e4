# attack: trade honestly, then in stop() rewrite what the result is read from: every analyzer's
#   recorded values and trades, and the broker's own value
# expect: completed
# forged-final-value: 1235108.0
# integrity: {"verified": true, "claim_matches": false}
# checks: the referee's numbers are published; the rewritten analyzers change only the claim
# control: verified mode's referee (verify/referee.py)
# proof: ATTEMPTED analyzer rewrite of \d+ analyzers
import backtrader as bt


class RewriteAnalyzers(bt.Strategy):
    def __init__(self):
        self.sma = bt.indicators.SMA(self.data.close, period=10)

    def next(self):
        if not self.position and self.data.close[0] > self.sma[0]:
            self.buy(size=10)
        elif self.position and self.data.close[0] < self.sma[0]:
            self.close()

    def stop(self):
        rewritten = 0
        for analyzer in self.analyzers:
            if hasattr(analyzer, "values"):
                analyzer.values[:] = [1235108.0] * len(analyzer.values)
                analyzer.trades[:] = []
                rewritten += 1
        self.broker._value = 1235108.0
        print(f"ATTEMPTED analyzer rewrite of {rewritten} analyzers", flush=True)

"""Strategy sources shared by the end-to-end tests."""

from __future__ import annotations

SMA_CROSS = """
import backtrader as bt

class SmaCross(bt.Strategy):
    params = (("fast", 5), ("slow", 20))

    def __init__(self):
        fast, slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)

    def next(self):
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()
"""

# A pairs trade on two feeds, found by name: short the rich leg and buy the cheap one when the
# ratio of their closes strays from its moving average, both legs flat when it comes back.
PAIRS = """
import backtrader as bt


class Pairs(bt.Strategy):
    params = (("a", "ORCL"), ("b", "NVDA"), ("period", 20), ("entry", 1.5), ("exit", 0.25),
              ("units", 100))

    def __init__(self):
        self.a = self.getdatabyname(self.p.a)
        self.b = self.getdatabyname(self.p.b)
        ratio = self.a.close / self.b.close
        mean = bt.ind.SMA(ratio, period=self.p.period)
        self.zscore = (ratio - mean) / bt.ind.StdDev(ratio, period=self.p.period)

    def next(self):
        z = self.zscore[0]
        if not self.getposition(self.a).size:
            hedge = max(1, round(self.p.units * self.a.close[0] / self.b.close[0]))
            if z > self.p.entry:  # a is rich against b
                self.sell(data=self.a, size=self.p.units)
                self.buy(data=self.b, size=hedge)
            elif z < -self.p.entry:
                self.buy(data=self.a, size=self.p.units)
                self.sell(data=self.b, size=hedge)
        elif abs(z) < self.p.exit:
            self.close(data=self.a)
            self.close(data=self.b)
"""


def strategy_with(body: str, imports: str = "") -> str:
    """A strategy whose `next` runs `body` on every bar (so from the first one on)."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    header = f"import backtrader as bt\n{imports}\n\n"
    return header + f"class S(bt.Strategy):\n    def next(self):\n{indented}\n"

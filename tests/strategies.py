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


def strategy_with(body: str, imports: str = "") -> str:
    """A strategy whose `next` runs `body` on every bar (so from the first one on)."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    header = f"import backtrader as bt\n{imports}\n\n"
    return header + f"class S(bt.Strategy):\n    def next(self):\n{indented}\n"

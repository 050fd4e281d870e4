"""The bare baseline: the reference strategy run directly on the host, no sandbox.

`python bench/bare_strategy.py DATA.csv` imports backtrader cold, loads the same normalised bars
the sandbox gets, runs the same SMA crossover with the same broker settings, and prints the
final value (so the benchmark can check both sides computed the same thing).
"""

import collections
import collections.abc
import sys

# The same one shim the runner applies: backtrader 1.9.78.123 still uses collections.Iterable.
for _name in ("Iterable", "Mapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

import backtrader as bt  # noqa: E402
import pandas as pd  # noqa: E402


class SmaCross(bt.Strategy):
    params = (("fast", 10), ("slow", 30))

    def __init__(self):
        fast = bt.indicators.SMA(self.data.close, period=self.p.fast)
        slow = bt.indicators.SMA(self.data.close, period=self.p.slow)
        self.crossover = bt.indicators.CrossOver(fast, slow)

    def next(self):
        if not self.position and self.crossover > 0:
            self.buy()
        elif self.position and self.crossover < 0:
            self.close()


def main(path: str, cash: float, commission: float, stake: float) -> None:
    frame = pd.read_csv(path, index_col="datetime", parse_dates=True)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None))
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(commission=commission)
    cerebro.addsizer(bt.sizers.FixedSize, stake=stake)
    cerebro.run()
    print(cerebro.broker.getvalue())


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))

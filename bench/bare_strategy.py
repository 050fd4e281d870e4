"""The bare baseline: the reference strategy run directly on the host, no sandbox.

`python bench/bare_strategy.py DATA.csv CASH COMMISSION STAKE` imports backtrader cold, loads
the same normalised bars the sandbox gets, runs examples/sma_cross.py with the same broker
settings, and prints the final value (so the bench can check both sides computed the same).
"""

import collections
import collections.abc
import sys
from pathlib import Path

# The same one shim the runner applies: backtrader 1.9.78.123 still uses collections.Iterable.
for _name in ("Iterable", "Mapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

import backtrader as bt  # noqa: E402
import pandas as pd  # noqa: E402

# The very strategy the sandbox runs in the bench, imported from its file rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from sma_cross import SmaCross  # noqa: E402


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

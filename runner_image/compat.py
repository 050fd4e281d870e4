"""Compatibility shims that let backtrader 1.9.78.123 run on Python 3.11, pandas 3 and numpy 2.

Applied by the harness before backtrader is imported. Each shim restores exactly what a code
path we support needs, says why, and is proven by a test in tests/unit/test_compat.py.

Checked and found to need no shim (tests/unit/test_compat.py and test_harness.py run them
with warnings as errors): the PandasData feed on pandas 3 (`to_pydatetime`, `iloc`), the
indicators SMA, EMA, RSI, BollingerBands, MACD, Stochastic, ATR and CrossOver in both runonce
and next modes, and the analyzers SharpeRatio, DrawDown, TradeAnalyzer, SQN, Returns,
TimeReturn, AnnualReturn and VWR. backtrader uses no removed numpy alias (`np.float`,
`np.int`, ...), and its cerebro.py and writer.py already pick `collections.abc` themselves.
"""

from __future__ import annotations

import collections
import collections.abc


def apply() -> None:
    """Install every shim. Idempotent, and never overwrites an attribute that exists."""
    _restore_collections_abc_aliases()


def _restore_collections_abc_aliases() -> None:
    # Python 3.10 removed the ABC aliases from `collections`, but backtrader's
    # LineIterator.bindlines (also bind2lines/bind2line, the documented way to bind an
    # indicator's line to its owner's) still checks `isinstance(x, collections.Iterable)`
    # and raises AttributeError. Restoring all of them, not only Iterable, also keeps
    # strategies written against older backtrader examples (`collections.Mapping`) running.
    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))

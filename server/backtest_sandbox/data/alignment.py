"""Several feeds on one calendar, and a benchmark on the run's bars (interface section 8).

Extra symbols (`config.extra_symbols`): the run's feeds are cut to the timestamps they all
have. A bar that any feed lacks is dropped from every feed, so each step of the run holds one
bar of every feed, all with the same timestamp. Why the intersection and not a fill: with one
calendar, Backtrader's next mode (a verified run, one step at a time) and its preload/runonce
mode (a fast run) deliver the same bars in the same order, so both modes give the same
numbers; the trusted side of a verified run releases one whole step at a time and never has to
decide which feed's bar comes first; and no price is ever invented.

Benchmark (`config.benchmark`): compared, never traded, so it follows the run's calendar: at
each of the run's bars it is its last close at or before that bar's timestamp (a forward
fill). Its bars are those of the run's range and the last one before the range, so a run
that starts on a day the benchmark has no bar (a holiday of its exchange) takes the close
before it. A benchmark with no bar at or before the run's first bar (its file starts later)
cannot be valued there and is a data_error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from backtest_sandbox.domain.errors import DataError

EXTRA_SYMBOLS_FIELD = "config.extra_symbols"
BENCHMARK_FIELD = "config.benchmark"


def intersect(frames: Sequence[pd.DataFrame]) -> tuple[list[pd.DataFrame], list[int]]:
    """Each frame cut to the timestamps all of them have: (the frames, bars each lost).

    A frame that loses nothing is returned as it is (the same object).
    """
    common = pd.DatetimeIndex(frames[0].index)
    for frame in frames[1:]:
        common = common.intersection(pd.DatetimeIndex(frame.index))
    lost = [len(frame) - len(common) for frame in frames]
    aligned = [
        frame if dropped == 0 else frame.loc[common].copy()
        for frame, dropped in zip(frames, lost, strict=True)
    ]
    return aligned, lost


def lost_bars_warning(symbols: Sequence[str], lost: Sequence[int], bars: int) -> str:
    """The warning of an alignment that dropped bars, naming each symbol that lost some."""
    losses = ", ".join(
        f"{symbol} lost {count}" for symbol, count in zip(symbols, lost, strict=True) if count
    )
    return (
        f"extra_symbols: the feeds are aligned on the timestamps they all have ({bars} bars); "
        f"bars missing from any feed were dropped from all: {losses}"
    )


def as_of(run_index: pd.DatetimeIndex, closes: pd.Series, symbol: str) -> tuple[list[float], int]:
    """The benchmark's last close at or before each of the run's bars: (the closes, how many
    of them were carried forward from an earlier bar).

    Raises:
        DataError: the benchmark has no bar at or before the run's first bar.
    """
    index = pd.DatetimeIndex(closes.index)
    positions = index.searchsorted(run_index, side="right") - 1
    if len(positions) and positions[0] < 0:
        first = run_index[0].strftime("%Y-%m-%dT%H:%M:%S")
        own = index[0].strftime("%Y-%m-%dT%H:%M:%S") if len(index) else "none"
        raise DataError(
            f"{BENCHMARK_FIELD}: {symbol} has no bar at or before the run's first bar {first} "
            f"(its first bar is {own}), so it cannot be valued there",
            field=BENCHMARK_FIELD,
            symbol=symbol,
            rule="benchmark_covers_first_bar",
        )
    values = closes.to_numpy(dtype="float64")[positions]
    carried = int(np.count_nonzero(index[positions] != run_index))
    return values.tolist(), carried


def carried_warning(symbol: str, carried: int, bars: int) -> str:
    return (
        f"benchmark: {symbol} has no bar at {carried} of the run's {bars} bars; its last close "
        "before each of them is used there"
    )

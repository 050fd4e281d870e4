"""Deterministic synthetic bars: a seeded geometric random walk on the timeframe's grid.

Used when a run asks for `data_source="synthetic"`, or for `"auto"` when the catalog has no
file. The bars are labelled as synthetic everywhere (`source="synthetic"` and a warning):
they are a random walk, not market prices.

How the bars are made:

- Randomness is counter-based: every random number is SplitMix64 of a 64-bit seed plus a
  counter that names what it is for (stream, day, slot in the day), turned into a normal
  with Box-Muller. So the bar at a given timestamp is the same whatever range is asked for,
  and the same inputs always give identical bytes. Seeds come from SHA-256 (Python's `hash()`
  is salted per process and would change every run).
- The daily level is one random walk per symbol (seeded by the symbol alone): log price
  steps of N(0, 25 % / sqrt(365)) per calendar day, pinned to a per-symbol level between
  20 and 500 on 2000-01-01, walking forwards and backwards from there. All timeframes of a
  symbol share it, so a synthetic D1 close equals the close of that day's intraday session.
- Everything else (intraday paths, wicks, volume) is seeded by symbol and timeframe.
- Intraday: weekdays only, an exchange session of 09:30 to 16:00. The bars are the slots of
  the timeframe's grid (multiples of its length from midnight, as the catalog's resampling
  labels them) that overlap the session, e.g. H1 09:00 .. 15:00. Inside a day the path is a
  Brownian bridge from the day's level to the next day's, so intraday bars join up with D1.
- D1: weekdays at 00:00. W1: Mondays (the week's start). MN1: the first of the month. A bar
  opens at the level of its first day and closes at the level of the day after its period.
- Log prices are reflected into [ln 1, ln 10000] so that no walk drifts to zero or to
  absurd levels; prices are rounded to 4 decimals, volumes to whole units; then
  high = max(open, close, high) and low = min(open, close, low) hold exactly.
"""

from __future__ import annotations

import hashlib
import math
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd

from backtest_sandbox.domain.errors import DataError
from backtest_sandbox.domain.timeframes import Timeframe

FIRST_DAY = date(1900, 1, 1)  # synthetic bars exist from here ...
LAST_DAY = date(2199, 12, 31)  # ... to here: well inside pandas' nanosecond range
ORIGIN = date(2000, 1, 1)  # the day the walk is pinned to its per-symbol base level
ANNUAL_VOLATILITY = 0.25
DAILY_SIGMA = ANNUAL_VOLATILITY / math.sqrt(365.0)
SESSION_OPEN_MINUTE = 9 * 60 + 30
SESSION_CLOSE_MINUTE = 16 * 60
LOG_FLOOR, LOG_CEILING = math.log(1.0), math.log(10_000.0)
WICK_SCALE = 0.5  # wicks are a half-sigma of the bar's own move, on average
PRICE_DECIMALS = 4
MAX_BARS = 2_000_000  # ~100 MB of CSV; a longer synthetic range is refused, not truncated

# Streams keep the counters of different uses apart.
_LEVEL, _BASE, _PATH, _HIGH, _LOW, _VOLUME = range(6)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

FloatArray = npt.NDArray[np.float64]
UIntArray = npt.NDArray[np.uint64]


def seed_for(*parts: str) -> int:
    """A stable 64-bit seed from text (SHA-256; independent of process and platform)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _counters(stream: int, days: npt.ArrayLike, slots: npt.ArrayLike = 0) -> UIntArray:
    """Counter = stream | day since FIRST_DAY | slot in the day; each part has its own bits."""
    day = np.asarray(days, dtype=np.uint64)
    slot = np.asarray(slots, dtype=np.uint64)
    return ((np.uint64(stream) << np.uint64(40)) | (day << np.uint64(12)) | slot).astype(np.uint64)


def _uniform(seed: int, counters: UIntArray) -> FloatArray:
    """SplitMix64 at positions `counters`, as doubles in (0, 1)."""
    # Array arithmetic on uint64 wraps modulo 2**64, which is what SplitMix64 wants.
    z = np.full(counters.shape, seed, dtype=np.uint64) + (counters + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    top53: FloatArray = (z >> np.uint64(11)).astype(np.float64)
    return (top53 + 0.5) * 2.0**-53


def _normal(seed: int, counters: UIntArray) -> FloatArray:
    """Standard normals (Box-Muller), one per counter."""
    doubled = counters << np.uint64(1)
    u1 = _uniform(seed, doubled)
    u2 = _uniform(seed, doubled | np.uint64(1))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _reflect(log_price: FloatArray) -> FloatArray:
    """Fold values into [LOG_FLOOR, LOG_CEILING] like a ball between two walls."""
    width = LOG_CEILING - LOG_FLOOR
    folded = np.mod(log_price - LOG_FLOOR, 2.0 * width)
    return LOG_FLOOR + width - np.abs(folded - width)


def _day_index(day: date) -> int:
    return (day - FIRST_DAY).days


def _daily_levels(symbol: str, first: int, last: int) -> FloatArray:
    """Log level at the start of each day index first..last (inclusive), unreflected."""
    seed = seed_for("level", symbol)
    origin = _day_index(ORIGIN)
    lo, hi = min(first, origin), max(last, origin)
    days = np.arange(lo, hi + 1)
    steps = _normal(seed, _counters(_LEVEL, days)) * DAILY_SIGMA
    steps[0] = 0.0  # the walk's value at `lo` is its own reference point
    walk = np.cumsum(steps)
    base = math.log(20.0) + math.log(25.0) * float(_uniform(seed, _counters(_BASE, [0]))[0])
    levels = base + walk - walk[origin - lo]
    result: FloatArray = levels[first - lo : last - lo + 1]
    return result


def session_slots(timeframe: Timeframe) -> list[int]:
    """Intraday bar starts (minutes after midnight) whose slot overlaps the session."""
    step = timeframe.minutes
    return [
        start
        for start in range(0, 24 * 60, step)
        if start + step > SESSION_OPEN_MINUTE and start < SESSION_CLOSE_MINUTE
    ]


def _period_starts(timeframe: Timeframe, start: date, end: date) -> pd.DatetimeIndex:
    """Days on which a bar starts, inside [start, end]: weekdays, Mondays or month starts."""
    days = pd.date_range(start, end, freq="D")
    if timeframe is Timeframe.W1:
        return days[days.day_of_week == 0]
    if timeframe is Timeframe.MN1:
        return days[days.day == 1]
    return days[days.day_of_week < 5]


def _period_ends(timeframe: Timeframe, starts: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """The day after each bar's period: its close is that day's opening level."""
    if timeframe is Timeframe.W1:
        return starts + pd.Timedelta(days=5)
    if timeframe is Timeframe.MN1:
        return starts + pd.offsets.MonthBegin(1)
    return starts + pd.Timedelta(days=1)


def _day_indices(days: pd.DatetimeIndex) -> npt.NDArray[np.int64]:
    first = pd.Timestamp(FIRST_DAY)
    return np.asarray((days - first).days, dtype=np.int64)


def _check_range(timeframe: Timeframe, start: date, end: date) -> int:
    """Bars the range will hold.

    Raises:
        DataError: the range lies outside the synthetic span or needs too many bars.
    """
    if start < FIRST_DAY or end > LAST_DAY:
        raise DataError(
            f"synthetic data covers {FIRST_DAY} to {LAST_DAY}; asked for {start} to {end}",
            rule="synthetic_span",
        )
    weekdays = int(np.busday_count(start, end + timedelta(days=1)))
    per_day = len(session_slots(timeframe)) if timeframe.minutes < 1440 else 1
    bars = weekdays * per_day
    if bars > MAX_BARS:
        raise DataError(
            f"{start} to {end} needs {bars:,} synthetic {timeframe.name} bars; at most "
            f"{MAX_BARS:,} are made: shorten the range or use a longer timeframe",
            rule="synthetic_size",
        )
    return bars


def _intraday_paths(
    symbol: str, timeframe: Timeframe, days: npt.NDArray[np.int64], levels: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(opens, closes) in log space, shape (days, slots): a bridge from level to next level."""
    slots = len(session_slots(timeframe))
    seed = seed_for("bars", symbol, timeframe.name)
    counters = _counters(_PATH, days[:, None], np.arange(slots)[None, :])
    steps = _normal(seed, counters) * (DAILY_SIGMA / math.sqrt(slots))
    walk = np.concatenate([np.zeros((len(days), 1)), np.cumsum(steps, axis=1)], axis=1)
    fraction = np.arange(slots + 1) / slots
    start, end = levels[:, 0:1], levels[:, 1:2]
    path = start + fraction * (end - start) + walk - fraction * walk[:, -1:]
    return path[:, :-1], path[:, 1:]


def _assemble(
    seed: int,
    index: pd.DatetimeIndex,
    counter_days: npt.ArrayLike,
    counter_slots: npt.ArrayLike,
    log_open: FloatArray,
    log_close: FloatArray,
    sigma: float,
    volume_scale: float,
) -> pd.DataFrame:
    """Bars from log open/close: reflected, wicked, rounded, with volume."""
    opens = np.round(np.exp(_reflect(log_open.ravel())), PRICE_DECIMALS)
    closes = np.round(np.exp(_reflect(log_close.ravel())), PRICE_DECIMALS)
    wick_up = np.abs(_normal(seed, _counters(_HIGH, counter_days, counter_slots).ravel()))
    wick_down = np.abs(_normal(seed, _counters(_LOW, counter_days, counter_slots).ravel()))
    noise = _normal(seed, _counters(_VOLUME, counter_days, counter_slots).ravel())
    top, bottom = np.maximum(opens, closes), np.minimum(opens, closes)
    highs = np.round(top * np.exp(wick_up * sigma * WICK_SCALE), PRICE_DECIMALS)
    lows = np.round(bottom * np.exp(-wick_down * sigma * WICK_SCALE), PRICE_DECIMALS)
    # Rounding may nudge a wick inside the body by a tick; the invariants must hold exactly.
    highs, lows = np.maximum(highs, top), np.minimum(lows, bottom)
    volumes = np.maximum(1.0, np.round(volume_scale * np.exp(0.4 * noise)))
    return pd.DataFrame(
        {"open": opens, "high": highs, "low": lows, "close": closes, "volume": volumes},
        index=index.rename("datetime"),
    )


def _intraday_bars(symbol: str, timeframe: Timeframe, start: date, end: date) -> pd.DataFrame:
    days = _period_starts(timeframe, start, end)
    day_idx = _day_indices(days)
    slots = session_slots(timeframe)
    if len(days) == 0:
        return _empty()
    all_levels = _daily_levels(symbol, int(day_idx[0]), int(day_idx[-1]) + 1)
    levels = np.stack([all_levels[day_idx - day_idx[0]], all_levels[day_idx - day_idx[0] + 1]], 1)
    log_open, log_close = _intraday_paths(symbol, timeframe, day_idx, levels)
    offsets = pd.to_timedelta(np.asarray(slots), unit="min")
    index = pd.DatetimeIndex((days.values[:, None] + offsets.values[None, :]).ravel())
    sigma = DAILY_SIGMA / math.sqrt(len(slots))
    volume_scale = 1_000_000.0 * min(timeframe.minutes, 390) / 390.0
    seed = seed_for("bars", symbol, timeframe.name)
    slot_grid = np.broadcast_to(np.arange(len(slots))[None, :], log_open.shape)
    return _assemble(
        seed, index, day_idx[:, None], slot_grid, log_open, log_close, sigma, volume_scale
    )


def _period_bars(symbol: str, timeframe: Timeframe, start: date, end: date) -> pd.DataFrame:
    starts = _period_starts(timeframe, start, end)
    if len(starts) == 0:
        return _empty()
    first_idx, end_idx = _day_indices(starts), _day_indices(_period_ends(timeframe, starts))
    levels = _daily_levels(symbol, int(first_idx[0]), int(end_idx[-1]))
    log_open = levels[first_idx - first_idx[0]]
    log_close = levels[end_idx - first_idx[0]]
    mean_days = float(np.mean(end_idx - first_idx))
    seed = seed_for("bars", symbol, timeframe.name)
    return _assemble(
        seed,
        starts,
        first_idx,
        0,
        log_open,
        log_close,
        DAILY_SIGMA * math.sqrt(mean_days),
        1_000_000.0 * {"D1": 1.0, "W1": 5.0, "MN1": 21.0}[timeframe.name],
    )


def _empty() -> pd.DataFrame:
    columns = ["open", "high", "low", "close", "volume"]
    return pd.DataFrame(
        {c: pd.Series(dtype="float64") for c in columns},
        index=pd.DatetimeIndex([], dtype="datetime64[ns]", name="datetime"),
    )


def synthetic_bars(symbol: str, timeframe: Timeframe, start: date, end: date) -> pd.DataFrame:
    """Synthetic bars with start <= bar date <= end, on the timeframe's grid.

    Returns a frame indexed by a `datetime` DatetimeIndex (ns), with float columns open,
    high, low, close, volume; empty when no bar starts in the range (e.g. a weekend).

    Raises:
        DataError: the range lies outside 1900-01-01 .. 2199-12-31, or would need more
            than MAX_BARS bars.
    """
    _check_range(timeframe, start, end)
    if timeframe.minutes < 1440:
        frame = _intraday_bars(symbol, timeframe, start, end)
    else:
        frame = _period_bars(symbol, timeframe, start, end)
    frame.index = frame.index.astype("datetime64[ns]")
    return frame

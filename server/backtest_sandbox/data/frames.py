"""What is done to bars once read: resampled, cut to a range, adjusted, written as CSV.

Pure functions of a frame (indexed by `datetime`, the bar's start; float columns), trusted
side only.

Resampling (`resample`): bars are open=first, high=max, low=min, close=last, volume=sum; a
bin is left-closed and labelled with its start: intraday bins are multiples of the timeframe
from midnight, D1 the calendar day, W1 the calendar week labelled on its Monday, MN1 the
calendar month labelled on its first day; bins with no bars are dropped (no filled gaps).
Which timeframe may be built from which is the catalog's rule (`catalog.can_resample`).

Cutting (`cut`): bars with start <= bar date <= end, the whole of `end` for intraday bars.

Adjusting (`yahoo_adjusted`): each bar by its adjusted close exactly as backtrader's
`YahooFinanceCSVData` does with its defaults; the catalog applies it, before any resampling,
when a run sets `config.adjust_prices`.

The normalised CSV (PROTOCOL.md): header `datetime,open,high,low,close,volume`, timestamps
`YYYY-MM-DDTHH:MM:SS`, floats as Python's `repr` (the shortest text that round-trips),
`\\n` line ends (`normalised_csv`); a catalog file (`catalog_csv`) has `adj_close` last
when the frame has it.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

from backtest_sandbox.domain.timeframes import Timeframe

from .bars_file import ADJ_CLOSE, COLUMNS, FloatArray

# backtrader's YahooFinanceCSVData defaults: prices rounded to `decimals` (2) after adjusting,
# volume to `roundvolume` (False, i.e. 0) decimals.
YAHOO_PRICE_DECIMALS, YAHOO_VOLUME_DECIMALS = 2, 0
INDEX_FIRST_DAY, INDEX_LAST_DAY = date(1678, 1, 1), date(2261, 12, 31)


def _bin_labels(index: pd.DatetimeIndex, timeframe: Timeframe) -> pd.DatetimeIndex:
    """Each bar's bin, labelled by the bin's start (left-closed)."""
    if timeframe is Timeframe.MN1:
        return index.normalize() - pd.to_timedelta(index.day - 1, unit="D")
    if timeframe is Timeframe.W1:
        return index.normalize() - pd.to_timedelta(index.day_of_week, unit="D")
    if timeframe is Timeframe.D1:
        return index.normalize()
    # floor() counts from the Unix epoch, a midnight; every MT5 intraday length divides a
    # day, so the bins start at midnight of every day.
    return index.floor(f"{timeframe.minutes}min")


def resample(frame: pd.DataFrame, timeframe: Timeframe) -> pd.DataFrame:
    """Bars of `timeframe` from finer bars: first/max/min/last/sum, empty bins dropped."""
    labels = _bin_labels(pd.DatetimeIndex(frame.index), timeframe).rename("datetime")
    out = frame.groupby(labels, sort=True).agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
    )
    out.index = pd.DatetimeIndex(out.index).as_unit("ns").rename("datetime")
    return out.astype("float64")


def clamp_day(day: date) -> date:
    """A config date may be any year; a nanosecond index holds 1677 to 2262 only."""
    return min(max(day, INDEX_FIRST_DAY), INDEX_LAST_DAY)


def cut(frame: pd.DataFrame, start: date, end: date, *, lead: int = 0) -> pd.DataFrame:
    """A copy of the bars with start <= bar date <= end (the whole of `end` for intraday),
    and the `lead` bars before start when there are."""
    index = pd.DatetimeIndex(frame.index)
    lo = max(0, index.searchsorted(pd.Timestamp(clamp_day(start)), side="left") - lead)
    hi = index.searchsorted(pd.Timestamp(clamp_day(end) + timedelta(days=1)), side="left")
    # A copy, so that a run's bars do not keep a whole (possibly huge) file alive.
    return frame.iloc[lo:hi].copy()


# --- the normalised CSV ----------------------------------------------------------------------


def normalised_csv(frame: pd.DataFrame) -> bytes:
    """The frame as PROTOCOL.md's data.csv; equal frames give equal bytes. Only its six
    columns: an `adj_close` of the frame is left out (it never reaches the sandbox)."""
    return _csv(frame, COLUMNS)


def catalog_csv(frame: pd.DataFrame) -> bytes:
    """What `import_file` writes: `normalised_csv`, with `adj_close` last when the frame has
    it (the file then reads back with it, for `config.adjust_prices`)."""
    return _csv(frame, (*COLUMNS, ADJ_CLOSE) if ADJ_CLOSE in frame else COLUMNS)


def _csv(frame: pd.DataFrame, names: tuple[str, ...]) -> bytes:
    stamps = pd.DatetimeIndex(frame.index).to_numpy().astype("datetime64[s]").astype(str)
    # repr() of a Python float is the shortest text that reads back as the same float.
    columns = [map(repr, frame[c].to_numpy(dtype="float64").tolist()) for c in names]
    header = ",".join(("datetime", *names))
    lines = [header, *map(",".join, zip(stamps.tolist(), *columns, strict=True))]
    return ("\n".join(lines) + "\n").encode("ascii")


# --- adjusted prices ---------------------------------------------------------------------


def _rounded(values: FloatArray, decimals: int) -> FloatArray:
    # Python's round (correctly rounded, half to even on the exact value), as backtrader
    # rounds; numpy's round scales by 10**decimals first and differs on some values.
    return np.array([round(x, decimals) for x in values.tolist()], dtype="float64")


def yahoo_adjusted(frame: pd.DataFrame) -> pd.DataFrame:
    """The bars adjusted by their `adj_close` exactly as backtrader's YahooFinanceCSVData
    `_loadline` does with its defaults (adjclose, adjvolume, round with decimals=2,
    roundvolume=False): factor = close / adj_close; open, high and low divided by it, close
    = adj_close, the four rounded to 2 decimals; volume multiplied by it, rounded to whole
    units. Same float operations in the same order, so the bars equal that feed's bit for bit.
    Returns the six normalised columns (no adj_close)."""
    v = {column: frame[column].to_numpy(dtype="float64") for column in (*COLUMNS, ADJ_CLOSE)}
    factor = v["close"] / v[ADJ_CLOSE]
    bars = {
        "open": _rounded(v["open"] / factor, YAHOO_PRICE_DECIMALS),
        "high": _rounded(v["high"] / factor, YAHOO_PRICE_DECIMALS),
        "low": _rounded(v["low"] / factor, YAHOO_PRICE_DECIMALS),
        "close": _rounded(v[ADJ_CLOSE], YAHOO_PRICE_DECIMALS),
        "volume": _rounded(v["volume"] * factor, YAHOO_VOLUME_DECIMALS),
    }
    return pd.DataFrame(bars, index=frame.index)

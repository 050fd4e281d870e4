"""The market data: data.csv (normalised by the host) into a Backtrader PandasData feed."""

from __future__ import annotations

import io
from typing import Any

import backtrader as bt
import pandas as pd
from backtrader.utils import date2num

COLUMNS = ("open", "high", "low", "close", "volume")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"

# MT5 timeframe name -> (Backtrader timeframe, compression), as PROTOCOL.md maps them.
_MINUTES = {f"M{n}": n for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)}
_MINUTES.update({f"H{n}": 60 * n for n in (1, 2, 3, 4, 6, 8, 12)})
TIMEFRAMES: dict[str, tuple[int, int]] = {
    **{name: (bt.TimeFrame.Minutes, minutes) for name, minutes in _MINUTES.items()},
    "D1": (bt.TimeFrame.Days, 1),
    "W1": (bt.TimeFrame.Weeks, 1),
    "MN1": (bt.TimeFrame.Months, 1),
}


def read_bars(path: str | io.StringIO) -> pd.DataFrame:
    """data.csv as a frame indexed by datetime, with float open/high/low/close/volume columns.

    Raises:
        OSError, ValueError: the file is missing or not in the host's normalised format (a
            host/harness disagreement: the harness lets it crash).
    """
    frame = pd.read_csv(
        path,
        index_col="datetime",
        dtype=dict.fromkeys(COLUMNS, "float64"),
        usecols=["datetime", *COLUMNS],
    )
    frame.index = pd.to_datetime(frame.index, format=TIMESTAMP_FORMAT)
    return frame


def warm_up() -> None:
    """Parse a one-bar CSV, so the first real read does not pay pandas' lazy set-up (~3 ms).

    Called before the harness waits for its job, where a warm-pool container has time to spare.
    """
    read_bars(io.StringIO(",".join(("datetime", *COLUMNS)) + "\n2000-01-03T00:00:00,1,1,1,1,0\n"))


def make_feed(frame: pd.DataFrame, timeframe: str) -> FastPandasData:
    """The feed for `frame`; openinterest is absent (-1: autodetected, not found).

    Raises:
        KeyError: `timeframe` is not an MT5 timeframe name.
    """
    bt_timeframe, compression = TIMEFRAMES[timeframe]
    feed = FastPandasData(dataname=frame, timeframe=bt_timeframe, compression=compression)
    feed.total_bars = len(frame)  # as on the verified feed, where buflen() cannot tell
    return feed


class FastPandasData(bt.feeds.PandasData):  # type: ignore[misc]  # backtrader is untyped
    """PandasData that loads each bar from plain lists instead of one `DataFrame.iloc` per cell.

    PandasData._load costs about 20 us a bar in `iloc` lookups, a quarter of a whole SMA-cross
    run. The values are the same: the columns are float64 either way, and the datetime goes
    through the same `to_pydatetime` and `date2num` as in PandasData.
    """

    def start(self) -> None:
        super().start()  # resolves self._colmapping to column positions, resets self._idx
        frame: Any = self.p.dataname
        self._rows = len(frame)
        self._columns = [
            (getattr(self.lines, field), frame.iloc[:, position].tolist())
            for field, position in self._colmapping.items()
            if field != "datetime" and position is not None
        ]
        self._datetimes = [date2num(stamp) for stamp in frame.index.to_pydatetime()]

    def _load(self) -> bool:
        self._idx += 1
        index = self._idx
        if index >= self._rows:
            return False
        for line, values in self._columns:
            line[0] = values[index]
        self.lines.datetime[0] = self._datetimes[index]
        return True

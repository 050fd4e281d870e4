"""What the harness records from inside a run: equity per bar, closed trades, progress."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import backtrader as bt
from backtrader.utils import num2date

PROGRESS_INTERVAL = 0.2  # seconds; PROTOCOL.md: "at most every 0.2 s"


def iso_timestamp(dtnum: float) -> str:
    """A Backtrader datetime number as `YYYY-MM-DDTHH:MM:SS` (date2num/num2date round-trip)."""
    stamp: datetime = num2date(dtnum)
    return stamp.isoformat(timespec="seconds")


class Progress:
    """Overwrites the progress file at offset 0 with "<done> <total>\\n", at most every 0.2 s.

    `done` never decreases, so a later line is never shorter than an earlier one and the file
    never needs truncating.
    """

    def __init__(self, fd: int, total: int) -> None:
        self._fd = fd
        self._total = total
        self._done = 0
        self._due = time.monotonic() + PROGRESS_INTERVAL

    def tick(self, done: int) -> None:
        """Note `done` bars; report them if the last report is old enough."""
        self._done = done
        now = time.monotonic()
        if now >= self._due:
            self._write()
            self._due = now + PROGRESS_INTERVAL

    def finish(self) -> None:
        """The report at the end, whatever the outcome."""
        self._write()

    def _write(self) -> None:
        os.pwrite(self._fd, f"{self._done} {self._total}\n".encode(), 0)


class Recorder(bt.Analyzer):  # type: ignore[misc]  # backtrader is untyped
    """Records broker value and position after every bar, and every trade as it closes.

    Analyzers are stepped after the strategy's own next/prenext and after the broker has
    executed that bar's orders, so `broker.getvalue()` here is the value after the bar.
    """

    params = (("progress", None),)

    def start(self) -> None:
        """Set up the records; called once before the first bar."""
        self.values: list[float] = []
        self.datetimes: list[float] = []
        self.bars_in_market = 0
        self.trades: list[dict[str, Any]] = []
        self._opening_sizes: dict[int, float] = {}  # open trade ref -> size it opened with
        # Bound once: these run on every bar.
        self._getvalue = self.strategy.broker.getvalue
        self._getposition = self.strategy.broker.getposition
        self._datetime = self.data.lines.datetime
        self._progress: Progress = self.p.progress

    def next(self) -> None:
        """Record one bar: value, datetime, whether a position is open; maybe report progress."""
        self.values.append(self._getvalue())
        self.datetimes.append(self._datetime[0])
        if self._getposition(self.data).size:
            self.bars_in_market += 1
        self._progress.tick(len(self.values))

    # Warm-up bars (before every indicator has its minimum period) are bars too: the equity
    # curve has one point per bar. (bt.Analyzer's defaults would route these to next() through
    # one more call; binding them directly saves it on every warm-up bar.)
    prenext = next
    nextstart = next

    def notify_trade(self, trade: Any) -> None:
        """Keep a record of each trade as it closes, in closing order."""
        if trade.justopened:
            self._opening_sizes[trade.ref] = trade.size
        elif trade.isclosed:
            opened = self._opening_sizes.pop(trade.ref, 0.0)
            mult = self.strategy.broker.getcommissioninfo(trade.data).p.mult
            self.trades.append(trade_record(trade, opened, mult))

    @property
    def open_trades(self) -> int:
        """Trades opened and not closed by the end of the run."""
        return len(self._opening_sizes)


def trade_record(trade: Any, opened_size: float, mult: float) -> dict[str, Any]:
    """The protocol's record of one closed trade."""
    size, exit_price = _size_and_exit_price(trade, opened_size, mult)
    return {
        "entry_time": iso_timestamp(trade.dtopen),
        "exit_time": iso_timestamp(trade.dtclose),
        "direction": "long" if trade.long else "short",
        "size": size,
        "entry_price": float(trade.price),
        "exit_price": exit_price,
        "pnl": float(trade.pnl),
        "pnl_net": float(trade.pnlcomm),
        "commission": float(trade.commission),
        "bars_held": int(trade.barlen),
    }


def _size_and_exit_price(trade: Any, opened_size: float, mult: float) -> tuple[float, float]:
    """(largest absolute size held, size-weighted average price of the fills that reduced it).

    A closed Trade keeps its average entry price but neither its size (now 0) nor its exit
    price; Cerebro(tradehistory=True) records every fill, which gives both.
    """
    sign = 1.0 if trade.long else -1.0
    if trade.history:
        size = max(abs(entry.status.size) for entry in trade.history)
        exits = [
            (abs(entry.event.size), entry.event.price)
            for entry in trade.history
            if entry.event.size * sign < 0
        ]
        closed = sum(fill_size for fill_size, _ in exits)
        return float(size), float(sum(fill * price for fill, price in exits) / closed)
    # The strategy switched history off again (set_tradehistory(False) in its start()). Fall
    # back to the size it opened with, and the exit price that explains the pnl: exact when
    # one fill opened it and one closed it.
    size = abs(opened_size)
    if not size:
        return 0.0, float(trade.price)
    return float(size), float(trade.price + trade.pnl / (sign * size * mult))

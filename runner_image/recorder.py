"""What the harness records from inside a run: equity per bar, closed trades, every order's
life, the positions open at the end, progress."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from typing import Any

import backtrader as bt
from backtrader.utils import num2date

PROGRESS_INTERVAL = 0.2  # seconds; PROTOCOL.md: "at most every 0.2 s"
# The order log's bounds (PROTOCOL.md "orders"). An order is ~210 bytes (three events), so
# the log stays near 4 MB, an eighth of the host's default result cap, however many orders a
# run places; orders past MAX_ORDERS are counted in `orders_total`, not recorded.
MAX_ORDERS = 20_000
# Events kept per order: a partly filled order can be notified on every bar; past this, a
# Partial event replaces the Partial before it (the fill figures are cumulative), which keeps
# room for the order's last event and an order under ~1.5 KB.
MAX_ORDER_EVENTS = 16


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
        self._orders: dict[int, dict[str, Any]] = {}  # Backtrader order ref -> its record
        self._unrecorded: set[int] = set()  # refs of the orders past MAX_ORDERS
        # The broker's undelivered notifications, and how many were queued when the last bar
        # ended (see stop()). A broker without the queue (not BackBroker) leaves it empty.
        self._notifs: Any = getattr(self.strategy.broker, "notifs", ())
        self._queued_at_last_bar = 0
        # Bound once: these run on every bar.
        self._getvalue = self.strategy.broker.getvalue
        self._getposition = self.strategy.broker.getposition
        self._datetime = self.data.lines.datetime
        self._datas = tuple(self.strategy.datas)
        self._progress: Progress = self.p.progress

    def next(self) -> None:
        """Record one bar: value, datetime, whether a position is open; maybe report progress."""
        self.values.append(self._getvalue())
        self.datetimes.append(self._datetime[0])
        if any(self._getposition(data).size for data in self._datas):  # in any of the feeds
            self.bars_in_market += 1
        self._queued_at_last_bar = len(self._notifs)
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

    def notify_order(self, order: Any) -> None:
        """One status change of an order (the broker notifies every one), at the current bar.

        Notifications are delivered at the start of a bar, before the strategy's next(): an
        order placed at bar t is Submitted and Accepted at t+1, and a market order executes
        (Completed) at t+1's open.
        """
        self._order_event(order, iso_timestamp(self.strategy.datetime[0]))

    def stop(self) -> None:
        """Record what the broker did at the last bar but never delivered: the submission of
        orders placed at the last bar (their notifications wait for a bar that never comes).

        Orders placed in the strategy's own stop(), queued after those, are left out: they
        were never placed while a bar was current, and a verified run never commits them.
        """
        if not len(self.values):
            return
        stamp = iso_timestamp(self.strategy.datetime[0])
        for index, order in enumerate(self._notifs):
            if index >= self._queued_at_last_bar:
                break
            self._order_event(order, stamp)

    @property
    def orders_total(self) -> int:
        """Orders notified, recorded or past MAX_ORDERS."""
        return len(self._orders) + len(self._unrecorded)

    def _order_event(self, order: Any, stamp: str) -> None:
        record = self._orders.get(order.ref)
        if record is None:
            if order.ref in self._unrecorded or len(self._orders) >= MAX_ORDERS:
                self._unrecorded.add(order.ref)
                return
            record = self._orders[order.ref] = order_record(order)
        events: list[list[Any]] = record["events"]
        event = order_event(order, stamp)
        if len(events) >= MAX_ORDER_EVENTS - 2 and event[0] == events[-1][0] == "Partial":
            events[-1] = event
        elif len(events) < MAX_ORDER_EVENTS:
            events.append(event)

    def order_log(self) -> list[dict[str, Any]]:
        """The order records in the order the orders were created, numbered 1, 2, ... in `ref`.

        Backtrader's own refs come from one counter per process: the referee of a verified
        run, or a second run in the same process, numbers the same orders differently. Their
        order is the creation order in any process, so the rank is the same on both sides.
        """
        ranked = sorted(self._orders.items())
        return [{"ref": rank, **record} for rank, (_, record) in enumerate(ranked, start=1)]

    def open_positions(self) -> list[dict[str, Any]]:
        """The positions still open after the last bar, one per feed holding one."""
        broker = self.strategy.broker
        positions = []
        for data in self.strategy.datas:
            position = broker.getposition(data)
            if not position.size or not len(data):
                continue
            close = data.close[0]
            pnl = broker.getcommissioninfo(data).profitandloss(position.size, position.price, close)
            positions.append(
                _without_none(
                    {
                        "symbol": _symbol(data),
                        "size": _finite(position.size),
                        "price": _finite(position.price),
                        "close": _finite(close),
                        "pnl": _finite(pnl),
                    }
                )
            )
        return positions


_STATUS_NAMES = tuple(bt.Order.Status)
_EXECTYPE_NAMES = tuple(bt.Order.ExecTypes)


def order_record(order: Any) -> dict[str, Any]:
    """The protocol's record of one order, as placed; `events` follow as it is notified.

    A number that is not finite (a size computed from a NaN indicator) is left out: the
    order is still recorded, with the broker's answer to it.
    """
    params = order.p
    return _without_none(
        {
            "symbol": _symbol(order.data),
            "side": "buy" if order.isbuy() else "sell",
            "type": _name(_EXECTYPE_NAMES, order.exectype),
            "size": _finite(abs(order.created.size)),
            "price": _finite(params.price),
            "limit": _finite(params.pricelimit),
            "trail_amount": _finite(params.trailamount),
            "trail_percent": _finite(params.trailpercent),
            "valid": _iso_or_none(order.valid),
            "created": _iso_or_none(order.created.dt),
            "events": [],
        }
    )


def order_event(order: Any, stamp: str) -> list[Any]:
    """`[status, bar stamp]`, with `filled, average price, commission` so far once any of the
    order has executed (Backtrader's `order.executed`: cumulative over its fills)."""
    event: list[Any] = [_name(_STATUS_NAMES, order.status), stamp]
    executed = order.executed
    figures = (_finite(abs(executed.size)), _finite(executed.price), _finite(executed.comm))
    if figures[0] and None not in figures:
        event.extend(figures)
    return event


def _name(names: tuple[str, ...], index: Any) -> str:
    try:
        return names[index]
    except (IndexError, TypeError):
        return str(index)[:64]  # not one of Backtrader's: the host refuses the result


def _symbol(data: Any) -> str:
    return str(getattr(data, "_name", "") or "")[:256]


def _finite(value: Any) -> float | None:
    """`value` as a float, or None when it is None or not a finite number."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _iso_or_none(dtnum: Any) -> str | None:
    """A Backtrader date number as ISO, or None for one that is not a date (0, None, NaN)."""
    number = _finite(dtnum)
    if number is None or number < 1.0:
        return None
    try:
        return iso_timestamp(number)
    except (ValueError, OverflowError):
        return None


def _without_none(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}


def trade_record(trade: Any, opened_size: float, mult: float) -> dict[str, Any]:
    """The protocol's record of one closed trade, on the feed named `symbol`."""
    size, exit_price = _size_and_exit_price(trade, opened_size, mult)
    return {
        "symbol": _symbol(trade.data),
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

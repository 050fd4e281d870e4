"""Verified mode, strategy side: the pipe, the event log, and what a verified run refuses.

Everything here is a courtesy to an honest strategy, never a defence: the strategy runs in
this process and can undo any of it. The trusted side stamps what arrives on the pipe with the
newest bar it had released, validates it, and replays it in a referee of its own; an event
left out here is an order the referee never sees, and one forged here is an order the
strategy chose to make. What this module adds is clear answers: a look-ahead is an IndexError
that says why, and a feature the referee cannot replay is refused by name at once instead of
ending in a result that does not match.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any

import backtrader as bt

# Broker methods that change what the referee would compute: the config sets the broker.
_BROKER_SETTINGS = (
    "setcash", "set_cash", "add_cash", "setcommission", "addcommissioninfo",
    "set_slippage_perc", "set_slippage_fixed", "set_coc", "set_coo", "set_checksubmit",
    "set_shortcash", "set_filler", "set_fundmode", "set_fundstartval", "set_int2pnl",
    "set_eosbar", "add_order_history", "set_fund_history",
)  # fmt: skip
# Cerebro methods that add feeds or change how bars are delivered, once the run is set up.
_CEREBRO_FEEDS = ("adddata", "resampledata", "replaydata", "chaindata", "rolloverdata")
_OPEN_METHODS = ("next_open", "nextstart_open", "prenext_open")
_LINEBUFFER_FILE = os.path.join("backtrader", "linebuffer.py")
LOOKAHEAD_HINT = (
    "a verified run shows the strategy bars up to the current one only: index 0 is the "
    "current bar, -1 the one before; index 1 and later have not happened yet"
)


class UnsupportedFeature(Exception):
    """The strategy uses what a verified run cannot honour; `feature` names it."""

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(message)
        self.feature = feature


def open_pipe(pipe: str | dict[str, str]) -> tuple[int, int]:
    """The bar pipe's two ends as the spec names them (PROTOCOL.md): two FIFOs, or "stdio".
    Returns (read fd, write fd)."""
    if pipe == "stdio":
        return take_stdio()
    assert isinstance(pipe, dict)
    # The host holds both FIFOs open already: neither open waits.
    return os.open(pipe["bars"], os.O_RDONLY), os.open(pipe["commits"], os.O_WRONLY)


def take_stdio() -> tuple[int, int]:
    """The pipe's two ends (this process's stdin and stdout), taken for the harness alone.

    The strategy's own output then goes to stderr, which the host keeps as the logs, and its
    stdin reads nothing. Returns (read fd, write fd).
    """
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return read_fd, write_fd


class EventLog:
    """The orders and cancels the strategy made since the last commit, in the order made."""

    def __init__(self) -> None:
        # The run's feeds, in order (an order names its feed by index): Cerebro's own list,
        # which guard() hands over once the feeds are added.
        self.feeds: list[Any] = []
        self._pending: list[dict[str, Any]] = []

    def commit(self) -> bytes:
        """The pending events as one JSON line's text, and a fresh start."""
        if not self._pending:  # most bars: no events
            return b"[]"
        # allow_nan: a NaN size goes to the trusted side as it is, to be refused there.
        line = json.dumps(self._pending, separators=(",", ":"), allow_nan=True).encode()
        self._pending = []
        return line

    def order(self, order: Any, oco_leader: int) -> None:
        """Record `order`; `oco_leader` is the ref of its OCO group's first order."""
        self._pending.append(
            {
                "op": "order",
                "ref": order.ref,
                "side": "buy" if order.isbuy() else "sell",
                "feed": self._feed_index(order.data),
                "size": _number(order.p.size),
                "price": _number(order.p.price),
                "plimit": _number(order.p.pricelimit),
                "exectype": bt.Order.ExecTypes[order.exectype],
                "valid": _number(order.valid),  # resolved by Order: a date number or None
                "tradeid": _integer(order.p.tradeid),
                # The broker keeps the OCO link itself (order.p.oco stays None): the group's
                # leader stands for it, which links the replayed order into the same group.
                "oco": None if oco_leader == order.ref else oco_leader,
                "parent": _ref(order.p.parent),
                "transmit": bool(order.p.transmit),
                "trailamount": _number(order.p.trailamount),
                "trailpercent": _number(order.p.trailpercent),
            }
        )

    def cancel(self, order: Any) -> None:
        self._pending.append({"op": "cancel", "ref": _ref(order)})

    def _feed_index(self, data: Any) -> int:
        for index, feed in enumerate(self.feeds):
            if feed is data:
                return index
        return -1  # not one of the run's feeds: the trusted side refuses it


def _number(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)  # refused by the trusted side, which sees what was passed


def _integer(value: Any) -> Any:
    """A numpy integer as a JSON number; anything else as it is (the trusted side judges)."""
    return int(value) if isinstance(value, numbers.Integral) else _number(value)


def _ref(order: Any) -> Any:
    return None if order is None else getattr(order, "ref", -1)


def guard(cerebro: Any, events: EventLog) -> None:
    """Record the broker's orders and cancels in `events`, and refuse by name what a
    verified run cannot honour. Call once the harness has set the broker and the feed up."""
    events.feeds = cerebro.datas
    broker = cerebro.broker
    buy, sell, cancel = broker.buy, broker.sell, broker.cancel

    def recorded(place: Any) -> Any:
        def place_and_record(*args: Any, **kwargs: Any) -> Any:
            order = place(*args, **kwargs)
            if order.exectype == bt.Order.Historical:
                raise UnsupportedFeature(
                    "Order.Historical", "Order.Historical is not supported in a verified run"
                )
            events.order(order, broker._ocos.get(order.ref, order.ref))
            return order

        return place_and_record

    def recorded_cancel(order: Any, bracket: bool = False) -> Any:
        if not bracket:  # bracket=True: the broker cancelling a bracket's other legs itself
            events.cancel(order)
        return cancel(order, bracket)

    broker.buy, broker.sell, broker.cancel = recorded(buy), recorded(sell), recorded_cancel
    for name in _BROKER_SETTINGS:
        setattr(broker, name, _refusal("broker_settings", f"broker.{name}"))
    for name in _CEREBRO_FEEDS:
        setattr(cerebro, name, _refusal("data_feeds", f"cerebro.{name}"))
    # Strategy.add_timer and Cerebro.add_timer both end here.
    cerebro._add_timer = _refusal("timers", "timers (add_timer)")
    cerebro.setbroker = _refusal("broker_settings", "cerebro.setbroker")


def _refusal(feature: str, what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsupportedFeature(
            feature,
            f"{what} is not supported in a verified run: the config sets the broker and the "
            "data (use mode 'fast' to run it as it is)",
        )

    return refuse


def check_strategy(cls: type, cerebro: Any) -> None:
    """Refuse, before the first bar, a strategy that asks for what cannot be replayed."""
    if cerebro.p.cheat_on_open:
        raise UnsupportedFeature(
            "cheat_on_open", "cheat_on_open is not supported in a verified run (use mode 'fast')"
        )
    for name in _OPEN_METHODS:
        if getattr(cls, name, None) is not getattr(bt.Strategy, name, None):
            raise UnsupportedFeature(
                "next_open",
                f"{cls.__name__}.{name} needs cheat-on-open, which a verified run cannot honour "
                "(use mode 'fast' to run it)",
            )


def is_lookahead(exc: BaseException) -> bool:
    """Whether `exc` is an IndexError raised by reading a line past the current bar."""
    if not isinstance(exc, IndexError):
        return False
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and last.endswith(_LINEBUFFER_FILE)

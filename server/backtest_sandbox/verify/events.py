"""The events a verified run's strategy commits, checked before the referee sees any.

One commit is one line of JSON: a list of events, each an order or a cancel (runner_image/
PROTOCOL.md "Verified mode"). A line that is not such a list breaks the protocol and ends the
run; an event that breaks a rule is refused alone and counted (`rejected_events`), and the
referee never sees it.
"""

from __future__ import annotations

import json
import math
from typing import Any

# The order types the referee replays; Order.Historical is not among them.
EXECTYPES = frozenset(
    {"Market", "Close", "Limit", "Stop", "StopLimit", "StopTrail", "StopTrailLimit"}
)
ORDER_FIELDS = frozenset(
    {
        "op", "ref", "side", "feed", "size", "price", "plimit", "exectype", "valid",
        "tradeid", "oco", "parent", "transmit", "trailamount", "trailpercent",
    }
)  # fmt: skip
CANCEL_FIELDS = frozenset({"op", "ref"})
MAX_REF = 2**53  # a JSON-safe integer
_OPTIONAL_PRICES = ("price", "plimit", "trailamount", "trailpercent")


class ProtocolViolation(ValueError):
    """A commit that is not a list of events: the run ends as result_invalid."""


def parse_commit(line: bytes, max_events: int) -> list[Any]:
    """The events of one commit line, unchecked.

    Raises:
        ProtocolViolation: not UTF-8 JSON, not a list, or more than `max_events` events.
    """
    try:
        events = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolViolation(f"a commit is not JSON ({str(e)[:120]})") from None
    if not isinstance(events, list):
        raise ProtocolViolation("a commit is not a JSON list of events")
    if len(events) > max_events:
        raise ProtocolViolation(
            f"{len(events)} events in one bar, over the limit of {max_events}"
        )
    return events


class EventCheck:
    """The rules one run's events must keep; remembers the refs of the orders it accepted."""

    def __init__(self, feeds: int) -> None:
        self.feeds = feeds
        self.refs: set[int] = set()

    def accept(self, event: Any) -> bool:
        """Whether `event` may reach the referee (an accepted order's ref is remembered)."""
        if not isinstance(event, dict):
            return False
        if event.get("op") == "cancel":
            return event.keys() == CANCEL_FIELDS and self._known(event["ref"])
        if event.get("op") != "order" or event.keys() != ORDER_FIELDS:
            return False
        if not self._order_is_valid(event):
            return False
        self.refs.add(event["ref"])
        return True

    def _known(self, ref: Any) -> bool:
        return _is_ref(ref) and ref in self.refs

    def _order_is_valid(self, e: dict[str, Any]) -> bool:
        return (
            _is_ref(e["ref"])
            and e["ref"] not in self.refs
            and e["side"] in ("buy", "sell")
            and _is_int(e["feed"])
            and 0 <= e["feed"] < self.feeds
            and _is_positive(e["size"])
            and all(e[name] is None or _is_positive(e[name]) for name in _OPTIONAL_PRICES)
            and isinstance(e["exectype"], str)
            and e["exectype"] in EXECTYPES
            and (e["valid"] is None or (_is_number(e["valid"]) and e["valid"] >= 0))
            and _is_int(e["tradeid"])
            and 0 <= e["tradeid"] < MAX_REF
            and all(e[link] is None or self._known(e[link]) for link in ("oco", "parent"))
            and isinstance(e["transmit"], bool)
        )


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_ref(value: Any) -> bool:
    return _is_int(value) and 0 < value < MAX_REF


def _is_number(value: Any) -> bool:
    if type(value) is int:
        return abs(value) < MAX_REF  # past float range, isfinite() would raise
    return type(value) is float and math.isfinite(value)


def _is_positive(value: Any) -> bool:
    return _is_number(value) and value > 0

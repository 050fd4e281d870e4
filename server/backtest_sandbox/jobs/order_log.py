"""The order log and the open positions as users read them: the protocol's compact records
(runner_image/PROTOCOL.md "orders", validated in sandbox/claim.py) spelled out with names.

An order's `status` is its last event's, and an order that ended without executing says why
in `reason`: an agent reading "Margin" should not have to know Backtrader to know what it means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backtest_sandbox.sandbox.claim import OpenPosition, OrderEvent, OrderRecord

# Why an order ended without (fully) executing, by its final status (Backtrader's names).
REASONS = {
    "Margin": (
        "not enough cash: Backtrader's broker found the order's cost larger than the cash "
        "available when it checked (at submission, and again at execution)"
    ),
    "Rejected": "the broker rejected the order",
    "Expired": "its validity (valid) ended before it executed",
    "Canceled": (
        "cancelled before it executed: by the strategy, or by the broker as the other side "
        "of an OCO group or bracket"
    ),
}


def order_entries(orders: Sequence[OrderRecord]) -> list[dict[str, Any]]:
    return [order_entry(order) for order in orders]


def order_entry(order: OrderRecord) -> dict[str, Any]:
    """One order: as placed (unset fields null), its final status and why, and its events."""
    status = order.events[-1][0]
    return {
        "ref": order.ref,
        "symbol": order.symbol,
        "side": order.side,
        "type": order.type,
        "size": order.size,
        "price": order.price,
        "limit": order.limit,
        "trail_amount": order.trail_amount,
        "trail_percent": order.trail_percent,
        "valid": order.valid,
        "created": order.created,
        "status": status,
        "reason": REASONS.get(status),
        "events": [event_entry(event) for event in order.events],
    }


def event_entry(event: OrderEvent) -> dict[str, Any]:
    """`{status, at}`, and once any of the order has executed `filled` (absolute size),
    `price` (average over the fills) and `commission`, all cumulative."""
    status, at, *figures = event
    entry: dict[str, Any] = {"status": status, "at": at}
    if figures:
        filled, price, commission = figures
        entry.update(filled=filled, price=price, commission=commission)
    return entry


def position_entries(positions: Sequence[OpenPosition]) -> list[dict[str, Any]]:
    """`{symbol, size, price, close, pnl}`: the size held (negative: short), Backtrader's
    average entry price, the last close, and the unrealised profit at that close."""
    return [position.model_dump() for position in positions]

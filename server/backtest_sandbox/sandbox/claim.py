"""Parsing the harness's result (runner_image/PROTOCOL.md): hostile bytes in, a typed claim out.

The strategy runs in the same process as the harness, so these bytes may be anything: not
UTF-8, deeply nested, NaN, a 10,000-digit integer, a claim of its own verdict. Only the
shapes of the protocol are accepted, with bounded strings and finite numbers.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

# Strict scalars (no "1.5" -> 1.5 coercion), inside lax containers so JSON lists fit tuples.
MAX_TEXT = 16 * 1024
Text = Annotated[str, Strict(), Field(max_length=MAX_TEXT)]
ShortText = Annotated[str, Strict(), Field(max_length=256)]
Timestamp = Annotated[str, Strict(), Field(min_length=10, max_length=32)]
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Count = Annotated[int, Strict(), Field(ge=0)]

# The order log's bounds, as runner_image/recorder.py keeps them (PROTOCOL.md "orders").
MAX_ORDERS = 20_000
MAX_ORDER_EVENTS = 16
MAX_OPEN_POSITIONS = 64  # one per feed holding a position; a run has at most 21 feeds
OrderStatus = Literal[
    "Created", "Submitted", "Accepted", "Partial", "Completed",
    "Canceled", "Expired", "Margin", "Rejected",
]  # fmt: skip
ExecType = Literal[
    "Market", "Close", "Limit", "Stop", "StopLimit", "StopTrail", "StopTrailLimit", "Historical"
]
# [status, bar stamp], or with what has executed so far: [..., filled, average price, commission]
OrderEvent = tuple[OrderStatus, Timestamp] | tuple[OrderStatus, Timestamp, Finite, Finite, Finite]

# The analyzers' results, as runner_image/analyses.py bounds them (PROTOCOL.md "analyzers").
MAX_ANALYZERS = 64
MAX_ANALYSIS_DEPTH = 32  # containers nested in one value
MAX_ANALYSIS_BYTES = 256 * 1024  # one value, as compact JSON
MAX_ANALYSES_BYTES = 1024 * 1024  # all of them
MAX_ANALYSIS_KEY = 256
_MAX_INT = 2**63 - 1


def _plain_json(value: Any) -> Any:
    """`value` if it is JSON within the analyzers' bounds (walked without recursion: its
    depth is what is being checked).

    Raises:
        ValueError: naming the first rule broken.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_ANALYSIS_DEPTH:
                raise ValueError(f"nested more than {MAX_ANALYSIS_DEPTH} levels deep")
            if isinstance(item, dict):
                if any(len(key) > MAX_ANALYSIS_KEY for key in item):
                    raise ValueError(f"a key longer than {MAX_ANALYSIS_KEY} characters")
                item = list(item.values())
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if len(item) > MAX_TEXT:
                raise ValueError(f"a string longer than {MAX_TEXT} characters")
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -_MAX_INT <= item <= _MAX_INT:
                raise ValueError("an integer beyond 64 bits")
        elif not (item is None or isinstance(item, bool | float)):  # floats parse finite
            raise ValueError(f"not JSON: {type(item).__name__}")
    if _json_size(value) > MAX_ANALYSIS_BYTES:
        raise ValueError(f"over {MAX_ANALYSIS_BYTES} bytes of JSON")
    return value


def _json_size(value: Any) -> int:
    """Compact JSON's length, as the harness measures it (ASCII: characters are bytes)."""
    return len(json.dumps(value, allow_nan=False, separators=(",", ":")))


AnalyzerName = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ANALYSIS_KEY)]
Analysis = Annotated[Any, AfterValidator(_plain_json)]


class InvalidClaim(ValueError):
    """The result breaks the protocol; the message says how (it goes into the error details)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TradeRecord(_Strict):
    symbol: ShortText  # the feed's name (PROTOCOL.md "trades")
    entry_time: Timestamp
    exit_time: Timestamp
    direction: Literal["long", "short"]
    size: Finite
    entry_price: Finite
    exit_price: Finite
    pnl: Finite
    pnl_net: Finite
    commission: Finite
    bars_held: Count


class _Compact(_Strict):
    """A record whose optional fields are left out when unset, never null (PROTOCOL.md)."""

    @model_validator(mode="before")
    @classmethod
    def _absent_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None:
                    raise ValueError(f"{key} is null: a value that is not set is left out")
        return data


class OrderRecord(_Compact):
    ref: Annotated[int, Strict(), Field(ge=1, le=MAX_ORDERS)]
    symbol: ShortText
    side: Literal["buy", "sell"]
    type: ExecType
    size: Finite | None = None
    price: Finite | None = None
    limit: Finite | None = None
    trail_amount: Finite | None = None
    trail_percent: Finite | None = None
    valid: Timestamp | None = None
    created: Timestamp | None = None
    events: Annotated[list[OrderEvent], Field(min_length=1, max_length=MAX_ORDER_EVENTS)]


class OpenPosition(_Compact):
    symbol: ShortText
    size: Finite | None = None
    price: Finite | None = None
    close: Finite | None = None
    pnl: Finite | None = None


class StrategyFailure(_Strict):
    exc_type: ShortText
    message: Text
    traceback: Text


class CompletedClaim(_Strict):
    protocol: Literal[1]
    outcome: Literal["completed"]
    backtrader_version: ShortText
    bars: Count
    final_value: Finite
    final_cash: Finite
    bars_in_market: Count
    equity_curve: list[tuple[Timestamp, Finite]]
    trades: list[TradeRecord]
    open_trades: Count
    orders: Annotated[list[OrderRecord], Field(max_length=MAX_ORDERS)]
    orders_total: Count
    open_positions: Annotated[list[OpenPosition], Field(max_length=MAX_OPEN_POSITIONS)]
    # What the analyzers registered with the strategy returned, and why others returned
    # nothing (both empty from the referee, which runs none).
    analyzers: Annotated[dict[AnalyzerName, Analysis], Field(max_length=MAX_ANALYZERS)] = {}
    analyzer_errors: Annotated[dict[AnalyzerName, Text], Field(max_length=MAX_ANALYZERS)] = {}


class FailedClaim(_Strict):
    protocol: Literal[1]
    outcome: Literal["runtime_error"]
    backtrader_version: ShortText
    error: StrategyFailure


class UnsupportedClaim(_Strict):
    """A verified run's strategy used what the referee cannot replay (PROTOCOL.md)."""

    protocol: Literal[1]
    outcome: Literal["unsupported_feature"]
    backtrader_version: ShortText
    feature: ShortText
    error: StrategyFailure


Claim = CompletedClaim | FailedClaim | UnsupportedClaim
_SHAPES: dict[object, type[FailedClaim | UnsupportedClaim]] = {
    "runtime_error": FailedClaim,
    "unsupported_feature": UnsupportedClaim,
}


def _refuse_constant(name: str) -> Any:
    raise InvalidClaim(f"{name} is not allowed in the result")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf
        raise InvalidClaim(f"number {text[:32]} is not finite")
    return value


def parse_claim(raw: bytes, *, expected_bars: int) -> Claim:
    """Validate the bytes against the protocol.

    Raises:
        InvalidClaim: not UTF-8 JSON, not one of the protocol's shapes, or inconsistent with
            the run.
    """
    try:
        document = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except InvalidClaim:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError covers bad JSON and integers past Python's digit limit.
        raise InvalidClaim(f"not valid JSON: {str(e)[:200]}") from None
    if not isinstance(document, dict):
        raise InvalidClaim("not a JSON object")
    model: type[Claim] = _SHAPES.get(document.get("outcome"), CompletedClaim)
    try:
        report = model.model_validate(document)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        raise InvalidClaim(f"{where}: {first['msg']}") from None
    if isinstance(report, CompletedClaim):
        # Fewer bars is legitimate: a strategy may stop early with `self.env.runstop()`.
        if report.bars > expected_bars or len(report.equity_curve) != report.bars:
            raise InvalidClaim(
                f"the run had {expected_bars} bars but the result reports {report.bars} "
                f"with {len(report.equity_curve)} equity points"
            )
        if report.bars_in_market > report.bars:
            raise InvalidClaim("bars_in_market exceeds bars")
        _check_orders(report)
        _check_analyzers(report)
    return report


def _check_orders(report: CompletedClaim) -> None:
    """The order log's numbering: refs 1, 2, ... in order, and a total that counts them all."""
    for index, order in enumerate(report.orders):
        if order.ref != index + 1:
            raise InvalidClaim(
                f"orders.{index}.ref: must be {index + 1} (orders are numbered 1, 2, ...)"
            )
    if report.orders_total < len(report.orders):
        raise InvalidClaim(
            f"orders_total: must be at least the {len(report.orders)} orders recorded"
        )


def _check_analyzers(report: CompletedClaim) -> None:
    """Each analyzer once, with a value or an error; their JSON within the run's bound."""
    both = report.analyzers.keys() & report.analyzer_errors.keys()
    if both:
        raise InvalidClaim(f"analyzer_errors: {sorted(both)[0]!r} also has a value in analyzers")
    if len(report.analyzers) + len(report.analyzer_errors) > MAX_ANALYZERS:
        raise InvalidClaim(f"analyzers: more than {MAX_ANALYZERS} with analyzer_errors")
    if sum(map(_json_size, report.analyzers.values())) > MAX_ANALYSES_BYTES:
        raise InvalidClaim(f"analyzers: over {MAX_ANALYSES_BYTES} bytes of JSON together")

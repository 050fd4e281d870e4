"""Parsing the harness's result (runner_image/PROTOCOL.md): hostile bytes in, a typed claim out.

The strategy runs in the same process as the harness, so these bytes may be anything: not
UTF-8, deeply nested, NaN, a 10,000-digit integer, a claim of its own verdict. Only the
shapes of the protocol are accepted, with bounded strings and finite numbers.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

# Strict scalars (no "1.5" -> 1.5 coercion), inside lax containers so JSON lists fit tuples.
MAX_TEXT = 16 * 1024
Text = Annotated[str, Strict(), Field(max_length=MAX_TEXT)]
ShortText = Annotated[str, Strict(), Field(max_length=256)]
Timestamp = Annotated[str, Strict(), Field(min_length=10, max_length=32)]
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Count = Annotated[int, Strict(), Field(ge=0)]


class InvalidClaim(ValueError):
    """The result breaks the protocol; the message says how (it goes into the error details)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TradeRecord(_Strict):
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
    return report

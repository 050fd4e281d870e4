"""`BacktestConfig` (docs/interface.md section 3): validated on the host before anything runs."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from . import analyzers as builtin_analyzers
from .errors import InvalidRequest
from .timeframes import Timeframe

SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,32}$")
MIN_MEMORY_MB = 128  # below this Python, pandas and Backtrader cannot even import
# Bounds that keep every derived number finite inside Backtrader (an order of 1e307 units
# overflows to inf): far beyond any real account or order.
MAX_CAPITAL = 1e15
MAX_ORDER_UNITS = 1e12
MAX_PARAMS_DEPTH = 16  # nesting of the params object
MAX_PARAMS_BYTES = 64 * 1024  # its JSON
MAX_EXTRA_SYMBOLS = 20  # more feeds per run (interface section 8)
MAX_LEVERAGE = 100.0
BUILTIN_SIZERS = ("fixed", "percent", "all_in")
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class AnalyzerSpec(BaseModel):
    """One of Backtrader's built-in analyzers to add, as `cerebro.addanalyzer(cls, **params)`
    (a bare name in the config is this with no params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="a Backtrader analyzer class name, e.g. SharpeRatio")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="its params: booleans, finite numbers or null; timeframe by name (Days)",
    )

    @model_validator(mode="after")
    def _known(self) -> AnalyzerSpec:
        if self.name not in builtin_analyzers.BUILTIN_ANALYZERS:
            known = ", ".join(builtin_analyzers.BUILTIN_ANALYZERS)
            raise ValueError(f"unknown analyzer {self.name!r}; the known ones are {known}")
        builtin_analyzers.check_params(self.name, self.params)
        return self


class BacktestConfig(BaseModel):
    """One backtest's parameters. Unknown fields are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Each description is the field's rule as callers read it (the backtest://config resource).
    symbol: str = Field(description="required; 1 to 32 letters, digits and _")
    timeframe: Timeframe = Field(
        description="required; an MT5 timeframe by code (16408) or by name ('D1')"
    )
    start_date: date = Field(
        description="required; ISO date; bars with start_date <= date <= end_date are used"
    )
    end_date: date = Field(description="required; ISO date after start_date")
    initial_capital: float = Field(
        10000.0,
        gt=0,
        le=MAX_CAPITAL,
        allow_inf_nan=False,
        description=f"> 0 and <= {MAX_CAPITAL:g}",
    )
    commission: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description=">= 0; fraction of traded value (0.001 = 0.1 %)",
    )
    slippage: float = Field(0.0, ge=0, allow_inf_nan=False, description=">= 0; fraction of price")
    position_size: float = Field(
        1.0,
        ge=0.01,
        le=100,
        allow_inf_nan=False,
        description="0.01 to 100 lots; default order size = position_size x contract_size "
        f"units, at most {MAX_ORDER_UNITS:g}",
    )
    contract_size: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="> 0 (100000 for a standard FX lot)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="a JSON object passed to the strategy's params (no NaN or Infinity; "
        f"at most {MAX_PARAMS_DEPTH} levels deep and {MAX_PARAMS_BYTES} bytes)",
    )
    timeout_seconds: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="> 0 and at most this server's max_timeout_seconds",
    )
    memory_mb: int = Field(
        512,
        ge=MIN_MEMORY_MB,
        description=f">= {MIN_MEMORY_MB} and at most this server's max_memory_mb",
    )
    data_source: Literal["auto", "file", "synthetic"] = Field(
        "auto",
        description="auto (the catalog's file if there is one, else synthetic), file, synthetic",
    )
    adjust_prices: bool = Field(
        False,
        description="adjust every feed's bars by its file's adjusted close (Yahoo's Adj Close) "
        "as backtrader's YahooFinanceCSVData does by default; a file without one is a "
        "data_error; synthetic bars are left as they are (with a warning)",
    )
    # What people set in a script's main(), each mapped to Backtrader's own call (README
    # "Broker and sizer"); the verified referee is built with the same calls.
    sizer: str = Field(
        "fixed",
        description="fixed (position_size x contract_size units, FixedSize), percent "
        "(PercentSizer: sizer_params.percents of the cash), all_in (AllInSizer), or the name of "
        "a backtrader.Sizer subclass defined in the strategy file",
    )
    sizer_params: dict[str, Any] = Field(
        default_factory=dict,
        description="the sizer's params: percent needs {percents: 0 < p <= 100}; a sizer class of "
        "the strategy file gets them as its params (JSON values); fixed and all_in take none",
    )
    commission_type: Literal["percentage", "per_contract", "futures"] = Field(
        "percentage",
        description="percentage (commission is a fraction of traded value), per_contract "
        "(commission is an amount per unit traded), futures (an amount per contract, with "
        "margin and mult)",
    )
    margin: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="futures only, required there: the cash one contract ties up",
    )
    mult: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="> 0; futures only: the contract multiplier"
    )
    leverage: float = Field(
        1.0,
        ge=1.0,
        le=MAX_LEVERAGE,
        allow_inf_nan=False,
        description=f"1 to {MAX_LEVERAGE:g}: the broker's leverage (setcommission(leverage=...))",
    )
    coc: bool = Field(
        False,
        description="cheat-on-close: market orders fill at the close of the bar they are made on",
    )
    cheat_on_open: bool = Field(
        False,
        description="fast mode only (a verified run fails with unsupported_feature): next_open "
        "runs before the bar's orders fill, at its open",
    )
    mode: Literal["verified", "fast"] = Field(
        "verified",
        description="verified (the strategy sees bars up to the current one; a referee that "
        "runs no user code computes the numbers) or fast (one process, its own numbers)",
    )

    extra_symbols: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXTRA_SYMBOLS,
        description=f"at most {MAX_EXTRA_SYMBOLS} more symbols, each like symbol, none repeated: "
        "more feeds on the same timeframe and range, aligned by timestamp (self.datas[1:], "
        "each named by its symbol)",
    )
    benchmark: str | None = Field(
        None,
        description="null or a symbol like symbol: its buy-and-hold over the same bars is "
        "compared with the strategy (alpha, beta, correlation, information_ratio, "
        "tracking_error_pct)",
    )
    analyzers: list[AnalyzerSpec] = Field(
        default_factory=list,
        max_length=builtin_analyzers.MAX_ANALYZERS,
        description=f"at most {builtin_analyzers.MAX_ANALYZERS} of Backtrader's built-in "
        "analyzers, none repeated, each a class name (SharpeRatio) or {name, params}: added "
        "with cerebro.addanalyzer(cls, _name=name, **params); their get_analysis() comes back "
        "in the result's analyzers, computed in the strategy's process (unverified). Known: "
        + ", ".join(builtin_analyzers.BUILTIN_ANALYZERS),
    )

    @field_validator("symbol", "benchmark")
    @classmethod
    def _symbol_chars(cls, value: str | None) -> str | None:
        if value is not None and not SYMBOL_PATTERN.fullmatch(value):
            raise ValueError("must be 1 to 32 letters, digits and _")
        return value

    @field_validator("sizer")
    @classmethod
    def _sizer_name(cls, value: str) -> str:
        if value not in BUILTIN_SIZERS and not _CLASS_NAME.fullmatch(value):
            raise ValueError(
                f"must be one of {', '.join(BUILTIN_SIZERS)} or the name of a Sizer class of the "
                "strategy file"
            )
        return value

    @field_validator("sizer_params")
    @classmethod
    def _sizer_params_are_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        return cls._params_are_json(value)

    @field_validator("extra_symbols")
    @classmethod
    def _extra_symbols_chars(cls, value: list[str]) -> list[str]:
        for index, symbol in enumerate(value):
            if not SYMBOL_PATTERN.fullmatch(symbol):
                raise ValueError(f"item {index} ({symbol!r}) must be 1 to 32 letters, digits and _")
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a symbol")
        return value

    @field_validator("analyzers", mode="before")
    @classmethod
    def _analyzer_names(cls, value: Any) -> Any:
        # A bare name is the spec with no params.
        if not isinstance(value, list):
            return value
        for index, item in enumerate(value):
            if not isinstance(item, str | dict):
                raise ValueError(f"item {index} must be an analyzer name or {{name, params}}")
        return [{"name": item} if isinstance(item, str) else item for item in value]

    @field_validator("analyzers")
    @classmethod
    def _analyzers_once(cls, value: list[AnalyzerSpec]) -> list[AnalyzerSpec]:
        names = [spec.name for spec in value]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"item {index} repeats {name}: each analyzer at most once")
        return value

    @field_validator("timeframe", mode="before")
    @classmethod
    def _parse_timeframe(cls, value: Any) -> Timeframe:
        if not isinstance(value, int | str):
            raise ValueError("must be an MT5 timeframe code (int) or name (str)")
        return Timeframe.parse(value)

    @field_validator("params")
    @classmethod
    def _params_are_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value) > MAX_PARAMS_DEPTH:
            raise ValueError(f"must be nested at most {MAX_PARAMS_DEPTH} levels deep")
        try:
            encoded = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"must be plain JSON (no NaN or Infinity): {e}") from None
        if len(encoded) > MAX_PARAMS_BYTES:
            raise ValueError(f"must be at most {MAX_PARAMS_BYTES} bytes of JSON")
        return value

    @model_validator(mode="after")
    def _dates_in_order(self) -> BacktestConfig:
        if self.end_date <= self.start_date:
            raise ValueError("end_date must be after start_date")
        if self.symbol in self.extra_symbols:
            raise ValueError(f"extra_symbols must not repeat symbol {self.symbol!r}")
        return self

    @model_validator(mode="after")
    def _broker_fields_agree(self) -> BacktestConfig:
        futures = self.commission_type == "futures"
        if futures and self.margin is None:
            raise ValueError("margin is required with commission_type futures")
        if not futures and (self.margin is not None or self.mult != 1.0):
            raise ValueError("margin and mult apply to commission_type futures only")
        if self.sizer == "percent":
            percents = self.sizer_params.get("percents")
            if set(self.sizer_params) != {"percents"} or not _is_percent(percents):
                raise ValueError("sizer percent needs sizer_params {percents: 0 < p <= 100}")
        elif self.sizer in BUILTIN_SIZERS and self.sizer_params:
            raise ValueError(f"sizer {self.sizer} takes no sizer_params")
        return self

    @field_validator("contract_size")
    @classmethod
    def _order_size_in_bounds(cls, value: float, info: ValidationInfo) -> float:
        lots = info.data.get("position_size")  # validated first (fields validate in order)
        if isinstance(lots, float) and not lots * value <= MAX_ORDER_UNITS:  # inf fails too
            raise ValueError(
                f"position_size x contract_size must be at most {MAX_ORDER_UNITS:g} units "
                f"(got {lots * value:g})"
            )
        return value

    @field_serializer("timeframe")
    def _timeframe_name(self, value: Timeframe) -> str:
        return value.name

    @property
    def stake(self) -> float:
        """Default order size in units: position_size lots of contract_size units."""
        return self.position_size * self.contract_size

    def canonical_json(self) -> str:
        """A stable encoding: equal configs give equal bytes (for hashing and caching)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def describe_validation_error(error: ValidationError, prefix: str = "config") -> str:
    """One line per broken rule, each naming the field: `config.start_date: ...`."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in (prefix, *item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (not in the config schema)"
        lines.append(f"{loc}: {message}")
    return "; ".join(lines)


def parse_config(raw: Any, *, max_timeout_seconds: float, max_memory_mb: int) -> BacktestConfig:
    """Validate a raw config against the schema and this server's limits.

    Raises:
        InvalidRequest: naming the first broken field and every broken rule.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("config", "must be a JSON object")
    try:
        config = BacktestConfig.model_validate(raw)
    except ValidationError as e:
        first = ".".join(str(p) for p in ("config", *e.errors()[0]["loc"]))
        raise InvalidRequest(first, describe_validation_error(e).split(": ", 1)[1]) from None
    if config.timeout_seconds > max_timeout_seconds:
        raise InvalidRequest(
            "config.timeout_seconds", f"must be at most this server's maximum {max_timeout_seconds}"
        )
    if config.memory_mb > max_memory_mb:
        raise InvalidRequest(
            "config.memory_mb", f"must be at most this server's maximum {max_memory_mb}"
        )
    return config


def config_rules() -> dict[str, str]:
    """Field name -> its rule, from the model itself; `*` for the unknown-field rule."""
    rules = {name: f.description or "" for name, f in BacktestConfig.model_fields.items()}
    return {**rules, "*": "unknown fields are rejected"}


def _is_percent(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 100


def _depth(value: Any, level: int = 1) -> int:
    """How deep dicts and lists nest in `value` (iterative: a hostile depth cannot recurse)."""
    deepest, stack = 0, [(value, level)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, at)
            if at > MAX_PARAMS_DEPTH:
                return at
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, at + 1) for child in children)
    return deepest

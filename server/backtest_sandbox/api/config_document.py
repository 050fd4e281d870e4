"""The `backtest://config` resource, and the config's JSON schema as tools declare it.

Built from the config model and the error types themselves, so it cannot drift from the rules
the server enforces.
"""

from __future__ import annotations

from typing import Any

from backtest_sandbox.domain.analyzers import BUILTIN_ANALYZERS
from backtest_sandbox.domain.code import LANGUAGES
from backtest_sandbox.domain.config import MIN_MEMORY_MB, BacktestConfig, config_rules
from backtest_sandbox.domain.errors import ERROR_TYPE_MEANINGS
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.timeframes import Timeframe
from backtest_sandbox.jobs.views import (
    INLINE_EQUITY_POINTS,
    INLINE_LOG_CHARS,
    INLINE_TRADES,
    ORDERS_PAGE_MAX,
)

LANGUAGE_MEANINGS = {
    "python": "a Backtrader strategy: one backtrader.Strategy subclass, or name it "
    "with a module-level STRATEGY = MyStrategy",
}


def config_input_schema() -> dict[str, Any]:
    """`BacktestConfig`'s JSON schema, self-contained (no $defs), with the timeframe's names.

    pydantic describes the timeframe as its integer codes only, but names are accepted too;
    and a `$ref` into `$defs` would dangle once the schema is nested in a tool's input schema.
    """
    generated = BacktestConfig.model_json_schema()
    schema: dict[str, Any] = _inlined(generated, generated.pop("$defs", {}))
    # A bare name is accepted too (the analyzer with its defaults), and the names are few.
    analyzers = schema["properties"]["analyzers"]
    spec = analyzers["items"]
    spec["properties"]["name"]["enum"] = list(BUILTIN_ANALYZERS)
    analyzers["items"] = {"anyOf": [{"type": "string", "enum": list(BUILTIN_ANALYZERS)}, spec]}
    schema["properties"]["timeframe"] = {
        "description": "MT5 timeframe by code (16408) or by name (D1).",
        "anyOf": [
            {"type": "integer", "enum": [t.value for t in Timeframe]},
            {"type": "string", "enum": [t.name for t in Timeframe]},
        ],
    }
    return schema


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with every `{"$ref": "#/$defs/X"}` replaced by a copy of definition X."""
    if isinstance(node, list):
        return [_inlined(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _inlined(definitions[ref.removeprefix("#/$defs/")], definitions)
    return {key: _inlined(value, definitions) for key, value in node.items()}


def config_document(settings: Settings) -> dict[str, Any]:
    """The `backtest://config` resource: everything a caller needs to write a valid request."""
    schema = config_input_schema()
    required = list(schema.get("required", []))
    optional = {
        name: prop.get("default", {} if name == "params" else None)
        for name, prop in schema["properties"].items()
        if name not in required
    }
    return {
        "schema": schema,
        "required": required,
        "optional": optional,
        "rules": config_rules(),
        "timeframes": {t.name: t.value for t in Timeframe},
        "languages": {
            language: LANGUAGE_MEANINGS.get(
                language, "accepted; the run fails at once with unsupported_language"
            )
            for language in LANGUAGES
        },
        "statuses": [s.value for s in JobStatus],
        "error_types": {t.value: text for t, text in ERROR_TYPE_MEANINGS.items()},
        "limits": {
            "max_code_bytes": settings.max_code_bytes,
            "max_timeout_seconds": settings.max_timeout_seconds,
            "max_memory_mb": settings.max_memory_mb,
            "min_memory_mb": MIN_MEMORY_MB,
            "max_workers": settings.max_workers,
            "tenant_max_running": settings.effective_tenant_max_running,
            "tenant_max_queued": settings.tenant_max_queued,
            "log_cap_bytes": settings.log_cap_bytes,
            "result_cap_bytes": settings.result_cap_bytes,
        },
        "tool_output": {
            "equity_curve_points_inline": INLINE_EQUITY_POINTS,
            "trades_inline": INLINE_TRADES,
            "log_chars_inline": INLINE_LOG_CHARS,
            "orders_page_max": ORDERS_PAGE_MAX,
            "full": "read_backtest and get_backtest_status take full=true for the whole result",
        },
    }

"""The package's one exception root, and the closed set of error types a failed run carries.

A strategy's failure is data (a `RunError` inside a failed job), an infrastructure failure is
an exception (`SandboxError`), translated from docker-py's errors at the sandbox boundary.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Why a run failed (docs/interface.md section 2); decided by the host, never the strategy."""

    SYNTAX_ERROR = "syntax_error"  # the code does not compile; found before any container
    RUNTIME_ERROR = "runtime_error"  # the strategy raised, or defines no usable Strategy
    DATA_ERROR = "data_error"  # no data, too few bars, or a malformed data file
    TIMEOUT = "timeout"  # the host's clock passed the limit; the container was killed
    MEMORY_LIMIT = "memory_limit"  # the kernel OOM-killed the container
    CRASHED = "crashed"  # the process died without a result (signal, os._exit, segfault)
    RESULT_INVALID = "result_invalid"  # the result handed back is oversized or breaks the schema
    SANDBOX_ERROR = "sandbox_error"  # infrastructure: no daemon, no image, no container
    UNSUPPORTED_LANGUAGE = "unsupported_language"  # accepted by the schema, not runnable
    UNSUPPORTED_FEATURE = "unsupported_feature"  # a verified run cannot honour it; fast can


# What each type means, as the backtest://config resource and the docs tell it.
ERROR_TYPE_MEANINGS: dict[ErrorType, str] = {
    ErrorType.SYNTAX_ERROR: "the code does not compile (found before any container starts); "
    "details has line and column",
    ErrorType.RUNTIME_ERROR: "the strategy raised, or defines no usable backtrader.Strategy "
    "subclass; details has the exception type and a traceback cut to the user's code",
    ErrorType.DATA_ERROR: "no data for symbol/timeframe/range, too few bars, or a malformed "
    "data file",
    ErrorType.TIMEOUT: "the wall-clock limit passed; the container was killed",
    ErrorType.MEMORY_LIMIT: "the container was OOM-killed",
    ErrorType.CRASHED: "the process died without a result (signal, os._exit, segfault)",
    ErrorType.RESULT_INVALID: "the result the sandbox handed back is oversized or breaks the "
    "schema",
    ErrorType.SANDBOX_ERROR: "infrastructure: no Docker daemon, runner image missing, "
    "container could not start, or the server was interrupted twice during the run",
    ErrorType.UNSUPPORTED_LANGUAGE: "language is accepted by the schema but not runnable "
    "(mq5 today)",
    ErrorType.UNSUPPORTED_FEATURE: "the strategy uses what a verified run cannot honour "
    "(cheat-on-open, next_open, timers, Order.Historical, its own broker settings or data "
    "feeds); details.feature names it, and mode fast runs it",
}


class BacktestSandboxError(Exception):
    """Root of every exception this package raises on purpose."""

    kind = "error"  # `type` in `data()`: what a caller can branch on

    def data(self) -> dict[str, Any]:
        """The machine-readable form of this error (a tool error's structured content)."""
        return {"type": self.kind, "field": None, "rule": str(self)}


class SandboxError(BacktestSandboxError):
    """The sandbox infrastructure failed: Docker unreachable, image missing, start refused."""

    kind = "sandbox_error"


class ImageBuildError(SandboxError):
    """The runner image could not be built."""


class DataError(BacktestSandboxError):
    """Market data is missing or malformed; the message names the file and the row."""

    kind = "data_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class InvalidRequest(BacktestSandboxError):
    """A caller's argument breaks a rule; the message names the field and the rule."""

    kind = "invalid_argument"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def data(self) -> dict[str, Any]:
        return {"type": self.kind, "field": self.field, "rule": self.rule}


class NotFound(BacktestSandboxError):
    """No backtest with this id is visible to the caller."""

    kind = "not_found"

    def __init__(self, backtest_id: str) -> None:
        super().__init__(f"backtest_id: no backtest {backtest_id!r}")
        self.backtest_id = backtest_id

    def data(self) -> dict[str, Any]:
        return {"type": self.kind, "field": "backtest_id", "rule": "no backtest"}


class QuotaExceeded(BacktestSandboxError):
    """A tenant's quota refuses the request; `rule` is the setting that sets the limit."""

    kind = "quota_exceeded"

    def __init__(self, rule: str, message: str, *, limit: int, current: int) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.limit = limit
        self.current = current

    def data(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "field": None,
            "rule": self.rule,
            "limit": self.limit,
            "current": self.current,
        }

"""What the service hands back: response shapes, and results cut to a size an agent can read.

A result can hold tens of thousands of equity points and trades. Tool output lands in an
agent's context, so by default the equity curve is downsampled (keeping the first and last
points and every bucket's extremes), the trade log is cut to its first entries (the rest are
paged by `read_backtest_orders`) and the logs to their tail. `full=True` asks for everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .config import MIN_MEMORY_MB, BacktestConfig
from .errors import ErrorType
from .models import BacktestResult, DataInfo, EquityPoint, JobStatus, Provenance, RunError
from .settings import Settings
from .store import Job, JobSummary
from .timeframes import Timeframe

INLINE_EQUITY_POINTS = 500
INLINE_TRADES = 20
INLINE_LOG_CHARS = 4000
ORDERS_PAGE_MAX = 500

ChartName = Literal["equity", "drawdown"]

ERROR_TYPES: dict[ErrorType, str] = {
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
}

CONFIG_RULES: dict[str, str] = {
    "symbol": "required; non-empty; letters, digits and _ only",
    "timeframe": "required; an MT5 timeframe by code (16408) or by name ('D1')",
    "start_date": "required; ISO date; bars with start_date <= date <= end_date are used",
    "end_date": "required; ISO date after start_date",
    "initial_capital": "> 0",
    "commission": ">= 0; fraction of traded value (0.001 = 0.1 %)",
    "slippage": ">= 0; fraction of price",
    "position_size": "0.01 to 100 lots; default order size = position_size x contract_size",
    "contract_size": "> 0 (100000 for a standard FX lot)",
    "params": "a JSON object passed to the strategy's params (no NaN or Infinity)",
    "timeout_seconds": "> 0 and at most this server's max_timeout_seconds",
    "memory_mb": f">= {MIN_MEMORY_MB} and at most this server's max_memory_mb",
    "data_source": "auto (the catalog's file if there is one, else synthetic), file, synthetic",
    "*": "unknown fields are rejected",
}


# -- response shapes -------------------------------------------------------------------------


class SubmitResponse(BaseModel):
    backtest_id: str
    status: JobStatus = Field(description="queued; completed (or failed) at once on a cache hit")
    cached: bool
    error: RunError | None = Field(default=None, description="set when the run failed at once")


class ChartSeries(BaseModel):
    backtest_id: str
    name: ChartName
    unit: str = Field(description="'account currency' for equity, 'percent' for drawdown")
    points: list[EquityPoint]
    points_total: int = Field(description="points in the full series")
    downsampled: bool


class ResultView(BaseModel):
    """A `BacktestResult` (CONTRACT section 4), possibly cut down; the *_total fields say so."""

    backtest_id: str
    status: JobStatus
    metrics: dict[str, float | int | None]
    equity_curve: list[EquityPoint]
    equity_curve_total: int
    equity_curve_downsampled: bool
    trade_log: list[dict[str, Any]]
    trade_log_total: int
    trade_log_truncated: bool = Field(description="true: page with read_backtest_orders")
    logs: str
    logs_truncated: bool
    execution_time_seconds: float
    data: DataInfo
    provenance: Provenance
    warnings: list[str]
    cached: bool = False
    chart: ChartSeries | None = None


class StatusResponse(BaseModel):
    backtest_id: str
    status: JobStatus
    progress_percent: float
    estimated_completion: str | None = Field(description="ISO time; the end time once finished")
    result: ResultView | None
    error: RunError | None
    cached: bool
    language: str
    symbol: str
    timeframe: str
    created_at: str
    started_at: str | None
    finished_at: str | None


class BacktestSummary(BaseModel):
    backtest_id: str
    status: JobStatus
    symbol: str
    timeframe: str
    language: str
    cached: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress_percent: float
    error_type: ErrorType | None


class ListResponse(BaseModel):
    backtests: list[BacktestSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null at end")


class OrdersResponse(BaseModel):
    backtest_id: str
    orders: list[dict[str, Any]]
    total: int
    start: int
    end: int = Field(description="index after the last order returned")
    next_start: int | None = Field(description="start of the next page; null at the end")


class CancelResponse(BaseModel):
    backtest_id: str
    status: JobStatus


class DeleteResponse(BaseModel):
    backtest_id: str
    deleted: bool


class QueueStats(BaseModel):
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int
    total: int
    workers: int = Field(description="worker slots: at most this many containers run at once")
    workers_busy: int
    cache_hits: int
    avg_execution_seconds: float | None
    avg_queue_wait_seconds: float | None


# -- series ----------------------------------------------------------------------------------


def downsample(points: Sequence[EquityPoint], max_points: int) -> list[EquityPoint]:
    """At most `max_points` of `points`, in order: the first, the last, and the lowest and
    highest point of each of equal buckets between them, so peaks and troughs survive."""
    if len(points) <= max_points:
        return list(points)
    if max_points < 4:
        return [points[0], points[-1]][:max_points]
    inner = len(points) - 2
    buckets = (max_points - 2) // 2
    keep = {0, len(points) - 1}
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        bucket = range(lo, hi)
        keep.add(min(bucket, key=lambda i: points[i].value))
        keep.add(max(bucket, key=lambda i: points[i].value))
    return [points[i] for i in sorted(keep)]


def drawdown(points: Sequence[EquityPoint]) -> list[EquityPoint]:
    """Percent below the running peak at each point (0 at a new high, negative below)."""
    series: list[EquityPoint] = []
    peak = float("-inf")
    for point in points:
        peak = max(peak, point.value)
        value = 0.0 if peak <= 0 else round((point.value / peak - 1.0) * 100.0, 6)
        series.append(EquityPoint(timestamp=point.timestamp, value=value))
    return series


def chart_series(result: BacktestResult, name: ChartName, *, max_points: int | None) -> ChartSeries:
    """The named series of a result, downsampled to `max_points` unless that is None."""
    full = result.equity_curve if name == "equity" else drawdown(result.equity_curve)
    points = full if max_points is None else downsample(full, max_points)
    return ChartSeries(
        backtest_id=result.backtest_id,
        name=name,
        unit="account currency" if name == "equity" else "percent",
        points=points,
        points_total=len(full),
        downsampled=len(points) < len(full),
    )


# -- builders --------------------------------------------------------------------------------


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def progress_percent(job: JobSummary) -> float:
    if job.status is JobStatus.COMPLETED:
        return 100.0
    if job.status is JobStatus.QUEUED or not job.progress_total:
        return 0.0
    done = min(job.progress_done or 0, job.progress_total)
    return round(100.0 * done / job.progress_total, 1)


def estimated_completion(job: JobSummary) -> str | None:
    """For a running job, its last progress extrapolated at the pace so far; the end time of
    a finished one; None while queued or before the first progress report."""
    if job.status.is_terminal:
        return iso(job.finished_at)
    done, total = job.progress_done, job.progress_total
    if job.status is not JobStatus.RUNNING or not done or not total:
        return None
    if job.started_at is None or job.progress_at is None:
        return None
    if done >= total:
        return iso(job.progress_at)  # every bar is done; only the result is left to write
    elapsed = job.progress_at - job.started_at
    return iso(job.progress_at + elapsed * (total - done) / done)


def result_view(
    result: BacktestResult, *, cached: bool, full: bool, chart: ChartName | None = None
) -> ResultView:
    """A result as tools return it: cut to `INLINE_*` sizes unless `full`."""
    curve = result.equity_curve if full else downsample(result.equity_curve, INLINE_EQUITY_POINTS)
    trades = result.trade_log if full else result.trade_log[:INLINE_TRADES]
    logs = (
        result.logs
        if full or len(result.logs) <= INLINE_LOG_CHARS
        else result.logs[-INLINE_LOG_CHARS:]
    )
    return ResultView(
        backtest_id=result.backtest_id,
        status=result.status,
        metrics=result.metrics,
        equity_curve=curve,
        equity_curve_total=len(result.equity_curve),
        equity_curve_downsampled=len(curve) < len(result.equity_curve),
        trade_log=trades,
        trade_log_total=len(result.trade_log),
        trade_log_truncated=len(trades) < len(result.trade_log),
        logs=logs,
        logs_truncated=len(logs) < len(result.logs),
        execution_time_seconds=result.execution_time_seconds,
        data=result.data,
        provenance=result.provenance,
        warnings=result.warnings,
        cached=cached,
        chart=None
        if chart is None
        else chart_series(result, chart, max_points=None if full else INLINE_EQUITY_POINTS),
    )


def load_result(job: Job) -> BacktestResult | None:
    return None if job.result_json is None else BacktestResult.model_validate_json(job.result_json)


def load_error(job: JobSummary) -> RunError | None:
    return None if job.error_json is None else RunError.model_validate_json(job.error_json)


def job_result_view(job: Job, *, full: bool = False) -> ResultView | None:
    """The job's result as tools show it, from the view made when it was stored unless `full`
    (reading a whole result is slow for long series)."""
    if job.result_json is None:
        return None
    if full or job.view_json is None:
        result = BacktestResult.model_validate_json(job.result_json)
        return result_view(result, cached=job.cached, full=full)
    view = ResultView.model_validate_json(job.view_json)
    return view.model_copy(update={"cached": job.cached})


def status_view(job: Job, *, full: bool = False) -> StatusResponse:
    return StatusResponse(
        backtest_id=job.id,
        status=job.status,
        progress_percent=progress_percent(job),
        estimated_completion=estimated_completion(job),
        result=job_result_view(job, full=full),
        error=load_error(job),
        cached=job.cached,
        language=job.language,
        symbol=job.symbol,
        timeframe=job.timeframe,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
    )


def summary_view(job: JobSummary) -> BacktestSummary:
    error = load_error(job)
    return BacktestSummary(
        backtest_id=job.id,
        status=job.status,
        symbol=job.symbol,
        timeframe=job.timeframe,
        language=job.language,
        cached=job.cached,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        progress_percent=progress_percent(job),
        error_type=None if error is None else error.type,
    )


# -- the config document ---------------------------------------------------------------------


def config_input_schema() -> dict[str, Any]:
    """`BacktestConfig`'s JSON schema, self-contained (no $defs), with the timeframe's names.

    pydantic describes the timeframe as its integer codes only, but names are accepted too;
    and a `$ref` into `$defs` would dangle once the schema is nested in a tool's input schema.
    """
    schema = BacktestConfig.model_json_schema()
    schema.pop("$defs", None)
    schema["properties"]["timeframe"] = {
        "description": "MT5 timeframe by code (16408) or by name (D1).",
        "anyOf": [
            {"type": "integer", "enum": [t.value for t in Timeframe]},
            {"type": "string", "enum": [t.name for t in Timeframe]},
        ],
    }
    return schema


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
        "rules": CONFIG_RULES,
        "timeframes": {t.name: t.value for t in Timeframe},
        "languages": {
            "python": "a Backtrader strategy: one backtrader.Strategy subclass, or name it "
            "with a module-level STRATEGY = MyStrategy",
            "mq5": "accepted; the run fails at once with unsupported_language",
        },
        "statuses": [s.value for s in JobStatus],
        "error_types": {t.value: text for t, text in ERROR_TYPES.items()},
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

"""What the service hands back: response shapes, and results cut to a size an agent can read.

A result can hold hundreds of thousands of equity points and trades. Tool output lands in an
agent's context, so by default the equity curve is downsampled (keeping the first and last
points and every bucket's extremes), the trade log is cut to its last entries (the rest are
paged by `read_backtest_orders`) and the logs to their tail. `full=True` asks for everything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.metrics import drawdown_pct
from backtest_sandbox.domain.models import (
    BacktestResult,
    DataInfo,
    EquityPoint,
    Integrity,
    JobStatus,
    Provenance,
    RunError,
)

from .store import JobSummary

# What a status answer carries of a result (docs/interface.md section 12): under 16 KiB.
INLINE_EQUITY_POINTS = 100
INLINE_TRADES = 20  # the last ones
INLINE_LOG_CHARS = 2000  # the tail
INLINE_ANALYZERS_BYTES = 3 * 1024  # analyzers' values, as compact JSON; the rest are named
INLINE_ANALYZER_ERROR_CHARS = 200
ORDERS_PAGE_MAX = 500

ChartName = Literal["equity", "drawdown"]

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
    """A `BacktestResult` (docs/interface.md section 4), possibly cut down; the *_total fields
    say so."""

    backtest_id: str
    status: JobStatus
    metrics: dict[str, float | int | None]
    equity_curve: list[EquityPoint]
    equity_curve_total: int
    equity_curve_downsampled: bool
    trade_log: list[dict[str, Any]]
    trade_log_total: int
    trade_log_truncated: bool = Field(description="true: page with read_backtest_orders")
    # Stored summaries from before the order log existed read as no orders.
    order_log: list[dict[str, Any]] = Field(
        default_factory=list, description="every order's life; only with full=true"
    )
    order_log_total: int = 0
    order_log_truncated: bool = Field(
        False, description="true: page with read_backtest_orders(kind='orders')"
    )
    open_positions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="positions still open after the last bar: symbol, size, price (average "
        "entry), close (the last), pnl (unrealised at that close)",
    )
    logs: str
    logs_truncated: bool
    execution_time_seconds: float
    data: DataInfo
    provenance: Provenance
    warnings: list[str]
    integrity: Integrity = Field(default_factory=Integrity)  # stored before: fast
    analyzers: dict[str, Any] = Field(
        default_factory=dict,
        description="get_analysis() of each analyzer the run added (config.analyzers, and "
        "those the strategy registered), by name, as JSON; computed in the strategy's "
        "process, so unverified; without full=true only those that fit a few KiB",
    )
    analyzers_omitted: list[str] = Field(
        default_factory=list,
        description="analyzers whose values this compact answer leaves out (full=true has them)",
    )
    analyzer_errors: dict[str, str] = Field(
        default_factory=dict,
        description="analyzers that returned no value, and why (raised, too large, ...)",
    )
    analyzers_source: Literal["strategy_process"] | None = Field(
        None, description="where the analyzers ran; null when none did"
    )
    analyzers_verified: bool = Field(
        False, description="always false: no referee recomputes an analyzer"
    )
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
    kind: Literal["backtest", "sweep"] = Field(
        "backtest", description="a sweep's id works with get_sweep_status, cancel and delete"
    )
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


OrdersKind = Literal["trades", "orders"]


class OrdersResponse(BaseModel):
    backtest_id: str
    kind: OrdersKind = Field(
        "trades",
        description="trades: closed trades, in closing order; orders: every order's life "
        "(status events from Submitted to Completed, Canceled, Expired or Margin), in "
        "creation order",
    )
    orders: list[dict[str, Any]]
    total: int
    start: int
    end: int = Field(description="index after the last entry returned")
    next_start: int | None = Field(description="start of the next page; null at the end")
    open_positions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="positions still open after the last bar (not closed trades): symbol, "
        "size, price (average entry), close (the last), pnl (unrealised at that close)",
    )


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
    workers_busy: int = Field(description="worker slots running your backtests now")
    cache_hits: int
    avg_execution_seconds: float | None
    avg_queue_wait_seconds: float | None


class Dataset(BaseModel):
    symbol: str
    timeframe: str
    first: str = Field(description="the first bar's time, ISO")
    last: str = Field(description="the last bar's time, ISO")
    bars: int


class Catalog(BaseModel):
    """The `list_data` answer and the `data://catalog` resource (docs/interface.md section 8)."""

    datasets: list[Dataset]
    synthetic_fallback: bool = Field(
        description="true: data_source auto turns a symbol without data into synthetic bars"
    )


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
    depth = drawdown_pct([point.value for point in points])
    return [
        EquityPoint(timestamp=point.timestamp, value=round(-float(d), 6) + 0.0)
        for point, d in zip(points, depth, strict=True)
    ]


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


def cut_series(series: ChartSeries, max_points: int) -> ChartSeries:
    """`series` downsampled further; `points_total` still counts the whole series."""
    points = downsample(series.points, max_points)
    return series.model_copy(
        update={"points": points, "downsampled": len(points) < series.points_total}
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
    trades = result.trade_log if full else result.trade_log[-INLINE_TRADES:]
    orders = result.order_log if full else []  # paged with read_backtest_orders
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
        order_log=orders,
        order_log_total=len(result.order_log),
        order_log_truncated=len(orders) < len(result.order_log),
        open_positions=result.open_positions,
        logs=logs,
        logs_truncated=len(logs) < len(result.logs),
        execution_time_seconds=result.execution_time_seconds,
        data=result.data,
        provenance=result.provenance,
        warnings=result.warnings,
        integrity=result.integrity,
        **_analyzers_view(result, full),
        cached=cached,
        chart=None
        if chart is None
        else chart_series(result, chart, max_points=None if full else INLINE_EQUITY_POINTS),
    )


def _analyzers_view(result: BacktestResult, full: bool) -> dict[str, Any]:
    """The analyzers' fields of a view: all of them when `full`; else, in order, the values
    and then the errors (cut short) that fit INLINE_ANALYZERS_BYTES together, the others
    named in `analyzers_omitted`."""
    if full:
        shown, errors, omitted = dict(result.analyzers), dict(result.analyzer_errors), []
    else:
        shown, left = _fitting(result.analyzers, INLINE_ANALYZERS_BYTES)
        cut = {
            name: text[:INLINE_ANALYZER_ERROR_CHARS]
            for name, text in result.analyzer_errors.items()
        }
        errors, _ = _fitting(cut, left)
        omitted = [name for name in [*result.analyzers, *cut] if name not in shown | errors]
    return {
        "analyzers": shown,
        "analyzers_omitted": omitted,
        "analyzer_errors": errors,
        "analyzers_source": result.analyzers_source,
        "analyzers_verified": result.analyzers_verified,
    }


def _fitting(entries: dict[str, Any], budget: int) -> tuple[dict[str, Any], int]:
    """The entries, in order, whose compact JSON fits in `budget` bytes, and what is left."""
    kept = {}
    for name, value in entries.items():
        size = len(name) + len(json.dumps(value, separators=(",", ":")))
        if size <= budget:
            kept[name] = value
            budget -= size
    return kept, budget


def load_error(job: JobSummary) -> RunError | None:
    return None if job.error_json is None else RunError.model_validate_json(job.error_json)


def status_view(job: JobSummary, result: ResultView | None) -> StatusResponse:
    return StatusResponse(
        backtest_id=job.id,
        status=job.status,
        progress_percent=progress_percent(job),
        estimated_completion=estimated_completion(job),
        result=result,
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
        kind="sweep" if job.kind == "sweep" else "backtest",
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

"""Job statuses and the shapes the host hands to users (CONTRACT.md sections 2 and 4)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import ErrorType


class JobStatus(StrEnum):
    """Where a backtest is in its life."""

    QUEUED = "queued"  # accepted, waiting for a worker slot
    RUNNING = "running"  # a container has been started for it
    COMPLETED = "completed"  # finished with a valid result
    FAILED = "failed"  # finished with an `error` of a type from `ErrorType`
    CANCELLED = "cancelled"  # stopped on request; its container was killed

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class RunError(BaseModel):
    """Why a run failed: a type from the closed set, a message for people, details for machines."""

    model_config = ConfigDict(extra="forbid")

    type: ErrorType
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class EquityPoint(BaseModel):
    timestamp: str
    value: float


class DataInfo(BaseModel):
    source: str  # "file" or "synthetic"
    bars: int
    first: str
    last: str
    sha256: str
    path: str | None = None


class Provenance(BaseModel):
    code_sha256: str
    config_sha256: str
    runner_image: str
    backtrader_version: str | None = None
    runtime: str | None = None
    container_id: str | None = None  # the single-use container that ran it (warm or cold)


class BacktestResult(BaseModel):
    """A completed run as users read it (CONTRACT.md section 4)."""

    backtest_id: str
    status: JobStatus
    metrics: dict[str, float | int | None]
    equity_curve: list[EquityPoint]
    trade_log: list[dict[str, Any]]
    logs: str
    execution_time_seconds: float
    data: DataInfo
    provenance: Provenance
    warnings: list[str] = Field(default_factory=list)


class RunOutcome(BaseModel):
    """What one sandboxed run ended with: exactly one of `result` and `error` is set."""

    status: JobStatus
    result: BacktestResult | None = None
    error: RunError | None = None
    logs: str = ""
    execution_time_seconds: float = 0.0

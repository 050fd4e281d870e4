"""Job statuses and the shapes the host hands to users (docs/interface.md sections 2 and 4)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

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


class FeedInfo(BaseModel):
    """Where one more feed of a run (an extra symbol) or its benchmark came from."""

    symbol: str
    source: str  # "file" or "synthetic" (a benchmark is always "file")
    # An extra symbol: the run's bars. The benchmark: its own bars in the range and the last
    # one before it (its last known close at the run's first bar).
    bars: int
    sha256: str  # of these bars in the normalised CSV form
    path: str | None = None


class DataInfo(BaseModel):
    """The bars of the run's `symbol` (feed 0), and the other feeds' sources."""

    source: str  # "file" or "synthetic"
    bars: int
    first: str
    last: str
    sha256: str
    path: str | None = None
    # The extra symbols' feeds, in config order, on the same timestamps as feed 0.
    extra_symbols: list[FeedInfo] = Field(default_factory=list)
    benchmark: FeedInfo | None = None


class Provenance(BaseModel):
    code_sha256: str
    config_sha256: str
    runner_image: str
    backtrader_version: str | None = None
    runtime: str | None = None
    container_id: str | None = None  # the single-use container that ran it
    warm: bool = False  # true: taken from the warm pool; false: started for this run


class Integrity(BaseModel):
    """Whose numbers a result publishes (docs/interface.md section 7)."""

    mode: str = "fast"  # the config's mode
    verified: bool = False  # true only when a referee that runs no user code computed them
    # Whether the strategy process reported the same numbers; null when nothing was compared.
    claim_matches: bool | None = None
    events: int = 0  # orders and cancels the strategy committed
    rejected_events: int = 0  # of those, the ones the trusted side refused


class BacktestResult(BaseModel):
    """A completed run as users read it (docs/interface.md section 4)."""

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
    # Results stored before verified mode existed were all fast runs: the default says so.
    integrity: Integrity = Field(default_factory=Integrity)
    # Every order's life, in creation order (jobs/order_log.py), and the positions still open
    # after the last bar. Results stored before these existed have neither.
    order_log: list[dict[str, Any]] = Field(default_factory=list)
    open_positions: list[dict[str, Any]] = Field(default_factory=list)
    # What the run's analyzers returned (config.analyzers and those the strategy registered
    # itself), by name, and why any returned nothing. Computed in the strategy's process in
    # both modes (the referee runs none): never verified, whatever `integrity` says.
    analyzers: dict[str, Any] = Field(default_factory=dict)
    analyzer_errors: dict[str, str] = Field(default_factory=dict)
    analyzers_source: Literal["strategy_process"] | None = None  # None: no analyzer ran
    analyzers_verified: bool = False


class RunOutcome(BaseModel):
    """What one run ended with: exactly one of `result` and `error` is set (neither when
    cancelled). The last link of the chain Observation -> Verdict -> RunOutcome
    (docs/architecture.md, "The end of a run")."""

    status: JobStatus
    result: BacktestResult | None = None
    error: RunError | None = None
    logs: str = ""
    execution_time_seconds: float = 0.0
    # The key this outcome may be cached under, from the data the run really read; None: the
    # run got no further than checks that need no key, or its data could not be named.
    cache_key: str | None = None
    # Whether the run's container came from the warm pool; None when no container ran. A
    # completed result says the same in `provenance.warm`.
    warm: bool | None = None

"""A fake `engine.Engine` for the service tests: same contract, no Docker.

What a run does is read from markers in the strategy code, so that a test says what it
wants where it submits:

    # fail: runtime_error      ends failed with that error type
    # block                    runs until cancelled, or until `release` is set
    # bars: 2000               the equity curve's length (default 10)
    # trades: 250              closed trades in the trade log (default 3)
    # orders: 600              orders in the order log, and one open position (default 0)
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from backtest_sandbox.domain.errors import ErrorType, SandboxError
from backtest_sandbox.domain.models import (
    BacktestResult,
    DataInfo,
    EquityPoint,
    JobStatus,
    Provenance,
    RunError,
    RunOutcome,
)
from backtest_sandbox.jobs.engine import RunRequest

NO_DATA_SYMBOL = "NODATA"  # cache_key() returns None for it, as the engine does for no data


def marker(code: str, name: str) -> str | None:
    found = re.search(rf"^# {name}(?::\s*(\S+))?\s*$", code, re.MULTILINE)
    if found is None:
        return None
    return found.group(1) or ""


def make_result(
    backtest_id: str, bars: int = 10, trades: int = 3, orders: int = 0
) -> BacktestResult:
    """A small, deterministic result: a wave with one deep trough in the middle."""
    curve = []
    for i in range(bars):
        value = 10000.0 + 10.0 * i + (500.0 if i % 7 == 3 else 0.0)
        if i == bars // 2:
            value = 9000.0
        day = 1 + i % 28
        month = 1 + (i // 28) % 12
        year = 2000 + i // (28 * 12)
        curve.append(EquityPoint(timestamp=f"{year}-{month:02d}-{day:02d}T00:00:00", value=value))
    trade_log = [
        {"entry_time": curve[0].timestamp, "exit_time": curve[-1].timestamp, "pnl": float(i)}
        for i in range(trades)
    ]
    order_log = [
        {"ref": i + 1, "side": "buy", "status": "Completed", "created": curve[0].timestamp}
        for i in range(orders)
    ]
    positions = [{"symbol": "SPY", "size": 1.0, "price": 100.0, "close": 101.0, "pnl": 1.0}]
    return BacktestResult(
        backtest_id=backtest_id,
        status=JobStatus.COMPLETED,
        metrics={"final_value": curve[-1].value if curve else 10000.0, "sharpe_ratio": None},
        equity_curve=curve,
        trade_log=trade_log,
        order_log=order_log,
        open_positions=positions if orders else [],
        logs="x" * 5000,
        execution_time_seconds=0.5,
        data=DataInfo(
            source="synthetic", bars=bars, first="2000-01-01", last="2000-12-31", sha256="0" * 64
        ),
        provenance=Provenance(code_sha256="1" * 64, config_sha256="2" * 64, runner_image="fake"),
        warnings=[],
    )


class FakeEngine:
    """Obeys `Engine`'s contract: `run` blocks, is thread-safe and never raises."""

    def __init__(self) -> None:
        self.release = threading.Event()  # lets every `# block` run complete
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.runs: list[str] = []  # backtest ids, in the order their runs started
        self.started = threading.Condition(self.lock)
        self.orphans_removed = 0
        self.orphans_error: SandboxError | None = None
        self.closed = False
        self.on_run: Callable[[RunRequest], None] | None = None

    def cache_key(self, request: RunRequest) -> str | None:
        return self._key(request)

    def _key(self, request: RunRequest) -> str | None:
        if request.config.symbol == NO_DATA_SYMBOL:
            return None
        material = "|".join(
            [request.code, request.language, request.config.canonical_json(), request.tenant]
        )
        return hashlib.sha256(material.encode()).hexdigest()

    def run(
        self,
        request: RunRequest,
        *,
        cancel: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> RunOutcome:
        cancel = cancel or threading.Event()
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.runs.append(request.backtest_id)
            self.started.notify_all()
        try:
            if self.on_run is not None:
                self.on_run(request)
            outcome = self._outcome(request, cancel, on_progress)
            # As the real engine: the key of the data the run read (here, unchanged since submit).
            outcome.cache_key = self._key(request)
            return outcome
        finally:
            with self.lock:
                self.running -= 1
                self.started.notify_all()

    def _outcome(
        self,
        request: RunRequest,
        cancel: threading.Event,
        on_progress: Callable[[int, int], None] | None,
    ) -> RunOutcome:
        code = request.code
        bars = int(marker(code, "bars") or 10)
        if marker(code, "block") is not None:
            if on_progress is not None:
                on_progress(bars // 2, bars)
            while not (cancel.is_set() or self.release.is_set()):
                time.sleep(0.005)
        if cancel.is_set():
            return RunOutcome(status=JobStatus.CANCELLED)
        failure = marker(code, "fail")
        if failure:
            error = RunError(type=ErrorType(failure), message=f"fake {failure}", details={})
            return RunOutcome(status=JobStatus.FAILED, error=error)
        if on_progress is not None:
            on_progress(bars, bars)
        trades = int(marker(code, "trades") or 3)
        orders = int(marker(code, "orders") or 0)
        return RunOutcome(
            status=JobStatus.COMPLETED,
            result=make_result(request.backtest_id, bars, trades, orders),
        )

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no run is in progress."""
        with self.lock:
            assert self.started.wait_for(lambda: self.running == 0, timeout), "runs still going"

    def wait_started(self, count: int, timeout: float = 5.0) -> None:
        """Block until `count` runs have started in all."""
        with self.started:
            if not self.started.wait_for(lambda: len(self.runs) >= count, timeout):
                raise TimeoutError(f"{len(self.runs)} of {count} runs started")

    def remove_orphans(self) -> int:
        if self.orphans_error is not None:
            raise self.orphans_error
        self.orphans_removed += 1
        return 0

    def warm_up(self) -> None:
        pass  # no referees: nothing runs verified here

    def close(self) -> None:
        self.closed = True


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "symbol": "SPY",
        "timeframe": "D1",
        "start_date": "2020-01-01",
        "end_date": "2020-12-31",
    }
    return base | overrides

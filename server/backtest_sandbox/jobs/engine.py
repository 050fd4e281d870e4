"""The engine: one backtest request in, one `RunOutcome` out. Shared by the CLI and the scheduler.

It wires one run together: the host-side checks (language, compile), the data catalog (the
bars, prepared once), the sandbox (one `SandboxJob`, one `Verdict`), and the metrics the host
computes from the sandbox's claim. It is thread-safe: the scheduler calls `run` from several
worker threads at once.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from backtest_sandbox.data import catalog
from backtest_sandbox.domain.code import (
    STRATEGY_FILENAME,
    Language,
    check_syntax,
    unsupported_language,
)
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError, ErrorType, SandboxError
from backtest_sandbox.domain.metrics import compute_metrics
from backtest_sandbox.domain.models import (
    BacktestResult,
    EquityPoint,
    Integrity,
    JobStatus,
    Provenance,
    RunError,
    RunOutcome,
)
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.image import build as image
from backtest_sandbox.sandbox.claim import CompletedClaim, InvalidClaim, parse_claim
from backtest_sandbox.sandbox.runner import ProgressCallback, SandboxJob, SandboxRunner
from backtest_sandbox.sandbox.supervisor import Verdict
from backtest_sandbox.verify.gate import BarGate, step_rows
from backtest_sandbox.verify.referee import GateLimits, RefereePool

from . import order_log
from .cache import cache_key
from .sweep_data import SweepData

# The referee gets at least this long to finish after the strategy side ends (it follows one
# bar behind, so it normally needs a fraction of a second).
REFEREE_MIN_SECONDS = 30.0


@dataclass(frozen=True)
class RunRequest:
    """One backtest to run. `tenant` scopes caching and visibility."""

    backtest_id: str
    code: str
    config: BacktestConfig
    language: Language = "python"
    tenant: str = "local"
    # The sweep the run belongs to: its combinations may share a container (sandbox/session.py).
    session: str | None = None

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()


class Engine:
    """Runs backtests in the sandbox. One per process; `run` may be called from many threads."""

    def __init__(self, settings: Settings, runner: SandboxRunner | None = None) -> None:
        self.settings = settings
        self.runner = runner or SandboxRunner(settings)
        self._referees: RefereePool | None = None  # made by warm_up or the first verified run
        self._referees_lock = threading.Lock()
        self._sweep_data = SweepData()
        self._gate_limits = GateLimits(
            max_message_bytes=settings.verified_max_message_bytes,
            max_events_per_bar=settings.verified_max_events_per_bar,
            bar_seconds=settings.verified_bar_seconds,
        )

    @functools.cached_property
    def image_tag(self) -> str:
        """The runner image this process runs (a hash of its sources: read once, as the
        sandbox reads it once)."""
        return image.expected_tag(self.settings)

    def cache_key(self, request: RunRequest) -> str | None:
        """The key a run of `request` would be cached under, from the data it would read now.

        Cheap: no bars are read or generated (see `catalog.data_identity`). None when the
        catalog cannot say (the run will then fail with data_error).
        """
        try:
            identity = catalog.data_identity(request.config, self.settings.data_dir)
        except DataError:
            return None
        return cache_key(request, identity, self.image_tag)

    def run(
        self,
        request: RunRequest,
        *,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RunOutcome:
        """Run one backtest to a terminal outcome. Blocks; never raises for a strategy's fault.

        Infrastructure failures come back as a failed outcome of type sandbox_error, so that a
        worker thread never dies. Setting `cancel` kills the container at once and gives a
        `cancelled` outcome. The outcome's `cache_key` names the data the run really used.
        """
        started = time.monotonic()
        try:
            outcome = self._run(request, cancel, on_progress)
        except SandboxError as e:
            outcome = _failed(ErrorType.SANDBOX_ERROR, str(e))
        outcome.execution_time_seconds = round(time.monotonic() - started, 3)
        if outcome.result is not None:
            outcome.result.execution_time_seconds = outcome.execution_time_seconds
        return outcome

    def _run(
        self,
        request: RunRequest,
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
    ) -> RunOutcome:
        refused = unsupported_language(request.language) or check_syntax(request.code)
        if refused is not None:  # decided without data: the key of the data now serves
            return RunOutcome(
                status=JobStatus.FAILED, error=refused, cache_key=self.cache_key(request)
            )
        config = request.config
        try:
            data = self._sweep_data.prepare(config, self.settings.data_dir, request.session)
        except DataError as e:
            outcome = _failed(ErrorType.DATA_ERROR, str(e), **e.details)
            if e.details.get("rule") != "changed":  # a race, not a property of the data
                outcome.cache_key = self.cache_key(request)
            return outcome
        # Verified: the bars go through the gate, never into /job.
        gate = self._bar_gate(request, data) if config.mode == "verified" else None
        try:
            return self._run_prepared(request, data, gate, cancel, on_progress)
        finally:
            if gate is not None:
                gate.referee.abort()  # done with it, or the run ended without a result to check

    def _run_prepared(
        self,
        request: RunRequest,
        data: catalog.PreparedData,
        gate: BarGate | None,
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
    ) -> RunOutcome:
        config = request.config
        inputs = {} if gate is not None else _feed_files(data)
        verdict = self.runner.run(
            SandboxJob(
                backtest_id=request.backtest_id,
                spec=_job_spec(request, data),
                inputs=inputs,
                memory_mb=config.memory_mb,
                timeout_seconds=config.timeout_seconds,
                expected_bars=data.bars,
                conversation=gate,
                session=_session_key(request),
            ),
            cancel=cancel,
            on_progress=on_progress,
        )
        if verdict.claim is None:
            return RunOutcome(
                status=verdict.status, error=verdict.error, logs=verdict.logs, warm=verdict.warm
            )
        warnings = list(data.warnings)
        if verdict.logs_cut:
            half = self.settings.log_cap_bytes // 2
            warnings.append(
                f"logs_truncated: the output was longer than {self.settings.log_cap_bytes} "
                f"bytes; its first and last {half} bytes are kept"
            )
        if gate is None:
            published, integrity = verdict.claim, Integrity(mode="fast")
        else:
            published, integrity = self._referee_numbers(request, data, verdict, gate)
            warnings.extend(_integrity_warnings(verdict.claim, published, integrity))
        result = _result(request, data, verdict, published, integrity, warnings)
        return RunOutcome(
            status=JobStatus.COMPLETED,
            result=result,
            logs=verdict.logs,
            cache_key=cache_key(request, data.identity, self.image_tag),
            warm=verdict.warm,
        )

    def _bar_gate(self, request: RunRequest, data: catalog.PreparedData) -> BarGate:
        """The gate of a verified run, with a referee already handed its bars and broker."""
        referee = self._referee_pool().take()
        referee.begin(
            {
                "protocol": 1,
                "timeframe": request.config.timeframe.name,
                "broker": _broker(request.config),
                "feeds": [
                    {"name": feed.symbol, "bars_csv": feed.csv_bytes.decode()}
                    for feed in data.feeds
                ],
            }
        )
        steps = step_rows([feed.csv_bytes for feed in data.feeds])
        return BarGate(
            steps, referee, self._gate_limits, feeds=len(data.feeds), spin=_spins(request)
        )

    def _referee_numbers(
        self,
        request: RunRequest,
        data: catalog.PreparedData,
        verdict: Verdict,
        gate: BarGate,
    ) -> tuple[CompletedClaim, Integrity]:
        """The referee's result for a run whose strategy side completed, and the integrity
        block that compares the two.

        Raises:
            SandboxError: the referee failed or its answer is not a valid result (it is our
                own code: that is a fault of the host's side, never the strategy's).
        """
        timeout = max(REFEREE_MIN_SECONDS, request.config.timeout_seconds)
        rejected, raw = gate.referee.finish(gate.released, timeout)
        try:
            published = parse_claim(raw, expected_bars=data.bars)
        except InvalidClaim as e:
            raise SandboxError(f"the referee's result is invalid: {e}") from None
        if not isinstance(published, CompletedClaim):
            raise SandboxError("the referee did not complete its replay")
        claim = verdict.claim
        assert claim is not None
        refused = gate.rejected_events + rejected
        integrity = Integrity(
            mode="verified",
            verified=True,
            claim_matches=_claim_matches(claim, published, refused=refused > 0),
            events=gate.events,
            rejected_events=refused,
        )
        return published, integrity

    def warm_up(self) -> None:
        """Start the referees' fork server (it imports Backtrader, ~0.5 s of CPU, once) in the
        background, so that the first verified run does not wait for it."""
        self._referee_pool().warm()

    def _referee_pool(self) -> RefereePool:
        with self._referees_lock:
            if self._referees is None:
                self._referees = RefereePool()
            return self._referees

    def remove_orphans(self) -> int:
        """Remove every container of this project whose owner died; before any run starts.

        Raises:
            SandboxError: the daemon cannot be reached.
        """
        return self.runner.remove_orphans()

    def close(self) -> None:
        """Remove the warm pool's containers, stop the idle referees, release the client."""
        self.runner.close()
        with self._referees_lock:
            if self._referees is not None:
                self._referees.close()


def _claim_matches(claim: CompletedClaim, published: CompletedClaim, *, refused: bool) -> bool:
    """Every number alike (the version string and the analyzers aside); == on the models, not
    on dumps of them: a long run has tens of thousands of equity points.

    When the trusted side refused events, the strategy's order log has orders the referee
    never placed (an order over its exposure cap: the strategy's own broker answered Margin):
    the logs then differ by design, and the rest must still be equal.
    """
    # The referee runs no analyzer: the strategy's are reported apart, labelled unverified.
    ignored: dict[str, Any] = {"backtrader_version": "", "analyzers": {}, "analyzer_errors": {}}
    if refused:
        ignored |= {"orders": [], "orders_total": 0}
    return claim.model_copy(update=ignored) == published.model_copy(update=ignored)


def _integrity_warnings(
    claim: CompletedClaim, published: CompletedClaim, integrity: Integrity
) -> list[str]:
    warnings = []
    if integrity.claim_matches is False:
        warnings.append(
            "claim_mismatch: the strategy process reported a final value of "
            f"{claim.final_value:.2f}, {len(claim.trades)} closed trades and "
            f"{claim.orders_total} orders; the referee, which runs no user code, computed "
            f"{published.final_value:.2f}, {len(published.trades)} and "
            f"{published.orders_total} from the same bars and the orders the strategy "
            "committed. The referee's numbers are the ones published"
        )
    if claim.analyzers or claim.analyzer_errors:
        warnings.append(
            "unverified_analyzers: the analyzers' results ("
            + ", ".join([*claim.analyzers, *claim.analyzer_errors])
            + ") were computed in the strategy's own process; a strategy can forge them; the "
            "published metrics are the referee's"
        )
    if integrity.rejected_events:
        warnings.append(
            f"rejected_events: {integrity.rejected_events} of the strategy's "
            f"{integrity.events} orders and cancels were refused (malformed, an unknown order "
            "ref, before the first bar, or over one of the referee's caps); the published "
            "numbers leave them out"
        )
    return warnings


def _result(
    request: RunRequest,
    data: catalog.PreparedData,
    verdict: Verdict,
    claim: CompletedClaim,
    integrity: Integrity,
    warnings: list[str],
) -> BacktestResult:
    config = request.config
    trades = [trade.model_dump() for trade in claim.trades]
    # The analyzers ran in the strategy's process: its claim has them, the referee's has none.
    analyzed = verdict.claim if verdict.claim is not None else claim
    if analyzed.analyzer_errors:
        warnings.append(
            f"analyzer_errors: {len(analyzed.analyzer_errors)} analyzer(s) returned no result "
            f"({', '.join(analyzed.analyzer_errors)}); analyzer_errors says why"
        )
    if claim.open_trades:
        warnings.append(
            f"{claim.open_trades} trade(s) still open at the end are not in trade_log "
            "(open_positions has their positions)"
        )
    if claim.orders_total > len(claim.orders):
        warnings.append(
            f"order_log_truncated: the run placed {claim.orders_total} orders; the order log "
            f"holds the first {len(claim.orders)} to be notified"
        )
    # The run's bars, or its first ones when the strategy stopped early (runstop): one
    # close of the symbol, and of the benchmark, per equity point.
    bars = len(claim.equity_curve)
    metrics = compute_metrics(
        [value for _, value in claim.equity_curve],
        trades,
        initial_capital=config.initial_capital,
        periods_per_year=config.timeframe.periods_per_year,
        bars_in_market=claim.bars_in_market,
        closes=data.frame["close"].to_numpy()[:bars].tolist(),
        benchmark_closes=(None if data.benchmark is None else list(data.benchmark_closes[:bars])),
    )
    return BacktestResult(
        backtest_id=request.backtest_id,
        status=JobStatus.COMPLETED,
        metrics=metrics,
        equity_curve=[EquityPoint(timestamp=t, value=v) for t, v in claim.equity_curve],
        trade_log=trades,
        order_log=order_log.order_entries(claim.orders),
        open_positions=order_log.position_entries(claim.open_positions),
        logs=verdict.logs,
        execution_time_seconds=0.0,
        data=data.info(),
        provenance=Provenance(
            code_sha256=request.code_sha256,
            config_sha256=config.sha256(),
            runner_image=verdict.image or "",
            backtrader_version=claim.backtrader_version,
            runtime=verdict.runtime,
            container_id=verdict.container_id,
            warm=verdict.warm,
        ),
        warnings=warnings,
        integrity=integrity,
        analyzers=analyzed.analyzers,
        analyzer_errors=analyzed.analyzer_errors,
        analyzers_source=(
            "strategy_process" if analyzed.analyzers or analyzed.analyzer_errors else None
        ),
        analyzers_verified=False,
    )


def _broker(config: BacktestConfig) -> dict[str, Any]:
    """The broker of the job spec (runner_image/PROTOCOL.md), the referee's the same."""
    return {
        "initial_capital": config.initial_capital,
        "commission": config.commission,
        "slippage": config.slippage,
        "stake": config.stake,
        "commission_type": config.commission_type,
        "margin": config.margin,
        "mult": config.mult,
        "leverage": config.leverage,
        "coc": config.coc,
        "cheat_on_open": config.cheat_on_open,
        "sizer": config.sizer,
        "sizer_params": config.sizer_params,
    }


def _job_spec(request: RunRequest, data: catalog.PreparedData) -> dict[str, Any]:
    """The job spec of runner_image/PROTOCOL.md."""
    config = request.config
    fast = config.mode == "fast"
    # Fast: one file per feed, named relative to the job's directory (/job, or its run's
    # directory in a session); verified: the names only (the bars come through the gate).
    feeds = [
        {"name": feed.symbol, "path": name} if fast else {"name": feed.symbol}
        for feed, name in zip(data.feeds, _feed_files(data), strict=True)
    ]
    bars: dict[str, Any] = {"timeframe": config.timeframe.name, "bars": data.bars, "feeds": feeds}
    if fast:
        bars["path"] = feeds[0]["path"]  # feed 0's, as in a spec of one feed
    return {
        "protocol": 1,
        "mode": config.mode,
        "code": request.code,
        "filename": STRATEGY_FILENAME,
        "params": config.params,
        "broker": _broker(config),
        "analyzers": [spec.model_dump() for spec in config.analyzers],
        "data": bars,
        "spin": _spins(request),
    }


def _spins(request: RunRequest) -> bool:
    """Whether a verified run's two sides poll for each other's message before they sleep:
    a single run's latency gains, a sweep's runs already fill every core (pipefeed.py)."""
    return request.session is None


def _session_key(request: RunRequest) -> str | None:
    """Runs may share a container only with the same tenant's same code in the same sweep."""
    if request.session is None:
        return None
    return f"{request.tenant}/{request.session}/{request.code_sha256}"


def _feed_files(data: catalog.PreparedData) -> dict[str, bytes]:
    """A fast run's data files, one per feed in order: data.csv, data-1.csv, data-2.csv ..."""
    return {
        ("data.csv" if index == 0 else f"data-{index}.csv"): feed.csv_bytes
        for index, feed in enumerate(data.feeds)
    }


def _failed(error_type: ErrorType, message: str, **details: Any) -> RunOutcome:
    return RunOutcome(
        status=JobStatus.FAILED, error=RunError(type=error_type, message=message, details=details)
    )

"""The engine: one backtest request in, one `RunOutcome` out. Shared by the CLI and the service.

It wires the pieces of one run together: the host-side compile check, the data catalog, the
sandbox (Docker) and the supervisor (clock, kill, verdict). It is thread-safe: the scheduler
calls `run` from several worker threads at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import docker

from . import catalog, image
from .config import BacktestConfig
from .errors import DataError, ErrorType, SandboxError
from .logs import cap_logs
from .metrics import compute_metrics
from .models import (
    BacktestResult,
    EquityPoint,
    JobStatus,
    Provenance,
    RunError,
    RunOutcome,
)
from .pool import WarmPool
from .report import CompletedReport
from .rundir import new_run_dir
from .sandbox import Sandbox, docker_client
from .settings import Settings
from .supervisor import decide, watch

Language = Literal["python", "mq5"]
ProgressCallback = Callable[[int, int], None]  # (bars done, bars total)


@dataclass(frozen=True)
class RunRequest:
    """One backtest to run. `tenant` scopes caching and visibility."""

    backtest_id: str
    code: str
    config: BacktestConfig
    language: Language = "python"
    tenant: str = "local"

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()


class Engine:
    """Runs backtests in the sandbox. One per process; `run` may be called from many threads."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._sandbox: Sandbox | None = None
        self._pool: WarmPool | None = None
        self._lock = threading.Lock()

    def sandbox(self) -> Sandbox:
        """The sandbox, connected on first use (so a CLI syntax check needs no daemon).

        Raises:
            SandboxError: no daemon, or no runner image.
        """
        with self._lock:
            if self._sandbox is None:
                client = self._client = self._client or docker_client()  # close() releases it
                tag = image.expected_tag(self.settings)
                if not image.image_present(client, self.settings):
                    raise SandboxError(
                        f"runner image {tag} is missing; run `backtest-sandbox build-image`"
                    )
                self._sandbox = Sandbox(self.settings, client, tag)
                if self.settings.effective_pool_size > 0:
                    self._pool = WarmPool(
                        self._sandbox,
                        self.settings,
                        self.settings.effective_pool_size,
                        memory_mb=BacktestConfig.model_fields["memory_mb"].default,
                    )
            return self._sandbox

    def cache_key(self, request: RunRequest) -> str | None:
        """A key equal for runs that must give the same result, or None when it cannot be known.

        It covers the code, language, config, the data's content hash, the runner image and the
        tenant. None when the data cannot be resolved (the run will then fail with data_error).
        """
        try:
            data_sha = catalog.prepare(request.config, self.settings.data_dir).sha256
        except DataError:
            return None
        material = {
            "code": request.code_sha256,
            "language": request.language,
            "config": request.config.canonical_json(),
            "data": data_sha,
            "image": image.expected_tag(self.settings),
            "tenant": request.tenant,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

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
        `cancelled` outcome.
        """
        started = time.monotonic()
        try:
            outcome = self._run(request, cancel, on_progress)
        except DataError as e:
            outcome = _failed(ErrorType.DATA_ERROR, str(e), **e.details)
        except SandboxError as e:
            outcome = _failed(ErrorType.SANDBOX_ERROR, str(e))
        outcome.execution_time_seconds = round(time.monotonic() - started, 3)
        return outcome

    def _run(
        self,
        request: RunRequest,
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
    ) -> RunOutcome:
        if request.language != "python":
            return _failed(
                ErrorType.UNSUPPORTED_LANGUAGE,
                f"language {request.language!r} is accepted but cannot run yet; use python",
            )
        syntax_error = check_syntax(request.code)
        if syntax_error is not None:
            return RunOutcome(status=JobStatus.FAILED, error=syntax_error)
        config = request.config
        data = catalog.prepare(config, self.settings.data_dir)
        sandbox = self.sandbox()
        warm = self._pool.acquire(config.memory_mb) if self._pool is not None else None
        run_dir = warm.run_dir if warm else new_run_dir(self.settings)
        try:
            # The data first and the spec last: a warm harness starts the moment the spec lands.
            run_dir.write_input("data.csv", data.csv_bytes)
            run_dir.write_spec(_job_spec(request, data))
            container = (
                warm.container
                if warm
                else sandbox.start(run_dir, config.memory_mb, request.backtest_id)
            )
            try:
                observation = watch(
                    sandbox,
                    container,
                    run_dir,
                    timeout_seconds=config.timeout_seconds,
                    result_cap_bytes=self.settings.result_cap_bytes,
                    kill_grace_seconds=self.settings.kill_grace_seconds,
                    cancel=cancel,
                    on_progress=on_progress,
                )
                logs, logs_cut = cap_logs(sandbox.logs(container), self.settings.log_cap_bytes)
            finally:
                sandbox.remove(container)
        finally:
            run_dir.remove()
        verdict = decide(
            observation, timeout_seconds=config.timeout_seconds, expected_bars=data.bars
        )
        if not isinstance(verdict.report, CompletedReport):
            return RunOutcome(status=verdict.status, error=verdict.error, logs=logs)
        warnings = list(data.warnings)
        if logs_cut:
            warnings.append(f"logs were cut to {self.settings.log_cap_bytes} bytes")
        result = self._result(request, data, verdict.report, logs, warnings, sandbox, container.id)
        return RunOutcome(status=JobStatus.COMPLETED, result=result, logs=logs)

    def _result(
        self,
        request: RunRequest,
        data: catalog.PreparedData,
        report: CompletedReport,
        logs: str,
        warnings: list[str],
        sandbox: Sandbox,
        container_id: str,
    ) -> BacktestResult:
        config = request.config
        trades = [trade.model_dump() for trade in report.trades]
        if report.open_trades:
            warnings.append(
                f"{report.open_trades} trade(s) still open at the end are not in trade_log"
            )
        metrics = compute_metrics(
            [value for _, value in report.equity_curve],
            trades,
            initial_capital=config.initial_capital,
            periods_per_year=config.timeframe.periods_per_year,
            bars_in_market=report.bars_in_market,
        )
        return BacktestResult(
            backtest_id=request.backtest_id,
            status=JobStatus.COMPLETED,
            metrics=metrics,
            equity_curve=[EquityPoint(timestamp=t, value=v) for t, v in report.equity_curve],
            trade_log=trades,
            logs=logs,
            execution_time_seconds=0.0,
            data=data.info(),
            provenance=Provenance(
                code_sha256=request.code_sha256,
                config_sha256=config.sha256(),
                runner_image=sandbox.image,
                backtrader_version=report.backtrader_version,
                runtime=sandbox.runtime or "runc",
                container_id=container_id,
            ),
            warnings=warnings,
        )

    def remove_orphans(self) -> int:
        """Remove every container of this project: called before any run of this process starts.

        Raises:
            SandboxError: the daemon cannot be reached.
        """
        return self.sandbox().remove_orphans()

    def close(self) -> None:
        """Remove the warm pool's containers and release the Docker client."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._client is not None:
                self._client.close()
            self._client = None
            self._sandbox = None


def check_syntax(code: str) -> RunError | None:
    """Compile on the host (never execute): a syntax error needs no container."""
    try:
        compile(code, "strategy.py", "exec", dont_inherit=True)
    except SyntaxError as e:
        return RunError(
            type=ErrorType.SYNTAX_ERROR,
            message=f"{e.msg} (strategy.py, line {e.lineno}, column {e.offset})",
            details={"line": e.lineno, "column": e.offset, "text": (e.text or "").rstrip()},
        )
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, absurd nesting
        return RunError(type=ErrorType.SYNTAX_ERROR, message=str(e), details={})
    return None


def _job_spec(request: RunRequest, data: catalog.PreparedData) -> dict[str, Any]:
    """The job spec of runner_image/PROTOCOL.md."""
    config = request.config
    return {
        "protocol": 1,
        "code": request.code,
        "filename": "strategy.py",
        "params": config.params,
        "broker": {
            "initial_capital": config.initial_capital,
            "commission": config.commission,
            "slippage": config.slippage,
            "stake": config.stake,
        },
        "data": {"path": "/job/data.csv", "timeframe": config.timeframe.name, "bars": data.bars},
    }


def _failed(error_type: ErrorType, message: str, **details: Any) -> RunOutcome:
    return RunOutcome(
        status=JobStatus.FAILED, error=RunError(type=error_type, message=message, details=details)
    )

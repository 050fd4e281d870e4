"""`backtest-sandbox sweep` (docs/interface.md section 9): a parameter sweep from the command
line, through the same service as `run_sweep`, waiting with progress on stderr.

Exit codes as for `run`: 0 completed, 3 failed (no combination completed), 4 sandbox_error,
128 + N when signal N cancelled it (every running container is killed and removed).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import ErrorType, InvalidRequest
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings

from .progress import ProgressBar

TENANT = "local"
POLL_SECONDS = 0.5


def parse_grid(text: str) -> Any:
    """Raises:
    InvalidRequest: not JSON (the service checks the rest, naming `grid.<param>`).
    """
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidRequest("--grid", f"must be a JSON object {{param: [values]}} ({e})") from None


def run_sweep(
    code: str,
    config: BacktestConfig,
    settings: Settings,
    cancel: threading.Event,
    *,
    grid: Any,
    target: str,
    direction: str,
    constraints: list[str],
    oos_start: str | None,
    show_progress: bool,
    output_dir: Path | None,
) -> tuple[dict[str, Any], int]:
    """Run the sweep to its end (or until `cancel`); its get_sweep_status object and exit code.

    Raises:
        InvalidRequest: an argument breaks a rule; nothing ran.
    """
    from backtest_sandbox.jobs.engine import Engine
    from backtest_sandbox.jobs.service import BacktestService

    from .charts import render_heatmap

    with BacktestService(settings, Engine(settings)) as service:
        submitted = service.submit_sweep(
            TENANT,
            code,
            "python",
            config.model_dump(mode="json"),
            grid=grid,
            target=target,
            direction=direction,
            constraints=constraints,
            oos_start=oos_start,
        )
        sweep_id = submitted.sweep_id
        bar = ProgressBar(sys.stderr) if show_progress else None
        try:
            while True:
                job = service.wait(
                    TENANT, sweep_id, lambda job: job.status.is_terminal, timeout=POLL_SECONDS
                )
                if bar is not None and job.progress_total:
                    bar.update(job.progress_done or 0, job.progress_total)
                if job.status.is_terminal:
                    break
                if cancel.is_set():
                    service.cancel(TENANT, sweep_id)
        finally:
            if bar is not None:
                bar.close()
        answer, heatmap = service.sweep_status(
            TENANT, sweep_id, top=settings.max_sweep_combinations
        )
        status = answer.model_dump(mode="json")
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "sweep.json").write_text(json.dumps(status, indent=2))
            if heatmap is not None:
                (output_dir / "heatmap.png").write_bytes(render_heatmap(heatmap))
    return status, _exit_code(status)


def _exit_code(status: dict[str, Any]) -> int:
    if status["status"] == JobStatus.COMPLETED.value:
        return 0
    error = status.get("error") or {}
    return 4 if error.get("type") == ErrorType.SANDBOX_ERROR.value else 3


def print_sweep(status: dict[str, Any], top: int = 10) -> None:
    """The ranking for a person at a terminal."""
    print(
        f"{status['status']}: {status['done']}/{status['total']} combinations, "
        f"ranked by {status['target']} ({status['direction']})"
    )
    for entry in status["ranked"][:top]:
        mark = "" if entry["constraints_passed"] else "  (fails a constraint)"
        value = entry["metrics"].get(status["target"])
        shown = "n/a" if value is None else f"{value:,.4f}"
        print(f"  #{entry['rank']:<3} {json.dumps(entry['params'])}  {shown}{mark}")
    if status["best"] is not None:
        print(f"best: {json.dumps(status['best']['params'])}")
    if status["deflated_sharpe_ratio"] is not None:
        print(f"deflated Sharpe ratio of the best: {status['deflated_sharpe_ratio']:.4f}")
    oos = status["out_of_sample"]
    if oos is not None:
        value = oos["metrics"].get(status["target"])
        print(f"out of sample: {status['target']} = {'n/a' if value is None else f'{value:,.4f}'}")
    for warning in status["warnings"]:
        print(f"warning: {warning}")
    if status["error"] is not None:
        print(f"error: {status['error']['type']}: {status['error']['message']}")

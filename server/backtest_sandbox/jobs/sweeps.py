"""Parameter sweeps (docs/interface.md section 9) on top of the job queue.

A sweep is a row of kind `sweep` in the job store, and each of its combinations is an ordinary
backtest job whose `parent` is the sweep. So the combinations are scheduled fairly with every
other tenant's work (a sweep never runs more containers than the worker slots), a combination
already run is answered from the cache, and cancel and delete reach them through the same
paths. The coordinator here follows the combinations as they finish: it keeps the sweep's
progress, runs the winner out of sample when asked, and writes the sweep's final answer
(ranking, best, deflated Sharpe ratio) once, in the sweep's row.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, Field

from backtest_sandbox.domain.conditions import parse_condition
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.models import JobStatus, RunError
from backtest_sandbox.domain.statistics import deflated_sharpe_ratio
from backtest_sandbox.domain.sweep import (
    CONSTRAINT_OPS,
    Ranked,
    Scalar,
    SweepSpec,
    heatmap_grid,
    rank,
)

from .results import ResultFiles
from .store import Child, JobStore, JobSummary, NewJob

logger = logging.getLogger(__name__)

DEFAULT_TOP = 20
FOLLOW_SECONDS = 0.5  # with the temporal backend: how often running sweeps are looked at, at most


# -- answers ----------------------------------------------------------------------------------


class SweepSubmitResponse(BaseModel):
    sweep_id: str
    status: JobStatus
    combinations: int = Field(description="combinations in the grid")
    cached: int = Field(0, description="combinations answered at once from the cache")


class RankedEntry(BaseModel):
    rank: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    constraints_passed: bool
    backtest_id: str = Field(description="the combination's run: read_backtest reads it whole")


class SweepRun(BaseModel):
    params: dict[str, Any]
    metrics: dict[str, Any]
    backtest_id: str


class SweepStatus(BaseModel):
    sweep_id: str
    status: JobStatus
    progress_percent: float
    done: int = Field(description="combinations finished (completed, failed or cancelled)")
    total: int
    target: str
    direction: Literal["max", "min"]
    ranked: list[RankedEntry] = Field(
        description="completed combinations, best first; those failing a constraint last"
    )
    ranked_total: int = Field(description="completed combinations (ranked holds the top ones)")
    failed: int = Field(description="combinations that did not complete")
    best: SweepRun | None = Field(
        description="the first ranked combination passing every constraint"
    )
    out_of_sample: SweepRun | None = Field(
        description="the best combination's run on [oos_start, end_date], when asked"
    )
    deflated_sharpe_ratio: float | None = Field(
        description="probability that the best combination's Sharpe ratio is above zero, "
        "deflated for the number of combinations tried (Bailey and Lopez de Prado, 2014)"
    )
    warnings: list[str] = Field(default_factory=list)
    error: RunError | None


@dataclass(frozen=True)
class Heatmap:
    """The target over a two-parameter grid (rows: y values, columns: x values)."""

    target: str
    x_name: str
    x_values: list[Scalar]
    y_name: str
    y_values: list[Scalar]
    cells: list[list[float | None]]


# -- the sweep's state in its row -------------------------------------------------------------


def spec_from_json(raw: dict[str, Any]) -> SweepSpec:
    constraints = tuple(
        parse_condition(text, field="constraints", ops=CONSTRAINT_OPS)
        for text in raw["constraints"]
    )
    oos = raw["oos_start"]
    return SweepSpec(
        grid=raw["grid"],
        target=raw["target"],
        direction=raw["direction"],
        constraints=constraints,
        oos_start=None if oos is None else date.fromisoformat(oos),
    )


@dataclass
class _State:
    """What `summary_json` holds: the spec, the out-of-sample run once started, and the final
    answer once the sweep is over."""

    spec: dict[str, Any]
    combinations: int
    oos_id: str | None = None
    final: dict[str, Any] | None = None

    @classmethod
    def load(cls, raw: str) -> _State:
        return cls(**json.loads(raw))

    def dump(self) -> str:
        return json.dumps(vars(self), allow_nan=False, separators=(",", ":"))


NewChild = Callable[[str, str, BacktestConfig, str, str], Any]


class SweepCoordinator:
    """Follows running sweeps and finishes them. One per service; thread-safe.

    `new_child(tenant, parent, config, code, language)` makes the store row of one more run
    of a sweep (a cache hit already terminal); `dispatch(job)` hands a queued one to whatever
    runs jobs. `changed(job_id)` tells the service's listeners.

    With `follow_store` (the temporal backend) the runs end in other processes, so the
    coordinator also looks at every running sweep whenever the store changes (PostgreSQL's
    notifications), at most every FOLLOW_SECONDS. Several servers may then follow one sweep:
    every write of its state is conditional on the state read, so only one of them starts
    the out-of-sample run or writes the final answer.
    """

    def __init__(
        self,
        store: JobStore,
        results: ResultFiles,
        *,
        new_child: NewChild,
        dispatch: Callable[[NewJob], None],
        changed: Callable[[str], None],
        follow_store: bool = False,
    ) -> None:
        self._store = store
        self._results = results
        self._new_child = new_child
        self._dispatch = dispatch
        self._changed = changed
        self._follow_store = follow_store
        self._due: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Follow every sweep a previous process left running, then whatever changes."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="sweeps", daemon=True)
        self._thread.start()
        for sweep_id in self._store.running_sweeps():
            self._due.put(sweep_id)
        if self._follow_store:
            self._follower = threading.Thread(
                target=self._follow, name="sweeps-follow", daemon=True
            )
            self._follower.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._due.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None

    def _follow(self) -> None:
        seen = self._store.version()
        while not self._stopping.is_set():
            try:
                seen = self._store.wait_for_change(seen, FOLLOW_SECONDS)
                for sweep_id in self._store.running_sweeps():
                    self._due.put(sweep_id)
            except Exception:  # the store unreachable for a while: try again
                logger.exception("could not look at the running sweeps")
            self._stopping.wait(FOLLOW_SECONDS)

    def job_changed(self, job_id: str) -> None:
        """A job's status changed: if it belongs to a sweep, look at the sweep. Queued for
        the coordinator's thread: the caller may be a worker, which must not wait."""
        self._due.put(job_id)

    def _loop(self) -> None:
        while (job_id := self._due.get()) is not None:
            try:
                sweep_id = self._store.parent_of(job_id) or job_id
                self.advance(sweep_id)
            except Exception:  # one sweep's fault must not stop the others being followed
                logger.exception("could not advance the sweep of %s", job_id)

    # -- moving a sweep on ---------------------------------------------------------------------

    def advance(self, sweep_id: str) -> None:
        """Record progress; when every combination is over, start the out-of-sample run or
        write the final answer."""
        raw = self._store.sweep_summary(sweep_id)
        if raw is None:
            return  # deleted
        state = _State.load(raw)
        if state.final is not None:
            return
        children = self._store.children(sweep_id)
        combos = [c for c in children if c.id != state.oos_id]
        # A combination its tenant deleted (its id is in the ranking) counts as finished.
        deleted = state.combinations - len(combos)
        done = deleted + sum(c.status.is_terminal for c in combos)
        oos = next((c for c in children if c.id == state.oos_id), None)
        total = state.combinations + (1 if state.spec["oos_start"] else 0)
        progress = (done + int(oos is not None and oos.status.is_terminal), total)
        if done < state.combinations:
            self._store.update_sweep(
                sweep_id, state.dump(), progress=progress, expected_summary=raw
            )
            return
        spec = spec_from_json(state.spec)
        ranked = self.ranking(spec, combos)
        best = next((r for r in ranked if r.constraints_passed), None)
        if spec.oos_start is not None and best is not None and oos is None:
            self._start_oos(sweep_id, raw, spec, state, best)
            return
        if oos is not None and not oos.status.is_terminal:
            self._store.update_sweep(
                sweep_id, state.dump(), progress=progress, expected_summary=raw
            )
            return
        state.final = self._final(spec, combos, ranked, best, oos)
        status, error = _outcome(combos, ranked)
        error_json = None if error is None else error.model_dump_json()
        if self._store.update_sweep(
            sweep_id,
            state.dump(),
            status=status,
            error_json=error_json,
            progress=(total, total),
            expected_summary=raw,
        ):
            self._changed(sweep_id)

    def _start_oos(
        self, sweep_id: str, raw: str, spec: SweepSpec, state: _State, best: Ranked
    ) -> None:
        sweep = self._store.job(sweep_id)
        if sweep is None:
            return  # deleted meanwhile
        base = BacktestConfig.model_validate_json(sweep.config_json)
        job = self._new_child(
            sweep.tenant, sweep_id, spec.oos_config(base, best.params), sweep.code, sweep.language
        )
        state.oos_id = job.id
        # The run and its id in the state in one transaction, and only if the state is still
        # the one read: another server following this sweep may have started it first.
        if not self._store.add_child(job, summary_json=state.dump(), expected_summary=raw):
            return
        if job.status.is_terminal:  # answered from the cache
            self._due.put(sweep_id)
            return
        try:
            self._dispatch(job)
        except Exception:  # Temporal unreachable: the run stays queued (docs/SCALING.md)
            logger.exception("could not hand over the out-of-sample run %s", job.id)

    def ranking(self, spec: SweepSpec, combos: Sequence[Child]) -> list[Ranked]:
        completed = []
        for index, child in enumerate(combos):
            if child.status is JobStatus.COMPLETED and child.result_digest is not None:
                view = self._results.summary(child.result_digest, child.id, child.cached)
                completed.append((index, _params(spec, child), view.metrics))
        return rank(spec, completed)

    def _final(
        self,
        spec: SweepSpec,
        combos: list[Child],
        ranked: list[Ranked],
        best: Ranked | None,
        oos: Child | None,
    ) -> dict[str, Any]:
        out_of_sample = None
        if oos is not None and oos.status is JobStatus.COMPLETED and oos.result_digest:
            view = self._results.summary(oos.result_digest, oos.id, oos.cached)
            assert best is not None
            out_of_sample = {"params": best.params, "metrics": view.metrics, "backtest_id": oos.id}
        return {
            "ranked": [_entry(r, combos) for r in ranked],
            "failed": sum(c.status is not JobStatus.COMPLETED for c in combos),
            "deflated_sharpe_ratio": None if best is None else self._dsr(best, combos, ranked),
            "out_of_sample": out_of_sample,
            "warnings": _oos_warnings(spec, best, oos),
        }

    def _dsr(self, best: Ranked, combos: list[Child], ranked: list[Ranked]) -> float | None:
        """The best combination's deflated Sharpe ratio, for every combination tried."""
        child = combos[best.index]
        assert child.result_digest is not None
        result = self._results.result(child.result_digest, child.id)
        config = BacktestConfig.model_validate_json(child.config_json)
        values = [config.initial_capital, *(point.value for point in result.equity_curve)]
        if any(v <= 0 for v in values):
            return None
        returns = [b / a - 1.0 for a, b in zip(values, values[1:], strict=False)]
        per_year = math.sqrt(config.timeframe.periods_per_year)
        trials = [
            float(r.metrics["sharpe_ratio"]) / per_year
            for r in ranked
            if r.metrics.get("sharpe_ratio") is not None
        ]
        return deflated_sharpe_ratio(returns, trials) if trials else None

    # -- reading ----------------------------------------------------------------------------

    def status(
        self, sweep_id: str, summary: JobSummary, top: int
    ) -> tuple[SweepStatus, Heatmap | None]:
        """The sweep's answer, with its heatmap once completed (two varying parameters)."""
        raw = self._store.sweep_summary(sweep_id)
        assert raw is not None
        state = _State.load(raw)
        spec = spec_from_json(state.spec)
        children = self._store.children(sweep_id)
        combos = [c for c in children if c.id != state.oos_id]
        if state.final is not None:
            final = state.final
        else:  # running or cancelled: rank what has completed so far
            final = {
                "ranked": [_entry(r, combos) for r in self.ranking(spec, combos)],
                "failed": sum(
                    c.status.is_terminal and c.status is not JobStatus.COMPLETED for c in combos
                ),
                "deflated_sharpe_ratio": None,
                "out_of_sample": None,
                "warnings": [],
            }
        ranked = final["ranked"]
        best = next((r for r in ranked if r["constraints_passed"]), None)
        error = (
            None if summary.error_json is None else RunError.model_validate_json(summary.error_json)
        )
        answer = SweepStatus(
            sweep_id=sweep_id,
            status=summary.status,
            progress_percent=_percent(summary),
            done=state.combinations - len(combos) + sum(c.status.is_terminal for c in combos),
            total=state.combinations,
            target=spec.target,
            direction=spec.direction,
            ranked=[RankedEntry(**r) for r in ranked[:top]],
            ranked_total=len(ranked),
            failed=final["failed"],
            best=None
            if best is None
            else SweepRun(
                params=best["params"], metrics=best["metrics"], backtest_id=best["backtest_id"]
            ),
            out_of_sample=None
            if final["out_of_sample"] is None
            else SweepRun(**final["out_of_sample"]),
            deflated_sharpe_ratio=final["deflated_sharpe_ratio"],
            warnings=final["warnings"],
            error=error,
        )
        heatmap = None
        if summary.status is JobStatus.COMPLETED:
            placed = [
                Ranked(r["rank"], 0, r["params"], r["metrics"], r["constraints_passed"])
                for r in ranked
            ]
            grid = heatmap_grid(spec, placed)
            if grid is not None:
                heatmap = Heatmap(spec.target, *grid)
        return answer, heatmap


def new_state(spec: SweepSpec, combinations: int) -> str:
    """The `summary_json` of a new sweep."""
    return _State(spec=spec.to_json(), combinations=combinations).dump()


def _params(spec: SweepSpec, child: Child) -> dict[str, Scalar]:
    params = json.loads(child.config_json)["params"]
    return {name: params[name] for name in spec.grid}


def _entry(ranked: Ranked, combos: Sequence[Child]) -> dict[str, Any]:
    return {
        "rank": ranked.rank,
        "params": ranked.params,
        "metrics": ranked.metrics,
        "constraints_passed": ranked.constraints_passed,
        "backtest_id": combos[ranked.index].id,
    }


def _outcome(
    combos: Sequence[Child], ranked: Sequence[Ranked]
) -> tuple[JobStatus, RunError | None]:
    """Completed when any combination completed; else failed with the first one's error."""
    if ranked:
        return JobStatus.COMPLETED, None
    first = next((c for c in combos if c.error_json is not None), None)
    if first is None:
        return JobStatus.FAILED, RunError(
            type=ErrorType.SANDBOX_ERROR, message="no combination of the sweep completed"
        )
    error = RunError.model_validate_json(first.error_json or "")
    return JobStatus.FAILED, error.model_copy(
        update={"message": f"no combination completed; the first failed: {error.message}"}
    )


def _oos_warnings(spec: SweepSpec, best: Ranked | None, oos: Child | None) -> list[str]:
    if spec.oos_start is None:
        return []
    if best is None:
        return [
            "out_of_sample: no combination completed and passed every constraint, so nothing "
            "ran out of sample"
        ]
    if oos is not None and oos.status is not JobStatus.COMPLETED:
        why = (
            ""
            if oos.error_json is None
            else f": {RunError.model_validate_json(oos.error_json).message}"
        )
        state = oos.status.value
        return [f"out_of_sample: the best combination's run from {spec.oos_start} was {state}{why}"]
    return []


def _percent(summary: JobSummary) -> float:
    if summary.status is JobStatus.COMPLETED:
        return 100.0
    if not summary.progress_total:
        return 0.0
    return round(100.0 * (summary.progress_done or 0) / summary.progress_total, 1)

"""Parameter sweeps without Docker: the grid's rules, the ranking, and the service's life of a
sweep (combinations as jobs, the cache, out of sample, cancel, delete) over the fake engine.
The real sandbox's sweep is tested in tests/integration/test_sweep_e2e.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import InvalidRequest, QuotaExceeded
from backtest_sandbox.domain.models import JobStatus, RunOutcome
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.domain.sweep import parse_sweep, rank
from backtest_sandbox.jobs.engine import RunRequest
from backtest_sandbox.jobs.service import BacktestService
from tests.conftest import BOTH_STORES
from tests.unit.fake_engine import FakeEngine, config, make_result

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    params = (('fast', 5), ('slow', 20))\n"
WAIT = 10.0


def base(**fields: Any) -> BacktestConfig:
    return BacktestConfig.model_validate(config(**fields))


def spec(**arguments: Any) -> Any:
    arguments.setdefault("grid", {"fast": [5, 10], "slow": [20, 30, 40]})
    return parse_sweep(base=base(), max_combinations=500, **arguments)


# -- the request's rules -----------------------------------------------------------------------


def test_the_grid_is_the_cartesian_product_in_grid_order() -> None:
    combos = spec().combinations()
    assert combos == [
        {"fast": 5, "slow": 20},
        {"fast": 5, "slow": 30},
        {"fast": 5, "slow": 40},
        {"fast": 10, "slow": 20},
        {"fast": 10, "slow": 30},
        {"fast": 10, "slow": 40},
    ]


@pytest.mark.parametrize(
    ("arguments", "field", "rule"),
    [
        ({"grid": {}}, "grid", "non-empty object"),
        ({"grid": {"fast": []}}, "grid.fast", "non-empty list"),
        ({"grid": {"fast": [5, 5]}}, "grid.fast", "must not repeat"),
        ({"grid": {"fast": [[1]]}}, "grid.fast", "not a number"),
        ({"grid": {"9x": [1]}}, "grid.9x", "parameter name"),
        ({"grid": {"a": list(range(30)), "b": list(range(30))}}, "grid", "900 combinations"),
        ({"target": "wealth"}, "target", "must be a metric name"),
        ({"direction": "up"}, "direction", "'max' or 'min'"),
        ({"constraints": "sharpe_ratio > 1"}, "constraints", "must be a list"),
        ({"constraints": ["sharpe_ratio == 1"]}, "constraints[0]", "not one of"),
        ({"constraints": ["total_trades >= 1", "nope > 2"]}, "constraints[1]", "not a metric"),
        ({"oos_start": "2030-01-01"}, "oos_start", "within the config's range"),
        ({"oos_start": "soon"}, "oos_start", "ISO date"),
    ],
)
def test_a_bad_request_names_the_argument_and_the_rule(
    arguments: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        spec(**arguments)
    assert raised.value.field == field
    assert rule in raised.value.rule


def test_oos_start_splits_the_range() -> None:
    split = spec(oos_start="2020-06-01")
    tuning = split.tuning_config(base(), {"fast": 5, "slow": 20})
    assert (tuning.start_date, tuning.end_date) == (date(2020, 1, 1), date(2020, 5, 31))
    oos = split.oos_config(base(), {"fast": 5, "slow": 20})
    assert (oos.start_date, oos.end_date) == (date(2020, 6, 1), base().end_date)
    assert oos.params == {"fast": 5, "slow": 20}


def test_ranking_puts_constraint_failures_last_and_null_targets_after_numbers() -> None:
    sweep = spec(constraints=["max_drawdown_pct <= 20"])
    rows = [
        (0, {"fast": 5}, {"sharpe_ratio": 2.0, "max_drawdown_pct": 30.0}),  # best, but fails
        (1, {"fast": 6}, {"sharpe_ratio": 1.0, "max_drawdown_pct": 10.0}),
        (2, {"fast": 7}, {"sharpe_ratio": None, "max_drawdown_pct": 5.0}),
        (3, {"fast": 8}, {"sharpe_ratio": 1.5, "max_drawdown_pct": 19.0}),
        (4, {"fast": 9}, {"sharpe_ratio": 1.5, "max_drawdown_pct": None}),  # unknown: fails
    ]
    placed = rank(sweep, rows)
    assert [r.index for r in placed] == [3, 1, 2, 0, 4]
    assert [r.constraints_passed for r in placed] == [True, True, True, False, False]
    assert [r.rank for r in placed] == [1, 2, 3, 4, 5]
    assert [r.index for r in rank(spec(direction="min"), rows)] == [1, 3, 4, 0, 2]


# -- the service -------------------------------------------------------------------------------


class ParamEngine(FakeEngine):
    """The fake engine, with metrics that are a function of the params (so a ranking can be
    checked) and an equity curve long enough for a Sharpe ratio."""

    def _outcome(
        self, request: RunRequest, cancel: threading.Event, on_progress: Any
    ) -> RunOutcome:
        outcome = super()._outcome(request, cancel, on_progress)
        if outcome.result is not None:
            params = request.config.params
            score = float(params.get("fast", 0)) - abs(float(params.get("slow", 0)) - 30) / 10
            outcome.result = make_result(request.backtest_id, bars=60)
            outcome.result.metrics = {
                **outcome.result.metrics,
                "sharpe_ratio": score,
                "max_drawdown_pct": float(params.get("slow", 0)),
                "bars": request.config.start_date.month,  # lets a test see the range
            }
        return outcome


@pytest.fixture
def engine() -> ParamEngine:
    return ParamEngine()


@pytest.fixture
def make_service(
    tmp_path: Path, engine: ParamEngine, database_url: str
) -> Iterator[Callable[..., BacktestService]]:
    started: list[BacktestService] = []

    def make(**settings: Any) -> BacktestService:
        service = BacktestService(
            Settings(
                state_dir=tmp_path / "state",
                data_dir=tmp_path / "data",
                database_url=database_url,
                **settings,
            ),
            engine,
        )
        service.start()
        started.append(service)
        return service

    yield make
    engine.release.set()
    for service in started:
        service.close()


def run_sweep(service: BacktestService, code: str = CODE, **arguments: Any) -> str:
    arguments.setdefault("grid", {"fast": [5, 10], "slow": [20, 30, 40]})
    return service.submit_sweep("local", code, "python", config(), **arguments).sweep_id


def finished(service: BacktestService, sweep_id: str) -> Any:
    job = service.wait("local", sweep_id, lambda job: job.status.is_terminal, timeout=WAIT)
    assert job.status.is_terminal, f"sweep still {job.status}"
    return service.sweep_status("local", sweep_id)


@BOTH_STORES
def test_a_sweep_runs_every_combination_and_ranks_them(
    make_service: Callable[..., BacktestService], engine: ParamEngine
) -> None:
    service = make_service(max_workers=2)
    sweep_id = run_sweep(service, constraints=["max_drawdown_pct <= 30"])
    answer, heatmap = finished(service, sweep_id)
    assert answer.status is JobStatus.COMPLETED
    assert (answer.done, answer.total, answer.progress_percent) == (6, 6, 100.0)
    assert [r.params for r in answer.ranked] == [
        {"fast": 10, "slow": 30},
        {"fast": 10, "slow": 20},
        {"fast": 5, "slow": 30},
        {"fast": 5, "slow": 20},
        {"fast": 10, "slow": 40},  # fails the drawdown constraint: last
        {"fast": 5, "slow": 40},
    ]
    assert [r.constraints_passed for r in answer.ranked] == [True] * 4 + [False] * 2
    assert answer.best is not None and answer.best.params == {"fast": 10, "slow": 30}
    assert answer.best.backtest_id == answer.ranked[0].backtest_id
    assert service.status("local", answer.best.backtest_id).status is JobStatus.COMPLETED
    assert answer.deflated_sharpe_ratio is not None
    assert 0.0 <= answer.deflated_sharpe_ratio <= 1.0
    assert heatmap is not None
    assert (heatmap.x_name, heatmap.y_name) == ("fast", "slow")
    assert heatmap.cells[1][1] == 10.0  # fast=10, slow=30
    assert len(engine.runs) == 6
    # Listed once, as a sweep; its combinations are not listed.
    listed = service.list_backtests("local").backtests
    assert [(b.backtest_id, b.kind) for b in listed] == [(sweep_id, "sweep")]


def test_top_cuts_the_ranking_and_a_backtest_id_is_refused(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service()
    sweep_id = run_sweep(service)
    answer, _ = finished(service, sweep_id)
    top, _ = service.sweep_status("local", sweep_id, top=2)
    assert top.ranked == answer.ranked[:2] and top.ranked_total == 6
    with pytest.raises(InvalidRequest) as raised:
        service.sweep_status("local", answer.ranked[0].backtest_id)
    assert raised.value.field == "sweep_id"


@BOTH_STORES
def test_a_combination_already_run_is_not_run_again(
    make_service: Callable[..., BacktestService], engine: ParamEngine
) -> None:
    service = make_service()
    finished(service, run_sweep(service, grid={"fast": [5, 10]}))
    again = service.submit_sweep("local", CODE, "python", config(), grid={"fast": [10, 15]})
    assert again.cached == 1
    answer, heatmap = finished(service, again.sweep_id)
    assert len(engine.runs) == 3
    assert {tuple(r.params.values()) for r in answer.ranked} == {(10,), (15,)}
    assert heatmap is None  # one varying parameter


@BOTH_STORES
def test_out_of_sample_runs_the_winner_on_the_rest(
    make_service: Callable[..., BacktestService], engine: ParamEngine
) -> None:
    service = make_service()
    sweep_id = run_sweep(service, oos_start="2020-07-01")
    answer, _ = finished(service, sweep_id)
    assert answer.best is not None and answer.out_of_sample is not None
    assert answer.out_of_sample.params == answer.best.params
    assert answer.out_of_sample.metrics["bars"] == 7
    assert {r.metrics["bars"] for r in answer.ranked} == {1}
    assert len(engine.runs) == 7


@BOTH_STORES
def test_cancel_stops_every_combination(
    make_service: Callable[..., BacktestService], engine: ParamEngine
) -> None:
    service = make_service(max_workers=2)
    sweep_id = run_sweep(service, code=CODE + "# block\n")
    engine.wait_started(2)
    assert service.cancel("local", sweep_id).status is JobStatus.CANCELLED
    engine.wait_idle()
    answer, _ = service.sweep_status("local", sweep_id)
    assert answer.status is JobStatus.CANCELLED
    assert len(engine.runs) == 2  # the queued ones never started
    service.delete("local", sweep_id)
    assert service.list_backtests("local").backtests == []


@BOTH_STORES
def test_the_combination_quota_counts_every_waiting_combination(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service(max_workers=1, tenant_max_queued_combinations=8)
    run_sweep(service, code=CODE + "# block\n")
    with pytest.raises(QuotaExceeded) as raised:
        run_sweep(service, code=CODE + "# block\n# another\n")
    assert raised.value.rule == "tenant_max_queued_combinations"
    assert len(service.list_backtests("local").backtests) == 1  # nothing of the second


def test_a_sweep_whose_every_combination_fails_fails(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service()
    answer, _ = finished(service, run_sweep(service, code=CODE + "# fail: runtime_error\n"))
    assert answer.status is JobStatus.FAILED
    assert answer.error is not None and answer.error.type.value == "runtime_error"
    assert answer.failed == 6 and answer.ranked == []


def test_a_combination_deleted_mid_sweep_does_not_hold_the_sweep(
    make_service: Callable[..., BacktestService], engine: ParamEngine
) -> None:
    service = make_service(max_workers=1)
    sweep_id = run_sweep(service, code=CODE + "# block\n", grid={"fast": [5, 10, 15]})
    engine.wait_started(1)
    queued = [c.id for c in service._store.children(sweep_id) if c.status is JobStatus.QUEUED]
    service.delete("local", queued[0])  # its id was never shown, but a tenant may guess it
    engine.release.set()
    answer, _ = finished(service, sweep_id)
    assert answer.status is JobStatus.COMPLETED
    assert (answer.done, answer.total, answer.ranked_total) == (3, 3, 2)

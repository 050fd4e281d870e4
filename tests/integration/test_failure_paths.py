"""Every path that takes a container removes it, whatever raises between "taken" and "removed".

Each failure point of `SandboxRunner.run` is made to fail once, with a warm container taken
from a real pool (and, for the start itself, a cold one): the run ends (a sandbox_error, or the
exception for the caller's top level), and the container it had is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOCKER
from tests.strategies import SMA_CROSS

pytestmark = DOCKER


class Injected(Exception):
    """Not one of ours: stands for any bug that raises where nobody expects it."""


@pytest.fixture
def engine_for(data_dir: Path, tmp_path: Path) -> Iterator[Any]:
    from backtest_sandbox.domain.settings import Settings
    from backtest_sandbox.jobs.engine import Engine

    engines: list[Engine] = []

    def make(pool_size: int) -> Engine:
        settings = Settings(
            data_dir=data_dir,
            state_dir=tmp_path / "state",
            pool_size=pool_size,
            pool_wait_seconds=60,  # take a warm one for certain
        )
        engine = Engine(settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def request(mode: str = "verified") -> Any:
    from backtest_sandbox.domain.code import new_backtest_id
    from backtest_sandbox.domain.config import BacktestConfig
    from backtest_sandbox.jobs.engine import RunRequest

    config = BacktestConfig(
        symbol="ORCL", timeframe="D1", start_date="2010-01-01", end_date="2010-12-31", mode=mode
    )
    return RunRequest(backtest_id=new_backtest_id(), code=SMA_CROSS, config=config)


def my_run_containers(client: Any) -> list[str]:
    """Containers of this process other than idle warm ones: a taken container left behind."""
    from backtest_sandbox.sandbox.containers import LABEL_OWNER, LABEL_RUN, process_owner_id

    me = process_owner_id()
    listed = client.api.containers(all=True, filters={"label": f"{LABEL_OWNER}={me}"})
    return [c["Id"] for c in listed if c["Labels"].get(LABEL_RUN) != "pool"]


def fail(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected")


def sandbox_fail(*args: Any, **kwargs: Any) -> Any:
    from backtest_sandbox.domain.errors import SandboxError

    raise SandboxError("injected Docker failure")


# (what to break, with which failure, in which mode): every step between taking the container
# and removing it. The output is read by the log collector in fast mode and by the bar pipe's
# conversation in verified mode.
POINTS = [
    # A fast run writes data.csv into /job; a verified one writes only the spec there.
    pytest.param(
        "backtest_sandbox.sandbox.rundir.RunDir.write_input", fail, "fast", id="write_input"
    ),
    pytest.param(
        "backtest_sandbox.sandbox.rundir.RunDir.write_spec", fail, "verified", id="write_spec"
    ),
    pytest.param("backtest_sandbox.sandbox.runner.watch", sandbox_fail, "verified", id="watch"),
    pytest.param("backtest_sandbox.sandbox.runner.watch", fail, "verified", id="watch-bug"),
    pytest.param(
        "backtest_sandbox.sandbox.containers.Sandbox.log_stream", sandbox_fail, "fast",
        id="log_stream",
    ),
    pytest.param("backtest_sandbox.sandbox.runner.LogCollector.result", fail, "fast", id="logs"),
    pytest.param(  # the bar pipe's FIFOs (runc, as this suite runs)
        "backtest_sandbox.sandbox.rundir.RunDir.make_bar_pipes", sandbox_fail, "verified",
        id="bar_pipes",
    ),
    pytest.param(
        "backtest_sandbox.sandbox.runner.ConversationThread.result", fail, "verified", id="pipe"
    ),
]


@pytest.mark.parametrize(("target", "failure", "mode"), POINTS)
def test_a_failure_after_taking_a_warm_container_removes_it(
    target: str, failure: Any, mode: str, engine_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(pool_size=1)
    sandbox = engine.runner.sandbox()
    pool = engine.runner.pool
    assert pool is not None
    monkeypatch.setattr(target, failure)
    if failure is fail:
        with pytest.raises(Injected):
            engine.run(request(mode))
    else:
        outcome = engine.run(request(mode))
        assert outcome.error is not None and outcome.error.type == "sandbox_error"
        assert "injected Docker failure" in outcome.error.message
    monkeypatch.undo()
    assert my_run_containers(sandbox.client) == []
    # The pool is still whole: the next run is served warm and completes.
    outcome = engine.run(request())
    assert outcome.result is not None and outcome.result.provenance.warm


def test_a_failed_cold_start_removes_the_created_container(
    engine_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docker.models.containers import Container

    engine = engine_for(pool_size=0)
    sandbox = engine.runner.sandbox()
    monkeypatch.setattr(Container, "start", sandbox_fail_docker)
    outcome = engine.run(request())
    assert outcome.error is not None and outcome.error.type == "sandbox_error"
    monkeypatch.undo()
    assert my_run_containers(sandbox.client) == []


def sandbox_fail_docker(*args: Any, **kwargs: Any) -> Any:
    import docker.errors

    raise docker.errors.APIError("injected: the daemon refused to start it")

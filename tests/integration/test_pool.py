"""The warm pool's life cycle, against the real daemon and runner image.

A warm container is started ahead of a run, taken by exactly one run, then removed; the pool
starts a replacement, recycles idle containers past their maximum age, runs cold when the one
it holds is dead, and leaves nothing behind when it closes. Each test drives the real `Engine`
(and so the real `SandboxRunner` and `WarmPool`) and checks what an operator sees: the run's
provenance, and the containers Docker lists.

The pool announces nothing when a container becomes idle, so the tests poll (every 0.1 s, for
at most `DEADLINE_SECONDS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.models import JobStatus, Provenance, RunOutcome
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from backtest_sandbox.sandbox.containers import (
    LABEL_OWNER,
    LABEL_RUN,
    docker_client,
    process_owner_id,
)
from backtest_sandbox.sandbox.pool import POOL_LABEL, WarmPool
from tests.conftest import DOCKER, left_behind
from tests.strategies import SMA_CROSS

pytestmark = DOCKER

DEADLINE_SECONDS = 60.0
CONFIG = BacktestConfig.model_validate(
    {"symbol": "ORCL", "timeframe": "D1", "start_date": "2010-01-01", "end_date": "2010-12-31"}
)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    client = docker_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_engine(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Engines on the test catalog with a warm pool; every one is closed when the test ends."""
    engines: list[Engine] = []

    def make(**changes: Any) -> Engine:
        settings = Settings(
            data_dir=data_dir, state_dir=tmp_path / "state", runtime="runc", **changes
        )
        engine = Engine(settings)
        engines.append(engine)
        engine.runner.sandbox()  # connects, and starts the pool's refill thread
        return engine

    yield make
    for engine in engines:
        engine.close()
    # A leak fails its own test (each ends with `left_behind() == []`); removing it here keeps
    # it from failing the next tests too. Only this process's containers: ours to remove.
    client = docker_client()
    try:
        for listed in own_containers(client):
            client.api.remove_container(listed["Id"], force=True)
    finally:
        client.close()


def pool_of(engine: Engine) -> WarmPool:
    pool = engine.runner.pool
    assert pool is not None, "pool_size > 0 but the runner has no warm pool"
    return pool


def run(engine: Engine) -> RunOutcome:
    backtest_id = f"bt_pool_{time.monotonic_ns()}"
    return engine.run(RunRequest(backtest_id=backtest_id, code=SMA_CROSS, config=CONFIG))


def provenance(outcome: RunOutcome) -> Provenance:
    assert outcome.status == JobStatus.COMPLETED, outcome.error
    assert outcome.result is not None
    return outcome.result.provenance


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.1)


def own_containers(client: docker.DockerClient, *labels: str) -> list[dict[str, Any]]:
    """Containers this test process started (with `labels` too), as Docker lists them."""
    owner = f"{LABEL_OWNER}={process_owner_id()}"
    found: list[dict[str, Any]] = client.api.containers(
        all=True, filters={"label": [owner, *labels]}
    )
    return found


def pool_containers(client: docker.DockerClient) -> dict[str, bool]:
    """This process's idle warm containers as Docker lists them: id -> running."""
    listed = own_containers(client, f"{LABEL_RUN}={POOL_LABEL}")
    return {c["Id"]: c["State"] == "running" for c in listed}


def wait_for_one_idle(client: docker.DockerClient, pool: WarmPool, *, not_: str = "") -> str:
    """The id of the pool's one idle container, once it has one (other than `not_`)."""

    def ready() -> bool:
        listed = pool_containers(client)
        return pool.idle_count() == 1 and len(listed) == 1 and not_ not in listed

    wait_until(ready, f"one idle warm container (other than {not_[:12] or 'none'})")
    (container_id, running), *_ = pool_containers(client).items()
    assert running
    return container_id


def exists(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return False
    return True


# --- tests -------------------------------------------------------------------------------------


def test_a_run_takes_the_idle_warm_container(make_engine, client) -> None:
    engine = make_engine(pool_size=1)
    idle = wait_for_one_idle(client, pool_of(engine))

    used = provenance(run(engine))

    assert used.warm is True
    assert used.container_id == idle
    engine.close()
    assert left_behind() == []


def test_a_warm_container_serves_one_run_only(make_engine, client) -> None:
    engine = make_engine(pool_size=1)
    wait_for_one_idle(client, pool_of(engine))

    first = provenance(run(engine))
    assert first.warm is True and first.container_id is not None
    assert not exists(client, first.container_id)  # removed as the run ended

    second = provenance(run(engine))
    assert second.container_id is not None
    assert second.container_id != first.container_id
    assert not exists(client, second.container_id)
    engine.close()
    assert left_behind() == []


def test_the_pool_refills_after_a_take(make_engine, client) -> None:
    engine = make_engine(pool_size=1)
    pool = pool_of(engine)
    taken = wait_for_one_idle(client, pool)

    assert provenance(run(engine)).container_id == taken

    replacement = wait_for_one_idle(client, pool, not_=taken)
    assert replacement != taken
    assert not exists(client, taken)
    # And the replacement is the one the next run takes.
    again = provenance(run(engine))
    assert again.warm is True and again.container_id == replacement
    engine.close()
    assert left_behind() == []


def test_an_idle_container_past_its_max_age_is_replaced(make_engine, client) -> None:
    engine = make_engine(pool_size=1, pool_max_age_seconds=2)
    pool = pool_of(engine)
    old = wait_for_one_idle(client, pool)

    wait_until(lambda: not exists(client, old), f"the expired container {old[:12]} removed")
    new = wait_for_one_idle(client, pool, not_=old)
    assert new != old
    engine.close()
    assert left_behind() == []


def test_a_dead_warm_container_means_a_cold_run(make_engine, client) -> None:
    engine = make_engine(pool_size=1)
    dead = wait_for_one_idle(client, pool_of(engine))
    client.api.kill(dead)  # from outside, as an operator or the OOM killer might
    wait_until(lambda: pool_containers(client).get(dead) is False, "the warm container stopped")

    used = provenance(run(engine))

    assert used.warm is False
    assert used.container_id not in (None, dead)
    assert not exists(client, dead)  # the dead one is removed, not left behind
    assert not exists(client, str(used.container_id))
    engine.close()
    assert left_behind() == []


def test_close_removes_every_idle_container(make_engine, client) -> None:
    engine = make_engine(pool_size=2)
    pool = pool_of(engine)
    wait_until(
        lambda: pool.idle_count() == 2 and len(pool_containers(client)) == 2,
        "two idle warm containers",
    )
    idle = list(pool_containers(client))

    engine.close()

    assert pool.idle_count() == 0
    assert pool_containers(client) == {}
    assert [c for c in idle if exists(client, c)] == []
    assert left_behind() == []


def test_close_while_a_replacement_starts_leaves_nothing(make_engine, client) -> None:
    engine = make_engine(pool_size=1)
    wait_for_one_idle(client, pool_of(engine))
    assert provenance(run(engine)).warm is True  # the take wakes the refill thread

    engine.close()  # at once: the replacement is likely still starting

    assert pool_containers(client) == {}
    assert left_behind() == []

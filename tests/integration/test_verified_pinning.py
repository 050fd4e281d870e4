"""A verified run's container is pinned to one CPU (sandbox/cpus.py), in a container of its
own and in a sweep's session; a fast run's is not. Against the real daemon and image (runc):
the strategy prints the CPUs it may run on, as the kernel tells it."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.models import JobStatus, RunOutcome
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER

pytestmark = DOCKER

AFFINITY = """
import os
import backtrader as bt

class Affinity(bt.Strategy):
    def __init__(self):
        print("CPUS", sorted(os.sched_getaffinity(0)))
"""
BASE = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2010-01-01", "end_date": "2010-06-30"}


@pytest.fixture
def engine(data_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path / "state", runtime="runc")
    engine = Engine(settings)
    try:
        yield engine
    finally:
        engine.close()


def cpus_seen(engine: Engine, mode: str, session: str | None = None) -> list[int]:
    config = BacktestConfig.model_validate({**BASE, "mode": mode})
    request = RunRequest(
        backtest_id=f"bt_{time.monotonic_ns()}", code=AFFINITY, config=config, session=session
    )
    outcome: RunOutcome = engine.run(request)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    (found,) = re.findall(r"^CPUS \[(.*)\]$", outcome.logs, re.M)
    return [int(cpu) for cpu in found.split(",")]


def test_a_verified_runs_container_has_one_cpu_and_a_fast_runs_all(engine: Engine) -> None:
    everything = sorted(os.sched_getaffinity(0))
    if len(everything) < 2:
        pytest.fail("this test needs a host with two CPUs or more")
    assert cpus_seen(engine, "fast") == everything
    assert len(cpus_seen(engine, "verified")) == 1
    in_session = [cpus_seen(engine, "verified", session="sweep-1") for _ in range(2)]
    assert all(len(cpus) == 1 for cpus in in_session)

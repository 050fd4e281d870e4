"""Sessions: a sweep's combinations run one after another in one container, a fork each.

Against the real daemon and runner image (runc), through the real `Engine`, as the scheduler
calls it for a sweep's combinations (`RunRequest.session` is the sweep). Each test checks what
a user reads (the verdict, the logs, the numbers) and what Docker lists: nothing of one run
reaches the next (files, processes), the harness's parent cannot be reached from a run, a run
that breaks its container gets its own verdict and the next run a new container, and no
container outlives the session.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.models import JobStatus, RunOutcome
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from backtest_sandbox.sandbox import runner as runner_module
from backtest_sandbox.sandbox.containers import docker_client
from tests.conftest import DOCKER, left_behind
from tests.integration.test_pool import own_containers

pytestmark = DOCKER

KEEP_SECONDS = 2.0
BASE = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2010-01-01", "end_date": "2010-12-31"}

# Prints what it finds of earlier runs, then leaves some behind: a file in /tmp and in
# /dev/shm, and a process that would sleep for ten minutes.
PROBE = """
import ctypes
import os
import backtrader as bt

def sysv(table):
    with open(f"/proc/sysvipc/{table}") as listing:
        return len(listing.readlines()) - 1

class Probe(bt.Strategy):
    params = dict(tag=0, hog=0, spin=0, kill_parent=0)

    def __init__(self):
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(f"TAG {self.p.tag} TMP {sorted(os.listdir('/tmp'))} "
              f"SHM {sorted(os.listdir('/dev/shm'))} MQ {sorted(os.listdir('/dev/mqueue'))} "
              f"SYSV {sysv('shm')} {sysv('msg')} {sysv('sem')} PROCS {len(pids)}")
        try:
            os.listdir(f"/proc/{os.getppid()}/fd")
            print("PARENT FDS READABLE")
        except PermissionError:
            print("PARENT FDS REFUSED")
        try:
            open(f"/proc/{os.getppid()}/mem", "rb").read(1)
            print("PARENT MEM READABLE")
        except OSError:
            print("PARENT MEM REFUSED")
        open(f"/tmp/mark-{self.p.tag}", "w").write("x")
        open(f"/dev/shm/mark-{self.p.tag}", "w").write("x")
        open(f"/dev/mqueue/mark-{self.p.tag}", "w").close()
        libc = ctypes.CDLL(None)
        assert libc.shmget(0, 4096, 0o1600) >= 0  # IPC_PRIVATE, IPC_CREAT | 0600
        assert libc.msgget(0, 0o1600) >= 0
        assert libc.semget(0, 1, 0o1600) >= 0
        if os.fork() == 0:
            import time
            time.sleep(600)
            os._exit(0)
        if self.p.kill_parent:
            os.kill(os.getppid(), 9)

    def next(self):
        if self.p.hog:
            hoard = [b"x" * (64 << 20) for _ in range(64)]
        while self.p.spin:
            pass
"""


@pytest.fixture
def engine(data_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    settings = Settings(
        data_dir=data_dir,
        state_dir=tmp_path / "state",
        runtime="runc",
        pool_size=0,
        session_keep_seconds=KEEP_SECONDS,
    )
    engine = Engine(settings)
    try:
        yield engine
    finally:
        engine.close()


def run(
    engine: Engine, mode: str = "fast", session: str | None = "sweep-1", **params: int
) -> RunOutcome:
    config = BacktestConfig.model_validate(
        {**BASE, "mode": mode, "params": params, "memory_mb": 256, "timeout_seconds": 10}
    )
    request = RunRequest(
        backtest_id=f"bt_{time.monotonic_ns()}", code=PROBE, config=config, session=session
    )
    return engine.run(request)


def container_of(outcome: RunOutcome) -> str:
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert outcome.result is not None and outcome.result.provenance.container_id
    return outcome.result.provenance.container_id


def probe_line(outcome: RunOutcome) -> str:
    found = re.findall(r"^TAG .*$", outcome.logs, re.M)
    assert len(found) == 1, outcome.logs  # its own output, and only its own
    return found[0]


def test_runs_share_a_container_and_nothing_else(engine: Engine) -> None:
    outcomes = [run(engine, mode, tag=tag) for tag, mode in enumerate(["fast", "verified"] * 2)]
    containers = {container_of(outcome) for outcome in outcomes}
    assert len(containers) == 1, "the session's runs did not share its container"
    for tag, outcome in enumerate(outcomes):
        # init, the harness's parent and this run: the earlier runs' sleepers are gone, and so
        # are their files, message queues and System V objects.
        assert probe_line(outcome) == f"TAG {tag} TMP [] SHM [] MQ [] SYSV 0 0 0 PROCS 3"
        assert "PARENT FDS REFUSED" in outcome.logs and "PARENT MEM REFUSED" in outcome.logs
        assert outcome.warm is (tag > 0)


def test_the_numbers_equal_a_run_in_a_container_of_its_own(engine: Engine) -> None:
    alone = run(engine, "verified", session=None, tag=7)
    first, second = run(engine, "verified", tag=7), run(engine, "verified", tag=7)
    assert container_of(first) == container_of(second) != container_of(alone)
    for outcome in (first, second):
        assert outcome.result is not None and alone.result is not None
        assert outcome.result.metrics == alone.result.metrics
        assert outcome.result.equity_curve == alone.result.equity_curve


@pytest.mark.parametrize(
    ("params", "error_type", "kept"),
    [
        ({"hog": 1}, ErrorType.MEMORY_LIMIT, True),  # the kernel kills the run, not the parent
        ({"spin": 1}, ErrorType.TIMEOUT, False),  # the host kills the whole container
        ({"kill_parent": 1}, ErrorType.CRASHED, False),  # the container ends with its parent
    ],
    ids=["oom", "timeout", "parent-killed"],
)
def test_a_run_that_breaks_gets_its_verdict_and_the_next_run_completes(
    engine: Engine, params: dict[str, int], error_type: ErrorType, kept: bool
) -> None:
    before = container_of(run(engine, tag=1))
    broken = run(engine, tag=2, **params)
    assert broken.status is JobStatus.FAILED and broken.error is not None
    assert broken.error.type is error_type, broken.error
    after = run(engine, tag=3)
    assert probe_line(after) == "TAG 3 TMP [] SHM [] MQ [] SYSV 0 0 0 PROCS 3"
    assert (container_of(after) == before) is kept


def test_no_container_outlives_the_session(engine: Engine) -> None:
    run(engine, tag=1)
    client = docker_client()
    try:
        assert len(own_containers(client)) == 1  # kept for the sweep's next combination
        deadline = time.monotonic() + KEEP_SECONDS + 10
        while own_containers(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert own_containers(client) == []
    finally:
        client.close()
    assert left_behind() == []


def test_closing_the_engine_removes_idle_sessions(data_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=data_dir, state_dir=tmp_path / "state", runtime="runc", pool_size=0
    )
    engine = Engine(settings)
    try:
        container_of(run(engine, tag=1))
        container_of(run(engine, session="sweep-2", tag=1))
    finally:
        engine.close()
    client = docker_client()
    try:
        assert own_containers(client) == []
    finally:
        client.close()


def test_a_session_lives_on_past_its_idle_limit_while_runs_keep_coming(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's own deadline (init.py) moves on with the runs' specs: here the
    session's idle limit is 1.5 s, and runs go on for 6 s in one container. (That a run gone
    before init looked still moves it on is tests/unit/test_init_deadline.py's to prove.)"""
    monkeypatch.setattr(runner_module, "SESSION_IDLE_SLACK_SECONDS", 1.0)
    settings = Settings(
        data_dir=data_dir,
        state_dir=tmp_path / "state",
        runtime="runc",
        pool_size=0,
        session_keep_seconds=0.5,
    )
    engine = Engine(settings)
    try:
        containers = set()
        started = time.monotonic()
        tag = 0
        while time.monotonic() - started < 6:
            containers.add(container_of(run(engine, tag=tag)))
            tag += 1
        assert len(containers) == 1 and tag > 10
    finally:
        engine.close()

"""Past one machine, end to end (issue 15): two `serve --transport http` processes and three
`backtest-sandbox worker` processes on one Temporal dev server and one PostgreSQL store, the
real daemon and runner image, driven by the official MCP client.

- twelve runs submitted across both servers all complete, with the metrics of the same run
  on the local engine;
- a worker SIGKILLed mid-run: its run completes on another worker, no container is left;
- a cancel through the other server kills the container;
- two tenants on one slot run interleaved (Temporal's fairness keys).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from tests.conftest import DOCKER, left_behind
from tests.mcp_helpers import call, connect_http, wait_until_listening
from tests.strategies import SMA_CROSS, strategy_with

pytestmark = [*DOCKER, pytest.mark.slow, pytest.mark.anyio]

TOKENS = {"alpha": "temporal-e2e-alpha-0123456789", "beta": "temporal-e2e-beta-0123456789"}
# Short and in fast mode: the backend is under test here, not the mode (verified parity has
# its own tests).
CONFIG = {
    "symbol": "IDX",
    "timeframe": "D1",
    "start_date": "2006-01-01",
    "end_date": "2006-12-31",
    "mode": "fast",
}
HEARTBEAT = 3.0


def sleepy(seconds_per_bar: float, tag: str) -> str:
    """A strategy that takes seconds_per_bar x 255 bars; `tag` makes its code unique."""
    return strategy_with(f"time.sleep({seconds_per_bar})  # {tag}", imports="import time")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Servers and workers as subprocesses over one environment."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[Process] = []

    def _start(self, name: str, *args: str) -> Process:
        log = self.logs / f"{name}.log"
        # A state directory per process, as on machines of their own: results travel through
        # PostgreSQL only (docs/SCALING.md).
        env = {**self.env, "BACKTEST_STATE_DIR": str(self.logs / f"state-{name}")}
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "backtest_sandbox", *args],
                env=env,
                stdout=out,
                stderr=out,
            )
        started = Process(name, process, log)
        self.processes.append(started)
        return started

    def server(self, name: str) -> str:
        port = free_port()
        process = self._start(name, "serve", "--transport", "http", "--port", str(port))
        if not wait_until_listening(process.process, port):
            raise RuntimeError(f"{name} did not start:\n{process.log.read_text()[-3000:]}")
        return f"http://127.0.0.1:{port}/mcp"

    def worker(self, name: str) -> Process:
        process = self._start(name, "worker", "--slots", "1")
        deadline = time.monotonic() + 60
        while "slot(s) on task queue" not in process.log.read_text():
            if process.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{process.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def cluster(
    data_dir: Path, tmp_path: Path, temporal_address: str, postgres_url: str
) -> Iterator[Cluster]:
    env = {
        **os.environ,
        "BACKTEST_BACKEND": "temporal",
        "BACKTEST_TEMPORAL_ADDRESS": temporal_address,
        "BACKTEST_TEMPORAL_TASK_QUEUE": f"e2e-{tmp_path.name}",
        "BACKTEST_TEMPORAL_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "BACKTEST_DATABASE_URL": postgres_url,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_POOL_SIZE": "0",  # every labelled container is then a running backtest
        "BACKTEST_API_TOKENS": ",".join(f"{t}:{tenant}" for tenant, t in TOKENS.items()),
    }
    started = Cluster(env, tmp_path)
    yield started
    started.stop()


async def until_status(client: Client, backtest_id: str, *wanted: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:
            status = await call(client, "get_backtest_status", backtest_id=backtest_id)
            if status["status"] in wanted:
                return status
            await anyio.sleep(0.1)


def containers_of(backtest_id: str) -> list[dict[str, Any]]:
    from backtest_sandbox.sandbox.containers import LABEL_RUN, docker_client

    client = docker_client()
    try:
        wanted = {"label": f"{LABEL_RUN}={backtest_id}"}
        return list(client.api.containers(all=True, filters=wanted))
    finally:
        client.close()


async def until_container(backtest_id: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        while not (found := [c for c in containers_of(backtest_id) if c["State"] == "running"]):
            await anyio.sleep(0.1)
    return found[0]


def local_metrics(data_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The same run on the local engine, in this process."""
    from backtest_sandbox.domain.config import BacktestConfig
    from backtest_sandbox.domain.settings import Settings
    from backtest_sandbox.jobs.engine import Engine, RunRequest

    engine = Engine(Settings(data_dir=data_dir, state_dir=tmp_path / "local", pool_size=0))
    try:
        outcome = engine.run(
            RunRequest(
                backtest_id="bt_" + "0" * 32,
                code=SMA_CROSS,
                config=BacktestConfig.model_validate(CONFIG),
            )
        )
    finally:
        engine.close()
    assert outcome.result is not None, outcome.error
    return dict(outcome.result.metrics)


@pytest.mark.timeout(300)
async def test_two_servers_three_workers(cluster: Cluster, data_dir: Path, tmp_path: Path) -> None:
    from backtest_sandbox.sandbox.containers import LABEL_OWNER

    urls = [cluster.server("server-a"), cluster.server("server-b")]
    workers = [cluster.worker(f"worker-{n}") for n in range(3)]
    expected = local_metrics(data_dir, tmp_path)

    async with (
        connect_http(urls[0], TOKENS["alpha"], read_timeout_seconds=60) as a,
        connect_http(urls[1], TOKENS["alpha"], read_timeout_seconds=60) as b,
    ):
        # Twelve runs across both servers; each code unique, so none is a cache hit.
        ids = []
        for n in range(12):
            code = SMA_CROSS + f"\n# run {n}\n"
            submitted = await call((a, b)[n % 2], "run_backtest", code_content=code, config=CONFIG)
            assert submitted["cached"] is False
            ids.append(submitted["backtest_id"])
        for n, backtest_id in enumerate(ids):
            # Read through the server that did not take it: the store is shared.
            status = await until_status((b, a)[n % 2], backtest_id, "completed", "failed")
            assert status["status"] == "completed", status["error"]
            assert status["result"]["metrics"] == expected

        # A worker SIGKILLed mid-run: another worker runs it again after the heartbeat timeout.
        doomed = await call(a, "run_backtest", code_content=sleepy(0.02, "doomed"), config=CONFIG)
        container = await until_container(doomed["backtest_id"])
        owner_pid = int(container["Labels"][LABEL_OWNER].split(":")[1])
        (victim,) = [w for w in workers if w.process.pid == owner_pid]
        victim.kill()
        killed = time.monotonic()
        status = await until_status(b, doomed["backtest_id"], "completed", "failed", "cancelled")
        assert status["status"] == "completed", status["error"]
        assert time.monotonic() - killed < HEARTBEAT + 30
        survivors = [w for w in workers if w is not victim]

        # A cancel through the other server kills the container.
        long_one = await call(a, "run_backtest", code_content=sleepy(1.0, "long"), config=CONFIG)
        await until_container(long_one["backtest_id"])
        asked = time.monotonic()
        cancelled = await call(b, "cancel_backtest", backtest_id=long_one["backtest_id"])
        assert cancelled["status"] == "cancelled"
        with anyio.fail_after(HEARTBEAT + 10):
            while containers_of(long_one["backtest_id"]):
                await anyio.sleep(0.1)
        cancel_seconds = time.monotonic() - asked
        assert cancel_seconds < HEARTBEAT + 10

        # Two tenants on one slot: with the fairness key, beta's runs do not wait for every
        # one of alpha's.
        survivors[1].stop()
        async with connect_http(urls[1], TOKENS["beta"], read_timeout_seconds=60) as beta:
            # It holds the slot until every run below is queued, then is cancelled: how fast
            # the submissions go cannot decide the order.
            blocker = await call(
                a, "run_backtest", code_content=sleepy(0.2, "blocker"), config=CONFIG
            )
            await until_container(blocker["backtest_id"])
            order = []
            for n in range(4):
                code = SMA_CROSS + f"\n# alpha {n}\n"
                order.append(
                    ("alpha", a, await call(a, "run_backtest", code_content=code, config=CONFIG))
                )
            for n in range(2):
                code = SMA_CROSS + f"\n# beta {n}\n"
                order.append(
                    (
                        "beta",
                        beta,
                        await call(beta, "run_backtest", code_content=code, config=CONFIG),
                    )
                )
            await call(a, "cancel_backtest", backtest_id=blocker["backtest_id"])
            started = []
            for tenant, client, submitted in order:
                status = await until_status(client, submitted["backtest_id"], "completed")
                started.append((status["started_at"], tenant))
        ran = [tenant for _, tenant in sorted(started)]
        # First in, first out would be alpha x4 then beta x2.
        assert ran.index("beta") < 4, ran

    assert not left_behind()
    print(f"cancel took {cancel_seconds:.2f} s; fair order {ran}")

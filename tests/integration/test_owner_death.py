"""No run outlives its owner.

A CI job that is cancelled (SIGTERM), a Ctrl-C (SIGINT), a closed terminal (SIGHUP): the CLI
cancels the run, and its container is killed and removed before it exits. A CLI or a server
that is SIGKILLed cannot clean up: then the container ends by itself (its PID 1,
runner_image/init.py, holds a deadline of the run's timeout plus a grace, and an idle warm
container's of the pool's max age plus a slack), with no other process of ours started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import DOCKER, LABEL
from tests.mcp_helpers import call, connect_http, wait_until_listening
from tests.strategies import strategy_with

pytestmark = DOCKER

BUSY = strategy_with("while True:\n    pass")
TIMEOUT = 5.0  # the runs' timeout_seconds
BOUND = TIMEOUT + 15.0  # the bound: no running container after this long
ARGS = ["--symbol", "ORCL", "--timeframe", "D1", "--start", "2010-01-01", "--end", "2010-12-31"]


@pytest.fixture
def docker() -> Iterator[Any]:
    from backtest_sandbox.sandbox.containers import docker_client

    client = docker_client()
    yield client
    client.close()


def owned_by(client: Any, owner: str) -> list[dict[str, Any]]:
    from backtest_sandbox.sandbox.containers import LABEL_OWNER

    listed = client.api.containers(all=True, filters={"label": LABEL})
    return [c for c in listed if (c.get("Labels") or {}).get(LABEL_OWNER) == owner]


def wait_for_running(client: Any, owner: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len([c for c in owned_by(client, owner) if c["State"] == "running"]) < count:
        assert time.monotonic() < deadline, f"no running container of {owner}"
        time.sleep(0.1)


def seconds_until_none_running(client: Any, owner: str, bound: float) -> float:
    """How long until no container of `owner` runs; fails past `bound`."""
    started = time.monotonic()
    while any(c["State"] == "running" for c in owned_by(client, owner)):
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"still running after {elapsed:.0f} s: {owned_by(client, owner)}"
        time.sleep(0.2)
    return time.monotonic() - started


def remove_all(client: Any, owner: str) -> None:
    """The stopped containers a killed owner could not remove (orphans for the next start)."""
    for listed in owned_by(client, owner):
        client.api.remove_container(listed["Id"], force=True)


def start_cli(
    strategy: Path, env_extra: dict[str, str], data_dir: Path, state: Path
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(state),
        **env_extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "backtest_sandbox", "run", str(strategy), *ARGS,
         "--timeout", str(TIMEOUT if env_extra.get("short") else 120), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_cancels_the_cli_run(
    signum: int, docker: Any, data_dir: Path, tmp_path: Path, write_strategy: Any
) -> None:
    from backtest_sandbox.sandbox.containers import process_owner_id

    cli = start_cli(write_strategy(BUSY), {}, data_dir, tmp_path / "state")
    owner = process_owner_id(cli.pid)
    try:
        wait_for_running(docker, owner)
        cli.send_signal(signum)
        stdout, stderr = cli.communicate(timeout=30)
    finally:
        cli.kill()
        cli.communicate()
    assert cli.returncode == 128 + signum, stderr[-2000:]
    status = json.loads(stdout)
    assert (status["status"], status["error"], status["result"]) == ("cancelled", None, None)
    assert owned_by(docker, owner) == []  # killed and removed, not just stopped


def test_a_killed_cli_leaves_no_running_container(
    docker: Any, data_dir: Path, tmp_path: Path, write_strategy: Any
) -> None:
    from backtest_sandbox.sandbox.containers import process_owner_id

    cli = start_cli(write_strategy(BUSY), {"short": "1"}, data_dir, tmp_path / "state")
    owner = process_owner_id(cli.pid)
    try:
        wait_for_running(docker, owner)
        cli.kill()
        cli.communicate(timeout=10)
        seconds_until_none_running(docker, owner, BOUND)
    finally:
        cli.kill()
        cli.communicate()
        remove_all(docker, owner)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_killed_server_leaves_no_running_container(
    docker: Any, data_dir: Path, tmp_path: Path, free_tcp_port: int
) -> None:
    """A server with a warm pool is SIGKILLed while a run is busy: the run's container and the
    idle warm one both end by themselves."""
    from backtest_sandbox.sandbox.containers import process_owner_id

    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(tmp_path / "state"),
        "BACKTEST_MAX_WORKERS": "1",
        "BACKTEST_POOL_SIZE": "1",
        "BACKTEST_POOL_MAX_AGE_SECONDS": "3",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "backtest_sandbox", "serve", "--transport", "http",
             "--port", str(free_tcp_port), "--insecure-no-auth"],
            env=env, stdout=out, stderr=out,
        )
    owner = process_owner_id(server.pid)
    try:
        assert wait_until_listening(server, free_tcp_port), log.read_text()
        url = f"http://127.0.0.1:{free_tcp_port}/mcp"
        config = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2010-01-01",
                  "end_date": "2010-12-31", "timeout_seconds": TIMEOUT}
        async with connect_http(url, "unused", read_timeout_seconds=60) as client:
            submitted = await call(client, "run_backtest", code_content=BUSY, config=config)
            with anyio.fail_after(60):
                while (await call(
                    client, "get_backtest_status", backtest_id=submitted["backtest_id"]
                ))["status"] != "running":
                    await anyio.sleep(0.05)
        wait_for_running(docker, owner, count=2)  # the busy run, and the pool's refill
        server.kill()
        server.wait(10)
        seconds_until_none_running(docker, owner, BOUND)
    finally:
        server.kill()
        remove_all(docker, owner)

"""Two tenants on one `backtest-sandbox serve --transport http`, driven by the official mcp
client with a bearer token each, against the real daemon and runner image: 401s before any
tool runs, isolation on every tool and in the cache, the queued quota, fair scheduling, and
audit lines that never hold a token or the code."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client

from tests.conftest import DOCKER
from tests.mcp_helpers import call, connect_http, error, wait_until_listening

pytestmark = [*DOCKER, pytest.mark.slow, pytest.mark.anyio]

TOKEN_A = "tenant-a-token-5f1c9e0b7d2a4e61"
TOKEN_B = "tenant-b-token-a83d26c4f09b1e75"
CONFIG = {"symbol": "IDX", "timeframe": "D1", "start_date": "2006-01-01", "end_date": "2006-12-31"}
TERMINAL = ("completed", "failed", "cancelled")
UNKNOWN_ID = "bt_" + "0" * 32

SMA_CROSS = """
import backtrader as bt

class SmaCross(bt.Strategy):
    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=5), bt.ind.SMA(period=20))

    def next(self):
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()
"""


def short(tag: str) -> str:
    """A quick strategy; `tag` makes its code unique, so that it is never a cache hit."""
    return f"import backtrader as bt\n\nclass S(bt.Strategy):\n    pass  # {tag}\n"


def slow(tag: str) -> str:
    """About 50 s (0.2 s x 255 bars): running until cancelled, as far as a test is concerned."""
    return (
        "import time\nimport backtrader as bt\n\n"
        f"class S(bt.Strategy):\n    def next(self):\n        time.sleep(0.2)  # {tag}\n"
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """`backtest-sandbox serve --transport http` with two tenants, in a subprocess."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backtest_sandbox", "serve", "--transport", "http",
                 "--port", str(port)],
                env=env, stdout=out, stderr=out,
            )
        if not wait_until_listening(self.process, port):
            self.stop()
            raise RuntimeError(f"the server did not start: {log.read_text()}")

    def stop(self) -> str:
        """Stop the server (its running containers are killed) and return its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.log.read_text()


@pytest.fixture
def serve(
    data_dir: Path, tmp_path: Path, free_tcp_port: int
) -> Iterator[Callable[..., Server]]:
    """Starts the server with one worker and no warm pool; at the end, its log must hold
    neither token, nor the wrong one a test sent."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        full_env = {
            **os.environ,
            "BACKTEST_DATA_DIR": str(data_dir),
            "BACKTEST_STATE_DIR": str(tmp_path / "state"),
            "BACKTEST_MAX_WORKERS": "1",
            "BACKTEST_POOL_SIZE": "0",
            "BACKTEST_API_TOKENS": f"{TOKEN_A}:tenant_a,{TOKEN_B}:tenant_b",
            **env,
        }
        server = Server(full_env, free_tcp_port, tmp_path / "server.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        log = server.stop()
        assert TOKEN_A not in log and TOKEN_B not in log and "wrong-token" not in log


def connect(server: Server, token: str) -> AbstractAsyncContextManager[Client]:
    return connect_http(server.url, token, read_timeout_seconds=60)


async def until(client: Client, backtest_id: str, *statuses: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            status = await call(client, "get_backtest_status", backtest_id=backtest_id)
            if status["status"] in statuses:
                return status
            await anyio.sleep(0.05)


async def submit(client: Client, code: str) -> str:
    return (await call(client, "run_backtest", code_content=code, config=CONFIG))["backtest_id"]


async def test_no_token_or_a_wrong_one_is_401_before_any_tool_runs(
    serve: Callable[..., Server],
) -> None:
    server = serve()
    run = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "run_backtest", "arguments": {"code_content": SMA_CROSS,
                                                        "config": CONFIG}},
    }
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient() as http:
        for authorization in (None, "Bearer wrong-token", f"Bearer {TOKEN_A}-wrong-token"):
            sent = headers | ({"authorization": authorization} if authorization else {})
            response = await http.post(server.url, json=run, headers=sent)
            assert response.status_code == 401, response.text
            assert response.json() == {
                "error": "invalid_token",
                "error_description": "Authentication required",
            }
            assert response.headers["www-authenticate"].startswith("Bearer ")
    for token in (TOKEN_A, TOKEN_B):  # nothing was queued for anyone
        async with connect(server, token) as client:
            assert (await call(client, "get_queue_stats"))["total"] == 0


async def test_a_tenant_sees_nothing_of_another(serve: Callable[..., Server]) -> None:
    server = serve()
    async with connect(server, TOKEN_A) as a, connect(server, TOKEN_B) as b:
        done = await submit(a, SMA_CROSS)
        result = await until(a, done, *TERMINAL)
        assert result["status"] == "completed", result["error"]
        running = await submit(a, slow("a's running job"))
        await until(a, running, "running")

        # Every tool answers another tenant's id exactly as an id that does not exist.
        for backtest_id in (done, running):
            for tool, extra in [
                ("get_backtest_status", {}),
                ("read_backtest", {}),
                ("read_backtest_orders", {}),
                ("read_backtest_chart", {"name": "equity"}),
                ("cancel_backtest", {}),
                ("delete_backtest", {}),
            ]:
                foreign = await error(b, tool, backtest_id=backtest_id, **extra)
                unknown = await error(b, tool, backtest_id=UNKNOWN_ID, **extra)
                assert foreign == unknown.replace(UNKNOWN_ID, backtest_id)
                assert foreign == (
                    f"backtest_id: no backtest {backtest_id!r}"
                )
        assert await call(b, "list_backtests") == {"backtests": [], "next_cursor": None}
        assert (await call(b, "get_queue_stats"))["total"] == 0

        # B's cancel and delete changed nothing of A's.
        assert (await call(a, "get_backtest_status", backtest_id=running))["status"] == "running"
        assert (await call(a, "read_backtest", backtest_id=done))["metrics"] == (
            result["result"]["metrics"]
        )
        listed = await call(a, "list_backtests")
        assert {j["backtest_id"] for j in listed["backtests"]} == {done, running}
        cancelled = await call(a, "cancel_backtest", backtest_id=running)
        assert cancelled == {"backtest_id": running, "status": "cancelled"}

        # The cache never hands A's result to B: B's identical run is its own.
        mine = await call(b, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
        assert (mine["status"], mine["cached"]) == ("queued", False)
        again = await call(a, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
        assert (again["status"], again["cached"]) == ("completed", True)  # A's cache is warm
        own = await until(b, mine["backtest_id"], *TERMINAL)
        assert own["status"] == "completed" and own["cached"] is False
        assert own["result"]["backtest_id"] == mine["backtest_id"]

    # The audit trail: who did what to which job, by code hash; never the code.
    log = server.stop()
    sma = hashlib.sha256(SMA_CROSS.encode()).hexdigest()
    for line in [
        f"submit tenant=tenant_a backtest_id={done} code_sha256={sma} status=queued cached=false",
        f"finish tenant=tenant_a backtest_id={done} code_sha256={sma} status=completed",
        f"cancel tenant=tenant_b backtest_id={running} code_sha256=- status=not_found",
        f"delete tenant=tenant_b backtest_id={done} code_sha256=- status=not_found",
        f"cancel tenant=tenant_a backtest_id={running} code_sha256=",
        f"submit tenant=tenant_b backtest_id={mine['backtest_id']} code_sha256={sma} "
        "status=queued cached=false",
        f"submit tenant=tenant_a backtest_id={again['backtest_id']} code_sha256={sma} "
        "status=completed cached=true",
    ]:
        assert f"INFO backtest_sandbox.audit: {line}" in log
    assert "SmaCross" not in log


async def test_the_queued_quota(serve: Callable[..., Server]) -> None:
    server = serve(BACKTEST_TENANT_MAX_QUEUED="3")
    async with connect(server, TOKEN_A) as a, connect(server, TOKEN_B) as b:
        first = await submit(a, slow("running"))
        await until(a, first, "running")  # the one worker is busy: the rest wait
        queued = [await submit(a, short(f"queued {n}")) for n in range(3)]
        message = await error(a, "run_backtest", code_content=short("one more"), config=CONFIG)
        assert message == (
            "tenant_max_queued: 3 of your backtests are "
            "queued, the most a tenant may have waiting; cancel some or wait until they start"
        )
        stats = await call(a, "get_queue_stats")
        assert (stats["queued"], stats["running"], stats["total"]) == (3, 1, 4)
        other = await call(b, "run_backtest", code_content=short("b"), config=CONFIG)
        assert other["status"] == "queued"  # the quota is per tenant
        for backtest_id in (first, *queued):
            await call(a, "cancel_backtest", backtest_id=backtest_id)
        await until(b, other["backtest_id"], "completed")


async def test_one_tenants_flood_does_not_hold_back_anothers_job(
    serve: Callable[..., Server],
) -> None:
    server = serve()
    async with connect(server, TOKEN_A) as a, connect(server, TOKEN_B) as b:
        flood = [await submit(a, short(f"flood {n}")) for n in range(20)]
        single = await submit(b, short("single"))
        mine = await until(b, single, "completed")

        jobs = (await call(a, "list_backtests", limit=50))["backtests"]
        assert {j["backtest_id"] for j in jobs} == set(flood)
        started = sorted(j["started_at"] for j in jobs if j["started_at"])
        submitted, began = mine["created_at"], mine["started_at"]
        # Once B's job is queued, the next free worker takes it: at most one of A's jobs may
        # start in between, claimed in the instant B's job was being written.
        assert len([t for t in started if submitted <= t < began]) <= 1, (mine, started)
        # B's job started while most of A's 20 were still waiting.
        assert len([t for t in started if t < began]) <= 3, (mine, started)
        for backtest_id in flood:
            await call(a, "cancel_backtest", backtest_id=backtest_id)

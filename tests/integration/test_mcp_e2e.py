"""`backtest-sandbox serve` driven by the official mcp client, over stdio and streamable HTTP,
against the real daemon and runner image."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import ImageContent, TextContent

from tests.conftest import DOCKER, LABEL, left_behind
from tests.mcp_helpers import call, connect_http, error, wait_until_listening
from tests.strategies import SMA_CROSS, strategy_with

pytestmark = [*DOCKER, pytest.mark.slow, pytest.mark.anyio]

# HTTP needs a token (tests/integration/test_multitenant_e2e.py has the tenants); its tenant is
# the same local one stdio serves.
HTTP_TOKEN = "mcp-e2e-token-0123456789"
CONFIG = {"symbol": "IDX", "timeframe": "D1", "start_date": "2006-01-01", "end_date": "2006-12-31"}

def slow(seconds_per_bar: float, tag: str = "") -> str:
    """A strategy that takes seconds_per_bar x 255 bars; `tag` makes its code unique."""
    return strategy_with(f"time.sleep({seconds_per_bar})  # {tag}", imports="import time")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server_env(data_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(tmp_path / "state"),
        "BACKTEST_MAX_WORKERS": "2",
        "BACKTEST_POOL_SIZE": "0",  # every labelled container is then a running backtest
        "BACKTEST_API_TOKENS": f"{HTTP_TOKEN}:local",
    }


def stdio_client(env: dict[str, str]) -> Client:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "backtest_sandbox", "serve"], env=env
    )
    return Client(params, read_timeout_seconds=120)


class HttpServer:
    """`backtest-sandbox serve --transport http` in a subprocess this test can SIGKILL."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.port = port
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backtest_sandbox",
                "serve",
                "--transport",
                "http",
                "--port",
                str(port),
            ],
            env=env,
            stdout=self._log,
            stderr=self._log,
        )
        if not wait_until_listening(self.process, port):
            self.stop()
            raise RuntimeError(f"the server did not start; see {log}")

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
        self._log.close()


@pytest.fixture
def http_server(server_env: dict[str, str], free_tcp_port: int, tmp_path: Path) -> Iterator[Any]:
    servers: list[HttpServer] = []

    def start() -> HttpServer:
        server = HttpServer(server_env, free_tcp_port, tmp_path / "server.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def http_client(server: HttpServer) -> AbstractAsyncContextManager[Client]:
    return connect_http(server.url, HTTP_TOKEN, read_timeout_seconds=120)


async def until_done(client: Client, backtest_id: str, timeout: float = 120) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            status = await call(client, "get_backtest_status", backtest_id=backtest_id)
            if status["status"] in ("completed", "failed", "cancelled"):
                return status
            await anyio.sleep(0.1)


async def until_status(client: Client, backtest_id: str, wanted: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            status = await call(client, "get_backtest_status", backtest_id=backtest_id)
            if status["status"] == wanted:
                return status
            assert status["status"] in ("queued", "running"), status
            await anyio.sleep(0.05)


async def exercise_every_tool(client: Client) -> None:
    """run, status, read, orders, chart, list, stats, cancel, delete and both resources."""
    for uri in ("backtest://config", "resources/backtest-config"):
        (content,) = (await client.read_resource(uri)).contents
        assert json.loads(content.text)["timeframes"]["D1"] == 16408  # type: ignore[union-attr]

    submitted = await call(client, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
    assert (submitted["status"], submitted["cached"]) in {("queued", False), ("running", False)}
    backtest_id = submitted["backtest_id"]
    status = await until_done(client, backtest_id)
    assert status["status"] == "completed", status["error"]
    assert status["progress_percent"] == 100.0

    result = await call(client, "read_backtest", backtest_id=backtest_id, chart="drawdown")
    assert result["data"]["bars"] == 255 and result["equity_curve_total"] == 255
    assert result["metrics"]["total_trades"] == result["trade_log_total"] > 0
    assert result["chart"]["name"] == "drawdown" and result["chart"]["points_total"] == 255

    orders = await call(client, "read_backtest_orders", backtest_id=backtest_id, start=0, end=2)
    assert orders["total"] == result["trade_log_total"]
    assert orders["orders"] == result["trade_log"][:2]
    lives = await call(client, "read_backtest_orders", backtest_id=backtest_id, kind="orders")
    assert lives["kind"] == "orders" and lives["total"] == result["order_log_total"]
    assert lives["total"] >= 2 * result["trade_log_total"]  # every closed trade: in and out
    assert lives["orders"][0]["events"][-1]["status"] == "Completed"
    assert lives["open_positions"] == orders["open_positions"] == result["open_positions"]

    chart = await client.call_tool(
        "read_backtest_chart", {"backtest_id": backtest_id, "name": "equity"}
    )
    text, image = chart.content
    assert isinstance(text, TextContent) and isinstance(image, ImageContent)
    assert json.loads(text.text)["points_total"] == 255
    assert base64.b64decode(image.data).startswith(b"\x89PNG")

    listed = await call(client, "list_backtests", limit=10)
    assert backtest_id in [b["backtest_id"] for b in listed["backtests"]]
    stats = await call(client, "get_queue_stats")
    assert stats["completed"] >= 1 and stats["workers"] == 2

    long_one = await call(client, "run_backtest", code_content=slow(0.5), config=CONFIG)
    await until_status(client, long_one["backtest_id"], "running")
    cancelled = await call(client, "cancel_backtest", backtest_id=long_one["backtest_id"])
    assert cancelled == {"backtest_id": long_one["backtest_id"], "status": "cancelled"}
    deleted = await call(client, "delete_backtest", backtest_id=backtest_id)
    assert deleted == {"backtest_id": backtest_id, "deleted": True}
    message = await error(client, "get_backtest_status", backtest_id=backtest_id)
    assert message.endswith(f"backtest_id: no backtest {backtest_id!r}")


async def test_every_tool_over_stdio(server_env: dict[str, str]) -> None:
    async with stdio_client(server_env) as client:
        await exercise_every_tool(client)
    with anyio.fail_after(15):  # the cancelled container is gone once the server has closed
        while left_behind():
            await anyio.sleep(0.2)


async def test_every_tool_over_http(http_server: Any) -> None:
    server = http_server()
    async with http_client(server) as client:
        await exercise_every_tool(client)


ERROR_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "syntax_error": ("import backtrader as bt\ndef broken(:\n", {}),
    "runtime_error": (strategy_with("x = 1 / 0"), {}),
    "data_error": (SMA_CROSS, {"symbol": "NOSUCH", "data_source": "file"}),
    "timeout": (strategy_with("while True: pass"), {"timeout_seconds": 3}),
    "memory_limit": (
        strategy_with("hoard = []\nwhile True: hoard.append(bytearray(8 << 20))"),
        {"memory_mb": 256},
    ),
    "crashed": (strategy_with("os._exit(3)", imports="import os"), {}),
    "result_invalid": (
        strategy_with(
            "open('/out/result.json', 'w').write('{\"protocol\": 1, \"outcome\": \"won\"}')\n"
            "os._exit(0)",
            imports="import os",
        ),
        {},
    ),
}


async def test_every_error_type_through_get_backtest_status(server_env: dict[str, str]) -> None:
    async with stdio_client(server_env) as client:
        ids = {}
        for error_type, (code, overrides) in ERROR_CASES.items():
            submitted = await call(
                client, "run_backtest", code_content=code, config=CONFIG | overrides
            )
            ids[error_type] = submitted["backtest_id"]
        mq5 = await call(
            client, "run_backtest", code_content="void OnTick() {}", language="mq5", config=CONFIG
        )
        ids["unsupported_language"] = mq5["backtest_id"]
        seen = {}
        for error_type, backtest_id in ids.items():
            status = await until_done(client, backtest_id)
            assert status["status"] == "failed" and status["result"] is None
            seen[error_type] = status["error"]["type"]
        assert seen == {error_type: error_type for error_type in ids}


async def test_no_daemon_is_sandbox_error(server_env: dict[str, str]) -> None:
    env = server_env | {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    async with stdio_client(env) as client:
        submitted = await call(client, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
        status = await until_done(client, submitted["backtest_id"])
    assert status["status"] == "failed"
    assert status["error"]["type"] == "sandbox_error"


async def test_an_invalid_config_is_a_tool_error_naming_the_field(http_server: Any) -> None:
    async with http_client(http_server()) as client:
        message = await error(
            client, "run_backtest", code_content=SMA_CROSS, config=CONFIG | {"commission": -1}
        )
        assert message == (
            "config.commission: "
            "Input should be greater than or equal to 0"
        )
        assert (await call(client, "get_queue_stats"))["total"] == 0


async def test_a_second_identical_run_is_cached_without_a_container(
    server_env: dict[str, str],
) -> None:
    client_docker = docker.from_env()
    try:
        async with stdio_client(server_env) as client:
            first = await call(client, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
            done = await until_done(client, first["backtest_id"])
            assert done["status"] == "completed"
            since = time.time() - 0.5
            second = await call(client, "run_backtest", code_content=SMA_CROSS, config=CONFIG)
            until = time.time() + 0.5
        assert (second["status"], second["cached"]) == ("completed", True)
        assert second["result"]["metrics"] == done["result"]["metrics"]
        events = list(
            client_docker.events(
                since=since,
                until=until,
                decode=True,
                filters={
                    "label": f"{LABEL}.run={second['backtest_id']}",
                    "type": "container",
                    "event": "create",
                },
            )
        )
        # (By its run label: other suites on the same daemon create containers meanwhile.)
        assert events == []
    finally:
        client_docker.close()


async def test_wait_sends_progress_notifications_over_stdio(server_env: dict[str, str]) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with stdio_client(server_env) as client:
        result = await client.call_tool(
            "run_backtest",
            {"code_content": slow(0.01), "config": CONFIG, "wait": True},
            progress_callback=on_progress,
        )
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["status"] == "completed"
    assert progress[-1][:2] == (100.0, 100.0)
    assert any(0.0 < done < 100.0 for done, _, _ in progress), progress
    values = [done for done, _, _ in progress]
    assert values == sorted(set(values))  # strictly increasing, as MCP requires


class ContainerWatch:
    """Counts the running containers of the given backtests every 50 ms, in a thread.

    Only these backtests' containers count: other tests or servers on the same daemon may
    run containers of this project at the same time.
    """

    def __init__(self, backtest_ids: set[str]) -> None:
        self.most = 0
        self._ids = backtest_ids
        self._stop = threading.Event()
        self._client = docker.from_env()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            # The low-level list: no inspect per container, which races with removal.
            running = self._client.api.containers(filters={"label": LABEL, "status": "running"})
            mine = [c for c in running if c["Labels"].get(f"{LABEL}.run") in self._ids]
            self.most = max(self.most, len(mine))
            self._stop.wait(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


@pytest.mark.timeout(360)  # twenty verified runs on two slots; fail_after(300) ends it first
async def test_twenty_at_once_on_two_workers(http_server: Any) -> None:
    """Twenty submissions at once through MCP over HTTP: all complete, never more than the two
    worker slots' containers at a time, and every status call answers meanwhile. How fast those
    answers are is bench/bench.py's (e), measured as a figure on this noisy machine, not here."""
    ids: set[str] = set()
    watch = ContainerWatch(ids)
    try:
        async with http_client(http_server()) as client:
            for n in range(20):
                code = SMA_CROSS + f"\n# run {n}\n"  # distinct code: no cache hits
                submitted = await call(client, "run_backtest", code_content=code, config=CONFIG)
                ids.add(submitted["backtest_id"])
            calls = 0
            pending = set(ids)
            with anyio.fail_after(300):
                while pending:
                    for backtest_id in list(pending):
                        status = await call(client, "get_backtest_status", backtest_id=backtest_id)
                        calls += 1
                        if status["status"] in ("completed", "failed", "cancelled"):
                            assert status["status"] == "completed", status["error"]
                            assert status["result"]["integrity"]["verified"] is True
                            pending.discard(backtest_id)
    finally:
        watch.close()
    assert watch.most <= 2
    assert calls > len(ids), "status was asked while the runs went on"


async def test_sigkill_and_restart_lose_no_job(
    http_server: Any, server_env: dict[str, str]
) -> None:
    server_env["BACKTEST_MAX_WORKERS"] = "1"
    first = http_server()
    async with http_client(first) as client:
        ids = [
            (
                await call(
                    client, "run_backtest", code_content=slow(0.01, f"job {n}"), config=CONFIG
                )
            )["backtest_id"]
            for n in range(3)
        ]
        await until_status(client, ids[0], "running")
    first.kill()  # no clean-up at all: a container is left running, the job marked running

    second = http_server()
    async with http_client(second) as client:
        statuses = [await until_done(client, backtest_id) for backtest_id in ids]
    assert [s["status"] for s in statuses] == ["completed"] * 3
    second.stop()
    assert left_behind() == []


async def test_a_real_run_answers_within_its_schemas_over_stdio(
    server_env: dict[str, str],
) -> None:
    """docs/interface.md section 12 with the real engine: the status of a 2,520-bar run fits
    in 16 KiB and validates against the tool's declared output schema, as do the reads."""
    import jsonschema

    config = {"symbol": "ORCL", "timeframe": "D1", "start_date": "1999-12-27",
              "end_date": "2009-12-31"}
    async with stdio_client(server_env) as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        submitted = await call(
            client, "run_backtest", code_content=SMA_CROSS, config=config, wait=True
        )
        backtest_id = submitted["backtest_id"]
        status = await call(client, "get_backtest_status", backtest_id=backtest_id)
        assert status["result"]["data"]["bars"] == 2520
        assert len(json.dumps(status)) < 16 * 1024
        jsonschema.validate(status, schemas["get_backtest_status"])
        for tool, arguments in (
            ("read_backtest", {"backtest_id": backtest_id, "full": True}),
            ("read_backtest_orders", {"backtest_id": backtest_id}),
            ("read_backtest_chart", {"backtest_id": backtest_id, "name": "drawdown"}),
            ("list_data", {}),
        ):
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, result.content
            jsonschema.validate(result.structured_content, schemas[tool])
        whole = await call(client, "read_backtest", backtest_id=backtest_id, full=True)
        assert len(whole["equity_curve"]) == 2520

"""The MCP surface through the SDK's own in-memory client, over the service with a fake engine."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import pytest
from mcp.client import Client
from mcp_types import CallToolResult, ImageContent, TextContent

from backtest_sandbox.api.mcp_server import build_server
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.service import BacktestService
from tests import mcp_helpers
from tests.mcp_helpers import error
from tests.unit.fake_engine import FakeEngine, config

pytestmark = pytest.mark.anyio

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
BLOCK = CODE + "# block\n"
TOOLS = {
    "run_backtest",
    "get_backtest_status",
    "list_backtests",
    "read_backtest",
    "read_backtest_orders",
    "read_backtest_chart",
    "cancel_backtest",
    "delete_backtest",
    "get_queue_stats",
    "list_data",
    "run_sweep",
    "get_sweep_status",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def service(tmp_path: Path, engine: FakeEngine) -> Iterator[BacktestService]:
    settings = Settings(state_dir=tmp_path / "state", data_dir=tmp_path / "data", max_workers=2)
    service = BacktestService(settings, engine)
    service.start()
    yield service
    engine.release.set()
    service.close()


@pytest.fixture
async def client(service: BacktestService) -> AsyncIterator[Client]:
    async with Client(build_server(service)) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result, which must not be an error; its text content is the same
    object, for clients that read only text."""
    return await mcp_helpers.call(client, tool, text_matches=True, **arguments)


async def until(client: Client, backtest_id: str, *statuses: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            status = await call(client, "get_backtest_status", backtest_id=backtest_id)
            if status["status"] in statuses:
                return status
            await anyio.sleep(0.01)


async def test_the_tools_and_resources_of_the_contract(client: Client) -> None:
    tools = await client.list_tools()
    assert {tool.name for tool in tools.tools} == TOOLS
    resources = await client.list_resources()
    assert {str(r.uri) for r in resources.resources} == {
        "backtest://config",
        "resources/backtest-config",
        "data://catalog",
    }
    texts = []
    for uri in ("backtest://config", "resources/backtest-config"):
        read = await client.read_resource(uri)
        (content,) = read.contents
        assert content.mime_type == "application/json"
        texts.append(content.text)  # type: ignore[union-attr]
    assert texts[0] == texts[1]
    document = json.loads(texts[0])
    assert set(document) == {
        "schema",
        "required",
        "optional",
        "rules",
        "timeframes",
        "languages",
        "statuses",
        "error_types",
        "limits",
        "tool_output",
    }
    assert document["limits"]["max_workers"] == 2


async def test_run_then_poll_to_the_result(client: Client, engine: FakeEngine) -> None:
    for n in range(2):  # both workers busy: the next submission stays queued
        await call(client, "run_backtest", code_content=BLOCK + f"# {n}\n", config=config())
    engine.wait_started(2)
    submitted = await call(client, "run_backtest", code_content=CODE, config=config())
    assert submitted == {
        "backtest_id": ANY,
        "status": "queued",
        "cached": False,
        "progress_percent": 0.0,
        "estimated_completion": None,
        "result": None,
        "error": None,
        "language": "python",
        "symbol": "SPY",
        "timeframe": "D1",
        "created_at": ANY,
        "started_at": None,
        "finished_at": None,
    }
    backtest_id = submitted["backtest_id"]
    engine.release.set()
    done = await until(client, backtest_id, "completed")
    assert done["progress_percent"] == 100.0
    assert set(done["result"]) == {
        "backtest_id",
        "status",
        "metrics",
        "equity_curve",
        "equity_curve_total",
        "equity_curve_downsampled",
        "trade_log",
        "trade_log_total",
        "trade_log_truncated",
        "order_log",
        "order_log_total",
        "order_log_truncated",
        "open_positions",
        "logs",
        "logs_truncated",
        "execution_time_seconds",
        "data",
        "provenance",
        "warnings",
        "integrity",
        "analyzers",
        "analyzers_omitted",
        "analyzer_errors",
        "analyzers_source",
        "analyzers_verified",
        "cached",
        "chart",
    }
    # The fake engine's results are fast-mode ones: no referee checked them.
    assert done["result"]["integrity"] == {
        "mode": "fast",
        "verified": False,
        "claim_matches": None,
        "events": 0,
        "rejected_events": 0,
    }
    read = await call(client, "read_backtest", backtest_id=backtest_id)
    assert read == done["result"]


async def test_a_config_passed_as_a_json_string_is_accepted(client: Client) -> None:
    submitted = await call(
        client, "run_backtest", code_content=CODE, config=json.dumps(config(symbol="QQQ"))
    )
    assert submitted["symbol"] == "QQQ"


async def test_wait_reports_progress_and_returns_the_final_status(
    client: Client, engine: FakeEngine
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    final: dict[str, Any] = {}

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        if done == 50.0:
            engine.release.set()  # let the run finish once half-way was reported

    async def run() -> None:
        result = await client.call_tool(
            "run_backtest",
            {"code_content": BLOCK + "# bars: 1000\n", "config": config(), "wait": True},
            progress_callback=on_progress,
        )
        assert not result.is_error and result.structured_content is not None
        final.update(result.structured_content)

    with anyio.fail_after(10):
        await run()
    assert final["status"] == "completed" and final["result"] is not None
    assert (50.0, 100.0, "running: 500/1000 bars") in progress
    assert progress[-1][:2] == (100.0, 100.0)
    assert progress[-1][2] in {"completed", "running: 1000/1000 bars"}
    values = [done for done, _, _ in progress]
    assert values == sorted(set(values))  # strictly increasing, as MCP requires


async def test_wait_without_a_progress_token_still_waits(client: Client) -> None:
    final = await call(client, "run_backtest", code_content=CODE, config=config(), wait=True)
    assert final["status"] == "completed"


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        pytest.param(
            "run_backtest",
            {"code_content": CODE, "config": config(start_date="2021-13-01")},
            "config.start_date: Input should be a valid date or datetime, month value is "
            "outside expected range of 1-12",
            id="bad-date",
        ),
        pytest.param(
            "run_backtest",
            {"code_content": CODE, "config": config(timeframe="H5")},
            "config.timeframe: 'H5' is not an MT5 timeframe; one of M1, M2, M3, M4, M5, M6, "
            "M10, M12, M15, M20, M30, H1, H2, H3, H4, H6, H8, H12, D1, W1, MN1",
            id="bad-timeframe",
        ),
        pytest.param(
            "run_backtest",
            {"code_content": CODE, "config": config(memory_mb=100000)},
            "config.memory_mb: must be at most this server's maximum 4096",
            id="over-limit",
        ),
        pytest.param(
            "run_backtest",
            {"code_content": "x" * (1024 * 1024 + 1), "config": config()},
            "code_content: must be at most 1048576 bytes of UTF-8 (got 1048577)",
            id="oversize",
        ),
        pytest.param(
            "run_backtest",
            {"code_content": "x = 1\x00", "config": config()},
            "code_content: must not contain NUL bytes",
            id="nul",
        ),
        pytest.param(
            "run_backtest",
            {"code_content": CODE, "config": config(), "language": "mql4"},
            "language: must be one of python, mq5",
            id="language",
        ),
        pytest.param(
            "list_backtests",
            {"limit": "ten"},
            "limit: must be an integer",
            id="limit-type",
        ),
        pytest.param(
            "list_backtests",
            {"status": "finished"},
            "status: must be one of queued, running, completed, failed, cancelled",
            id="status",
        ),
        pytest.param(
            "get_backtest_status",
            {"backtest_id": "bt_" + "f" * 32},
            f"backtest_id: no backtest {'bt_' + 'f' * 32!r}",
            id="unknown-id",
        ),
        pytest.param(
            "read_backtest_orders",
            {"backtest_id": "bt_" + "f" * 32, "start": -5},
            "start: must be >= 0",
            id="orders-start",
        ),
        pytest.param(
            "read_backtest_orders",
            {"backtest_id": "bt_" + "f" * 32, "kind": "fills"},
            "kind: must be 'trades' or 'orders'",
            id="orders-kind",
        ),
        pytest.param(
            "read_backtest_chart",
            {"backtest_id": "bt_" + "f" * 32, "name": "candles"},
            "name: must be 'equity' or 'drawdown'",
            id="chart-name",
        ),
    ],
)
async def test_a_bad_argument_is_a_tool_error_naming_the_field(
    client: Client, tool: str, arguments: dict[str, Any], message: str
) -> None:
    assert await error(client, tool, **arguments) == message
    stats = await call(client, "get_queue_stats")
    assert stats["total"] == 0


async def test_mq5_is_accepted_and_fails(client: Client, engine: FakeEngine) -> None:
    submitted = await call(
        client, "run_backtest", code_content="void OnTick() {}", language="mq5", config=config()
    )
    assert (submitted["status"], submitted["cached"], submitted["error"]) == (
        "failed",
        False,
        {
            "type": "unsupported_language",
            "message": "language 'mq5' is accepted but cannot run yet; only python runs",
            "details": {"language": "mq5", "runnable": ["python"]},
        },
    )
    assert engine.runs == []


async def test_a_second_identical_run_is_cached(client: Client, engine: FakeEngine) -> None:
    first = await call(client, "run_backtest", code_content=CODE, config=config())
    done = await until(client, first["backtest_id"], "completed")
    second = await call(client, "run_backtest", code_content=CODE, config=config())
    assert (second["status"], second["cached"]) == ("completed", True)
    assert second["result"]["metrics"] == done["result"]["metrics"]
    assert second["result"]["backtest_id"] == second["backtest_id"] != first["backtest_id"]
    assert len(engine.runs) == 1
    assert (await call(client, "get_queue_stats"))["cache_hits"] == 1


async def test_orders_and_charts(client: Client) -> None:
    submitted = await call(
        client, "run_backtest", code_content=CODE + "# trades: 150\n# bars: 1200\n", config=config()
    )
    backtest_id = submitted["backtest_id"]
    await until(client, backtest_id, "completed")

    page = await call(client, "read_backtest_orders", backtest_id=backtest_id, start=100, end=200)
    assert (page["total"], len(page["orders"]), page["start"], page["end"]) == (150, 50, 100, 150)
    assert page["next_start"] is None

    read = await call(client, "read_backtest", backtest_id=backtest_id, chart="equity")
    assert read["chart"]["name"] == "equity" and read["chart"]["points_total"] == 1200
    assert len(read["equity_curve"]) <= 500 and read["trade_log_total"] == 150
    assert len(read["trade_log"]) == 20 and read["trade_log_truncated"]

    chart = await client.call_tool(
        "read_backtest_chart", {"backtest_id": backtest_id, "name": "drawdown"}
    )
    assert isinstance(chart, CallToolResult) and not chart.is_error
    text, image = chart.content
    assert isinstance(text, TextContent) and isinstance(image, ImageContent)
    assert json.loads(text.text) == chart.structured_content
    assert chart.structured_content is not None
    assert chart.structured_content["name"] == "drawdown"
    assert chart.structured_content["unit"] == "percent"
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data).startswith(b"\x89PNG")


async def test_a_result_that_does_not_exist_yet(client: Client, engine: FakeEngine) -> None:
    submitted = await call(client, "run_backtest", code_content=BLOCK, config=config())
    backtest_id = submitted["backtest_id"]
    await until(client, backtest_id, "running")
    for tool in ("read_backtest", "read_backtest_orders"):
        message = await error(client, tool, backtest_id=backtest_id)
        assert message == f"backtest_id: {backtest_id} has no result: it is running"


async def test_cancel_and_delete(client: Client, engine: FakeEngine) -> None:
    running = (await call(client, "run_backtest", code_content=BLOCK, config=config()))[
        "backtest_id"
    ]
    await until(client, running, "running")
    cancelled = await call(client, "cancel_backtest", backtest_id=running)
    assert cancelled == {"backtest_id": running, "status": "cancelled"}
    assert (await call(client, "get_backtest_status", backtest_id=running))["status"] == (
        "cancelled"
    )
    deleted = await call(client, "delete_backtest", backtest_id=running)
    assert deleted == {"backtest_id": running, "deleted": True}
    message = await error(client, "get_backtest_status", backtest_id=running)
    assert (
        message == f"backtest_id: no backtest {running!r}"
    )


async def test_list_pages_with_a_cursor(client: Client) -> None:
    ids = []
    for n in range(3):
        submitted = await call(
            client, "run_backtest", code_content=CODE + f"# {n}\n", config=config()
        )
        ids.append(submitted["backtest_id"])
    first = await call(client, "list_backtests", limit=2)
    assert [b["backtest_id"] for b in first["backtests"]] == ids[:0:-1]
    assert first["next_cursor"] is not None
    second = await call(client, "list_backtests", limit=2, cursor=first["next_cursor"])
    assert [b["backtest_id"] for b in second["backtests"]] == ids[:1]
    assert second["next_cursor"] is None
    assert set(second["backtests"][0]) == {
        "backtest_id",
        "kind",
        "status",
        "symbol",
        "timeframe",
        "language",
        "cached",
        "created_at",
        "started_at",
        "finished_at",
        "progress_percent",
        "error_type",
    }


async def test_queue_stats(client: Client) -> None:
    assert await call(client, "get_queue_stats") == {
        "queued": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "total": 0,
        "workers": 2,
        "workers_busy": 0,
        "cache_hits": 0,
        "avg_execution_seconds": None,
        "avg_queue_wait_seconds": None,
    }


async def test_tenants_see_only_their_own_backtests(service: BacktestService) -> None:
    server_a = build_server(service, tenant_of=lambda ctx: "a")
    server_b = build_server(service, tenant_of=lambda ctx: "b")
    async with Client(server_a) as a, Client(server_b) as b:
        mine = (await call(a, "run_backtest", code_content=CODE, config=config()))["backtest_id"]
        await until(a, mine, "completed")
        unknown = "bt_" + "0" * 32
        for tool, extra in [
            ("get_backtest_status", {}),
            ("read_backtest", {}),
            ("read_backtest_orders", {}),
            ("read_backtest_chart", {"name": "equity"}),
            ("cancel_backtest", {}),
            ("delete_backtest", {}),
        ]:
            foreign = await error(b, tool, backtest_id=mine, **extra)
            missing = await error(b, tool, backtest_id=unknown, **extra)
            assert foreign == missing.replace(unknown, mine)
        assert (await call(b, "list_backtests"))["backtests"] == []
        assert (await call(b, "get_queue_stats"))["total"] == 0
        again = await call(b, "run_backtest", code_content=CODE, config=config())
        assert again["cached"] is False  # a's cached result is not b's
        assert (await call(a, "get_backtest_status", backtest_id=mine))["status"] == "completed"

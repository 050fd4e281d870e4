"""The MCP conventions of docs/interface.md section 12, through the official SDK's client.

Annotations, an output schema on every tool that each answer validates against (jsonschema),
structured tool errors, the resource templates, the compact status, and status updates for a
subscribed `backtest://{id}`. The engine is the fake one; the server, the service, the store
and the result files are real.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from mcp.client import Client
from mcp_types import ImageContent

from backtest_sandbox.api.mcp_server import build_server
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.service import BacktestService
from tests.unit.fake_engine import FakeEngine, config

pytestmark = pytest.mark.anyio

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
READ_TOOLS = {
    "get_backtest_status",
    "list_backtests",
    "read_backtest",
    "read_backtest_orders",
    "read_backtest_chart",
    "get_queue_stats",
    "list_data",
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
    data = tmp_path / "data" / "ORCL"
    data.mkdir(parents=True)
    (data / "D1.csv").write_text(
        "datetime,open,high,low,close,volume\n"
        + "".join(f"2020-01-{d:02d}T00:00:00,1,2,0.5,1.5,100\n" for d in range(1, 21))
    )
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


async def answer(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured answer, checked against the tool's declared output schema."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    schema = tools[tool].output_schema
    assert schema is not None, f"{tool} declares no output schema"
    jsonschema.validate(result.structured_content, schema)
    return dict(result.structured_content)


async def completed(client: Client, code: str = CODE) -> str:
    submitted = await answer(client, "run_backtest", code_content=code, config=config(), wait=True)
    assert submitted["status"] == "completed"
    return str(submitted["backtest_id"])


async def test_every_tool_is_annotated_as_the_contract_says(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in READ_TOOLS:
        assert tools[name].annotations is not None
        assert tools[name].annotations.read_only_hint is True, name
    for name in ("run_backtest", "run_sweep"):
        submit = tools[name].annotations
        assert submit is not None
        assert (submit.destructive_hint, submit.open_world_hint) == (False, False), name
    for name in ("cancel_backtest", "delete_backtest"):
        annotations = tools[name].annotations
        assert annotations is not None
        assert (annotations.idempotent_hint, annotations.open_world_hint) == (True, False), name
    assert all(tool.output_schema is not None for tool in tools.values())


async def test_every_answer_validates_against_its_output_schema(client: Client) -> None:
    backtest_id = await completed(client, CODE + "# bars: 2500\n# trades: 100\n# orders: 300\n")
    status = await answer(client, "get_backtest_status", backtest_id=backtest_id)
    # The compact status: every metric, the last 20 trades, at most 100 points, < 16 KiB.
    assert len(json.dumps(status)) < 16 * 1024
    result = status["result"]
    assert (len(result["equity_curve"]), result["equity_curve_total"]) == (100, 2500)
    assert [t["pnl"] for t in result["trade_log"]] == [float(n) for n in range(80, 100)]
    await answer(client, "get_backtest_status", backtest_id=backtest_id, full=True)
    await answer(client, "list_backtests")
    await answer(client, "read_backtest", backtest_id=backtest_id, chart="drawdown")
    await answer(client, "read_backtest_orders", backtest_id=backtest_id, start=90, end=100)
    orders = await answer(client, "read_backtest_orders", backtest_id=backtest_id, kind="orders")
    assert (orders["kind"], orders["total"], len(orders["open_positions"])) == ("orders", 300, 1)
    await answer(client, "read_backtest_chart", backtest_id=backtest_id, name="equity")
    await answer(client, "get_queue_stats")
    catalog = await answer(client, "list_data")
    assert catalog == {
        "datasets": [
            {
                "symbol": "ORCL",
                "timeframe": "D1",
                "first": "2020-01-01T00:00:00",
                "last": "2020-01-20T00:00:00",
                "bars": 20,
            }
        ],
        "synthetic_fallback": True,
    }
    await answer(client, "cancel_backtest", backtest_id=backtest_id)
    await answer(client, "delete_backtest", backtest_id=backtest_id)


@pytest.mark.parametrize(
    ("tool", "arguments", "data"),
    [
        (
            "run_backtest",
            {"code_content": CODE, "config": config(commission=-1)},
            {
                "type": "invalid_argument",
                "field": "config.commission",
                "rule": "Input should be greater than or equal to 0",
            },
        ),
        (
            "list_backtests",
            {"limit": 0},
            {"type": "invalid_argument", "field": "limit", "rule": "must be between 1 and 200"},
        ),
        (
            "get_backtest_status",
            {"backtest_id": "bt_" + "0" * 32},
            {"type": "not_found", "field": "backtest_id", "rule": "no backtest"},
        ),
    ],
    ids=["config", "limit", "unknown-id"],
)
async def test_a_tool_error_carries_structured_data(
    client: Client, tool: str, arguments: dict[str, Any], data: dict[str, Any]
) -> None:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert result.structured_content == data
    assert data["rule"] in result.content[0].text  # type: ignore[union-attr]


async def test_the_resource_templates(client: Client) -> None:
    listed = (await client.list_resource_templates()).resource_templates
    templates = {str(t.uri_template) for t in listed}
    assert templates == {
        "backtest://{backtest_id}",
        "backtest://{backtest_id}/trades.csv",
        "backtest://{backtest_id}/equity.csv",
        "backtest://{backtest_id}/chart/{name}.png",
    }
    backtest_id = await completed(client, CODE + "# bars: 300\n# trades: 7\n")

    async def read(uri: str) -> Any:
        (content,) = (await client.read_resource(uri)).contents
        return content

    status = json.loads((await read(f"backtest://{backtest_id}")).text)
    assert status == await answer(client, "get_backtest_status", backtest_id=backtest_id)
    trades_csv = (await read(f"backtest://{backtest_id}/trades.csv")).text
    trades = list(csv.DictReader(io.StringIO(trades_csv)))
    assert [float(t["pnl"]) for t in trades] == [float(n) for n in range(7)]
    equity = (await read(f"backtest://{backtest_id}/equity.csv")).text.splitlines()
    assert equity[0] == "timestamp,value" and len(equity) == 301
    png = await read(f"backtest://{backtest_id}/chart/drawdown.png")
    assert base64.b64decode(png.blob).startswith(b"\x89PNG")
    catalog = json.loads((await read("data://catalog")).text)
    assert catalog == await answer(client, "list_data")


async def test_a_subscriber_hears_when_the_status_changes(
    client: Client, engine: FakeEngine
) -> None:
    capabilities = client.session.server_capabilities
    assert capabilities is not None and capabilities.resources is not None
    submitted = await answer(
        client, "run_backtest", code_content=CODE + "# block\n", config=config()
    )
    uri = f"backtest://{submitted['backtest_id']}"
    if not capabilities.resources.subscribe:
        pytest.fail("the server does not advertise resource subscriptions")
    async with client.listen(resource_subscriptions=[uri]) as subscription:
        engine.release.set()  # the blocked run now completes: running -> completed
        with anyio.fail_after(10):
            async for event in subscription:
                assert getattr(event, "uri", None) == uri
                status = await answer(
                    client, "get_backtest_status", backtest_id=submitted["backtest_id"]
                )
                if status["status"] == "completed":
                    break


async def test_sweep_answers_validate_and_carry_the_heatmap(client: Client) -> None:
    grid = {"fast": [5, 10], "slow": [20, 30]}
    submitted = await answer(
        client,
        "run_sweep",
        code_content=CODE,
        config=config(),
        grid=grid,
        constraints=["total_trades >= 1"],
    )
    assert (submitted["status"], submitted["combinations"]) == ("running", 4)
    with anyio.fail_after(10):
        while (status := await answer(client, "get_sweep_status", sweep_id=submitted["sweep_id"]))[
            "status"
        ] == "running":
            await anyio.sleep(0.05)
    assert status["status"] == "completed" and status["done"] == 4
    result = await client.call_tool("get_sweep_status", {"sweep_id": submitted["sweep_id"]})
    images = [c for c in result.content if isinstance(c, ImageContent)]
    assert len(images) == 1 and base64.b64decode(images[0].data).startswith(b"\x89PNG")
    listed = await answer(client, "list_backtests")
    assert [b["kind"] for b in listed["backtests"]] == ["sweep"]
    refused = await client.call_tool(
        "run_sweep", {"code_content": CODE, "config": config(), "grid": {"fast": []}}
    )
    assert refused.is_error
    assert refused.structured_content == {
        "type": "invalid_argument",
        "field": "grid.fast",
        "rule": "must be a non-empty list of values",
    }

"""Parameter sweeps end to end: `backtest-sandbox serve` driven by the official MCP client,
against the real daemon, the runner image and real bars, each combination in verified mode.

Parity: every combination's final value and trade count equal a plain in-process Backtrader run
of the same parameters, and Backtrader's own `optstrategy` over the same grid; the out-of-sample
figures equal a plain run of the winning parameters on [oos_start, end_date].
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import backtrader as bt
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import ImageContent

from tests.conftest import DOCKER, left_behind
from tests.integration.test_backtest_parity import Tape, apply_compat, raw_bars, strategy_class
from tests.mcp_helpers import call
from tests.strategies import SMA_CROSS

pytestmark = [*DOCKER, pytest.mark.slow, pytest.mark.anyio]

FILE = "orcl-1995-2014.txt"
CONFIG = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2007-12-31",
    "initial_capital": 100000,
    "position_size": 100,
    "data_source": "file",
}
GRID = {"fast": [5, 10, 15], "slow": [30, 40, 50]}
OOS_START = "2007-01-01"
CONSTRAINT = "total_trades >= 6"
REL = 1e-9


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(data_dir: Path, tmp_path: Path) -> Client:
    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(tmp_path / "state"),
        "BACKTEST_MAX_WORKERS": "2",
        "BACKTEST_POOL_SIZE": "0",  # every container of ours is then a combination running
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "backtest_sandbox", "serve"], env=env
    )
    return Client(params, read_timeout_seconds=120)


def plain(params: dict[str, int], start: str, end: str) -> tuple[float, int]:
    """(final value, closed trades) of the strategy in this process, preloaded."""
    apply_compat()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=raw_bars(FILE, start, end)))
    cerebro.broker.setcash(float(CONFIG["initial_capital"]))
    cerebro.addsizer(bt.sizers.FixedSize, stake=CONFIG["position_size"])
    cerebro.addstrategy(strategy_class(SMA_CROSS, "sweep_sma"), **params)
    cerebro.addanalyzer(Tape, _name="tape")
    strategy = cerebro.run()[0]
    return cerebro.broker.getvalue(), len(strategy.analyzers.tape.trades)


def optstrategy(start: str, end: str) -> dict[tuple[int, int], tuple[float, int]]:
    """Backtrader's own sweep over GRID: (fast, slow) -> (final value, closed trades)."""
    apply_compat()
    cerebro = bt.Cerebro(stdstats=False, maxcpus=1, optreturn=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=raw_bars(FILE, start, end)))
    cerebro.broker.setcash(float(CONFIG["initial_capital"]))
    cerebro.addsizer(bt.sizers.FixedSize, stake=CONFIG["position_size"])

    class Final(bt.Analyzer):  # type: ignore[misc]
        def stop(self) -> None:
            self.value = self.strategy.broker.getvalue()

    cerebro.optstrategy(strategy_class(SMA_CROSS, "sweep_opt"), **GRID)
    cerebro.addanalyzer(Tape, _name="tape")
    cerebro.addanalyzer(Final, _name="final")
    found = {}
    for (strategy,) in cerebro.run():
        key = (strategy.p.fast, strategy.p.slow)
        found[key] = (strategy.analyzers.final.value, len(strategy.analyzers.tape.trades))
    return found


async def finished(client: Client, sweep_id: str, timeout: float = 300) -> Any:
    with anyio.fail_after(timeout):
        while True:
            result = await client.call_tool("get_sweep_status", {"sweep_id": sweep_id, "top": 50})
            assert not result.is_error, result.content
            status = result.structured_content
            assert status is not None
            if status["status"] in ("completed", "failed", "cancelled"):
                return result
            await anyio.sleep(0.5)


async def test_a_sweep_ranks_every_combination_as_plain_backtrader_computes_it(
    client: Client,
) -> None:
    tuning_end = "2006-12-31"
    async with client:
        submitted = await call(
            client,
            "run_sweep",
            code_content=SMA_CROSS,
            config=CONFIG,
            grid=GRID,
            target="total_return_pct",
            constraints=[CONSTRAINT],
            oos_start=OOS_START,
        )
        assert submitted["combinations"] == 9
        result = await finished(client, submitted["sweep_id"])
        status = result.structured_content
        assert status["status"] == "completed", status["error"]
        assert (status["done"], status["total"], status["progress_percent"]) == (9, 9, 100.0)
        ranked = status["ranked"]
        assert len(ranked) == 9 and [r["rank"] for r in ranked] == list(range(1, 10))

        # Every combination equals plain Backtrader and optstrategy over the same grid.
        optimised = optstrategy(CONFIG["start_date"], tuning_end)
        assert len(optimised) == 9
        for entry in ranked:
            params = entry["params"]
            final_value, trades = plain(params, CONFIG["start_date"], tuning_end)
            assert entry["metrics"]["final_value"] == pytest.approx(final_value, rel=REL)
            assert entry["metrics"]["total_trades"] == trades
            opt_value, opt_trades = optimised[(params["fast"], params["slow"])]
            assert (opt_value, opt_trades) == pytest.approx((final_value, trades), rel=REL)
            assert entry["constraints_passed"] == (trades >= 6)

        # Best first among those that pass the constraint; those that fail it last.
        passing = [r for r in ranked if r["constraints_passed"]]
        assert passing, "the constraint leaves nothing: the test proves little"
        assert ranked[: len(passing)] == passing
        returns = [r["metrics"]["total_return_pct"] for r in passing]
        assert returns == sorted(returns, reverse=True)
        best = status["best"]
        assert best["params"] == passing[0]["params"]

        # Out of sample: the winner once on [oos_start, end_date], as plain Backtrader says.
        oos = status["out_of_sample"]
        assert oos["params"] == best["params"]
        final_value, trades = plain(best["params"], OOS_START, CONFIG["end_date"])
        assert oos["metrics"]["final_value"] == pytest.approx(final_value, rel=REL)
        assert oos["metrics"]["total_trades"] == trades
        assert 0.0 <= status["deflated_sharpe_ratio"] <= 1.0

        # Two varying parameters: the heatmap comes as a PNG image.
        images = [c for c in result.content if isinstance(c, ImageContent)]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")

        # A combination is a backtest of its own; the sweep is listed once, as a sweep.
        one = await call(client, "get_backtest_status", backtest_id=best["backtest_id"])
        assert one["result"]["metrics"]["final_value"] == best["metrics"]["final_value"]
        listed = await call(client, "list_backtests")
        assert [(b["backtest_id"], b["kind"]) for b in listed["backtests"]] == [
            (submitted["sweep_id"], "sweep")
        ]

        # The same grid again is answered from the cache: nothing runs.
        again = await call(
            client,
            "run_sweep",
            code_content=SMA_CROSS,
            config=CONFIG,
            grid=GRID,
            oos_start=OOS_START,
        )
        assert again["cached"] == 9


SLOW = """
import time
import backtrader as bt

class Slow(bt.Strategy):
    params = (("pause", 0.05),)

    def next(self):
        time.sleep(self.p.pause)
"""


async def test_cancelling_a_sweep_mid_run_leaves_no_container(client: Client) -> None:
    grid = {"pause": [0.05, 0.06, 0.07, 0.08, 0.09, 0.1]}
    async with client:
        submitted = await call(client, "run_sweep", code_content=SLOW, config=CONFIG, grid=grid)
        sweep_id = submitted["sweep_id"]
        with anyio.fail_after(120):  # until its combinations run
            while not our_containers():
                await anyio.sleep(0.2)
        cancelled = await call(client, "cancel_backtest", backtest_id=sweep_id)
        assert cancelled["status"] == "cancelled"
        status = await call(client, "get_sweep_status", sweep_id=sweep_id)
        # Each combination takes over 50 s: none completed, every one was stopped.
        assert status["status"] == "cancelled" and status["ranked_total"] == 0
        with anyio.fail_after(30):  # killed and removed at once, not when they end
            while our_containers():
                await anyio.sleep(0.2)
    assert left_behind() == []


def our_containers() -> list[str]:
    """This project's containers (the server runs without a warm pool: each is a run)."""
    from backtest_sandbox.sandbox.containers import LABEL_PROJECT, docker_client

    client = docker_client()
    try:
        # The low-level list: no inspect per container, which a container removed meanwhile
        # (the cancel at work) would answer with 404.
        listed = client.api.containers(all=True, filters={"label": LABEL_PROJECT})
        return [c["Names"][0] for c in listed]
    finally:
        client.close()


def test_the_sweep_command_ranks_and_writes_the_heatmap(
    cli: Any, write_strategy: Any, tmp_path: Path
) -> None:
    strategy = write_strategy(SMA_CROSS)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "end_date": "2005-12-31"}))
    out = tmp_path / "report"
    result = cli(
        "sweep",
        str(strategy),
        "--config",
        str(config),
        "--grid",
        json.dumps({"fast": [5, 10], "slow": [30, 40]}),
        "--target",
        "final_value",
        "--constraint",
        "total_trades>=1",
        "--output-dir",
        str(out),
        "--json",
    )
    assert result.code == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["status"], status["done"], status["total"]) == ("completed", 4, 4)
    values = [entry["metrics"]["final_value"] for entry in status["ranked"]]
    assert values == sorted(values, reverse=True)
    for entry in status["ranked"]:
        final_value, trades = plain(entry["params"], CONFIG["start_date"], "2005-12-31")
        assert entry["metrics"]["final_value"] == pytest.approx(final_value, rel=REL)
        assert entry["metrics"]["total_trades"] == trades
    assert json.loads((out / "sweep.json").read_text()) == status
    assert (out / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    # A bad grid is a usage error that names the argument; nothing runs.
    refused = cli("sweep", str(strategy), "--config", str(config), "--grid", '{"fast": 5}')
    assert refused.code == 2
    assert "grid.fast: must be a non-empty list of values" in refused.stderr

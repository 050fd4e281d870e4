"""Analyzers through the real sandbox, in both modes: the config's built-ins (`analyzers`)
and one the strategy registers itself come back in the result, equal as floats to plain
Backtrader given the same analyzers on the same bars; in verified mode they are labelled as
the strategy process's (unverified), and a strategy that forges them changes only them.
"""

from __future__ import annotations

import json
from typing import Any

import backtrader as bt
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER
from tests.integration.test_backtest_parity import apply_compat, raw_bars, strategy_class
from tests.unit.test_analyzers import plain_json

pytestmark = DOCKER

FILE = "orcl-1995-2014.txt"
CONFIG: dict[str, Any] = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2009-12-31",
    "initial_capital": 100_000,
    "commission": 0.001,
    "slippage": 0.0005,
    "position_size": 100,
    "data_source": "file",
    "timeout_seconds": 120,
    "analyzers": [
        "SharpeRatio",
        {"name": "SharpeRatio_A", "params": {"timeframe": "Days", "riskfreerate": 0.0}},
        "DrawDown",
        "TradeAnalyzer",
        "TimeReturn",  # one return per bar: too large for a status answer
        "AnnualReturn",
    ],
}

SMA_CROSS = """
import backtrader as bt


class SmaCross(bt.Strategy):
    params = (("fast", 10), ("slow", 30))

    def __init__(self):
        fast, slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)
        self._addanalyzer(bt.analyzers.SQN, _name="mine")  # registered by the strategy

    def next(self):
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()
"""

# Patches Backtrader's SharpeRatio in its own process: the figure it reports is a lie.
FORGER = f"""{SMA_CROSS}

bt.analyzers.SharpeRatio.get_analysis = lambda self: {{"sharperatio": 42.0}}
"""


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0)
    engine = Engine(settings)
    yield engine
    engine.close()


def run(engine: Engine, code: str, mode: str) -> Any:
    request = RunRequest(
        backtest_id=f"bt_analyzers_{mode}_{abs(hash(code)):x}",
        code=code,
        config=BacktestConfig(**{**CONFIG, "mode": mode}),
    )
    outcome = engine.run(request)
    assert outcome.result is not None, outcome.error
    return outcome.result


def plain_analyses() -> dict[str, Any]:
    """SMA_CROSS with plain Backtrader (preloaded, default observers), each analyzer added as
    a script's main() adds it."""
    apply_compat()
    cerebro = bt.Cerebro()
    cerebro.adddata(
        bt.feeds.PandasData(dataname=raw_bars(FILE, CONFIG["start_date"], CONFIG["end_date"]))
    )
    cerebro.broker.setcash(float(CONFIG["initial_capital"]))
    cerebro.broker.setcommission(commission=CONFIG["commission"])
    cerebro.broker.set_slippage_perc(CONFIG["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=CONFIG["position_size"])
    cerebro.addstrategy(strategy_class(SMA_CROSS, "analyzers_e2e_sma"))
    cerebro.addanalyzer(bt.analyzers.SharpeRatio, _name="SharpeRatio")
    cerebro.addanalyzer(
        bt.analyzers.SharpeRatio_A,
        _name="SharpeRatio_A",
        timeframe=bt.TimeFrame.Days,
        riskfreerate=0.0,
    )
    for name in ("DrawDown", "TradeAnalyzer", "TimeReturn", "AnnualReturn"):
        cerebro.addanalyzer(getattr(bt.analyzers, name), _name=name)
    strategy = cerebro.run()[0]
    return {name: plain_json(a.get_analysis()) for name, a in strategy.analyzers.getitems()}


@pytest.fixture(scope="module")
def runs(engine: Engine) -> dict[str, Any]:
    return {mode: run(engine, SMA_CROSS, mode) for mode in ("verified", "fast")}


def test_analyzers_in_both_modes_equal_plain_backtrader(runs: dict[str, Any]) -> None:
    expected = plain_analyses()
    assert list(expected) == [
        "mine", "SharpeRatio", "SharpeRatio_A", "DrawDown", "TradeAnalyzer", "TimeReturn",
        "AnnualReturn",
    ]  # fmt: skip
    for mode, result in runs.items():
        assert result.analyzer_errors == {}, mode
        assert result.analyzers == expected, mode  # every float bit for bit
        assert result.analyzers_source == "strategy_process"
        assert result.analyzers_verified is False
    verified = runs["verified"].analyzers
    assert verified["TradeAnalyzer"]["total"]["closed"] == len(runs["verified"].trade_log) > 10
    assert verified["mine"]["trades"] == len(runs["verified"].trade_log)
    assert isinstance(verified["SharpeRatio"]["sharperatio"], float)
    assert len(verified["TimeReturn"]) == len(runs["verified"].equity_curve)


def test_verified_mode_labels_the_analyzers_unverified(runs: dict[str, Any]) -> None:
    verified, fast = runs["verified"], runs["fast"]
    assert verified.integrity.verified is True
    assert verified.integrity.claim_matches is True, verified.warnings  # analyzers left out
    [label] = [w for w in verified.warnings if w.startswith("unverified_analyzers:")]
    assert "mine, SharpeRatio, SharpeRatio_A, DrawDown" in label
    assert "a strategy can forge them" in label and "the referee's" in label
    assert not any(w.startswith("unverified_analyzers:") for w in fast.warnings)


def test_the_status_answer_carries_the_small_ones_and_names_the_rest(
    runs: dict[str, Any],
) -> None:
    result = runs["verified"]
    compact = views.result_view(result, cached=False, full=False)
    assert "TimeReturn" in compact.analyzers_omitted  # ~1,500 returns
    assert compact.analyzers["SharpeRatio"] == result.analyzers["SharpeRatio"]
    assert set(compact.analyzers) | set(compact.analyzers_omitted) == set(result.analyzers)
    assert len(compact.model_dump_json()) < 16 * 1024
    full = views.result_view(result, cached=False, full=True)
    assert full.analyzers == result.analyzers and full.analyzers_omitted == []
    assert json.loads(full.model_dump_json())["analyzers"]["TimeReturn"]


def test_a_forged_analyzer_changes_only_the_analyzers(engine: Engine, runs: dict[str, Any]) -> None:
    forged = run(engine, FORGER, "verified")
    honest = runs["verified"]
    assert forged.analyzers["SharpeRatio"] == {"sharperatio": 42.0}  # what the process said
    assert forged.analyzers["SharpeRatio_A"] == {"sharperatio": 42.0}  # a subclass: patched too
    assert honest.analyzers["SharpeRatio"]["sharperatio"] != 42.0
    # The published numbers are the referee's, as for the honest run.
    assert forged.metrics == honest.metrics
    assert [p.value for p in forged.equity_curve] == [p.value for p in honest.equity_curve]
    assert forged.integrity.claim_matches is True
    assert any(w.startswith("unverified_analyzers:") for w in forged.warnings)

"""More data per run through the real sandbox (interface section 8): extra symbols and a
benchmark, in both modes.

A pairs strategy on ORCL and NVDA, which finds its feeds with `getdatabyname` and trades both
legs from the ratio of their closes, runs through the real engine verified and fast, and once
in this process with plain Backtrader given the same two feeds (preloaded, named, as anyone
runs a pairs trade at home). The final value, the broker value after every bar and every
closed trade must be equal as floats, and the verified run's claim must match the referee's
replay. A strategy that reads the second feed's next bar fails in verified mode. A run with a
benchmark publishes alpha, beta, correlation and buy-and-hold as pandas computes them from
the two CSV files.
"""

from __future__ import annotations

from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER
from tests.integration.test_backtest_parity import Tape, apply_compat, raw_bars, strategy_class
from tests.strategies import PAIRS

pytestmark = DOCKER

FILES = {"ORCL": "orcl-1995-2014.txt", "NVDA": "nvda-1999-2014.txt"}
PAIRS_CONFIG: dict[str, Any] = {
    "symbol": "ORCL",
    "extra_symbols": ["NVDA"],
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2009-12-31",
    "initial_capital": 100_000,
    "commission": 0.001,
    "slippage": 0.0005,
    "data_source": "file",
    "timeout_seconds": 120,
}


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0)
    engine = Engine(settings)
    yield engine
    engine.close()


def run(engine: Engine, code: str, config: dict[str, Any], mode: str) -> Any:
    request = RunRequest(
        backtest_id=f"bt_feeds_{mode}_{abs(hash((code, str(config)))):x}",
        code=code,
        config=BacktestConfig(**{**config, "mode": mode}),
    )
    return engine.run(request)


def plain_pairs(config: dict[str, Any]) -> tuple[float, list[float], list[dict[str, Any]]]:
    """PAIRS with plain Backtrader: both raw files as named PandasData feeds, preloaded."""
    apply_compat()
    cerebro = bt.Cerebro(stdstats=False)
    for symbol in ("ORCL", "NVDA"):
        bars = raw_bars(FILES[symbol], config["start_date"], config["end_date"])
        cerebro.adddata(bt.feeds.PandasData(dataname=bars), name=symbol)
    cerebro.broker.setcash(float(config["initial_capital"]))
    cerebro.broker.setcommission(commission=config["commission"])
    cerebro.broker.set_slippage_perc(config["slippage"])
    cerebro.addstrategy(strategy_class(PAIRS, "several_feeds_e2e_pairs"))
    cerebro.addanalyzer(NamedTape, _name="tape")
    strategy = cerebro.run()[0]
    return cerebro.broker.getvalue(), strategy.analyzers.tape.values, strategy.analyzers.tape.trades


class NamedTape(Tape):
    """Tape, with the name of the feed each closed trade was on."""

    def notify_trade(self, trade: Any) -> None:
        closed = len(self.trades)
        super().notify_trade(trade)
        if len(self.trades) > closed:
            self.trades[-1]["symbol"] = trade.data._name


def test_a_pairs_trade_verified_equals_fast_equals_plain_backtrader(engine: Engine) -> None:
    verified = run(engine, PAIRS, PAIRS_CONFIG, "verified")
    fast = run(engine, PAIRS, PAIRS_CONFIG, "fast")
    final, values, trades = plain_pairs(PAIRS_CONFIG)
    assert verified.result is not None, verified.error
    assert fast.result is not None, fast.error
    verified, fast = verified.result, fast.result

    assert verified.integrity.verified is True
    assert verified.integrity.claim_matches is True, verified.warnings
    assert verified.integrity.rejected_events == 0
    assert verified.integrity.events >= 20, "the case must trade both legs to prove anything"
    assert len(trades) >= 10, "the case must close trades to prove anything"
    for result in (verified, fast):
        assert result.metrics["final_value"] == final
        assert [point.value for point in result.equity_curve] == values
        assert len(result.trade_log) == len(trades)
        for got, want in zip(result.trade_log, trades, strict=True):
            for key in ("entry_time", "exit_time", "direction", "pnl", "pnl_net", "commission"):
                assert got[key] == want[key], (key, got, want)
            assert got["symbol"] == want["symbol"], (got, want)  # the leg it closed
        assert {trade["symbol"] for trade in result.trade_log} == {"ORCL", "NVDA"}
        # The data block: ORCL's bars, and the feed it was traded against.
        assert result.data.bars == len(values)
        [extra] = result.data.extra_symbols
        assert (extra.symbol, extra.source, extra.bars, extra.path) == (
            "NVDA", "file", len(values), "NVDA/D1.csv",
        )  # fmt: skip
    # Both legs traded: a short and a long closed at the same bar, the pair's exit.
    exits = pd.DataFrame(verified.trade_log).groupby("exit_time")["direction"].agg(set)
    assert (exits == {"long", "short"}).sum() >= 5


def test_reading_the_second_feeds_next_bar_fails_in_a_verified_run(engine: Engine) -> None:
    code = """
import backtrader as bt

class PeekAtNvda(bt.Strategy):
    def next(self):
        nvda = self.getdatabyname("NVDA")
        if nvda.close[1] > nvda.close[0]:
            self.buy()
"""
    outcome = run(engine, code, PAIRS_CONFIG, "verified")
    assert outcome.error is not None and outcome.error.type is ErrorType.RUNTIME_ERROR
    assert "index 1 and later have not happened yet" in outcome.error.message
    assert outcome.error.details["exception_type"] == "IndexError"


HOLDER = """
import backtrader as bt

class TrendHolder(bt.Strategy):
    def __init__(self):
        self.sma = bt.ind.SMA(period=50)

    def next(self):
        if not self.position and self.data.close[0] > self.sma[0]:
            self.buy(size=200)
        elif self.position and self.data.close[0] < self.sma[0] * 0.97:
            self.close()
"""


def test_a_benchmark_gives_alpha_beta_and_correlation_as_pandas_computes_them(
    engine: Engine,
) -> None:
    config = {**PAIRS_CONFIG, "extra_symbols": [], "benchmark": "NVDA"}
    outcome = run(engine, HOLDER, config, "verified")
    assert outcome.result is not None, outcome.error
    result = outcome.result
    metrics = result.metrics

    # Independently, from the two CSV files and the published equity curve.
    orcl = raw_bars(FILES["ORCL"], config["start_date"], config["end_date"])["close"]
    nvda = raw_bars(FILES["NVDA"], "1999-01-01", config["end_date"])["close"]
    benchmark = nvda.reindex(orcl.index, method="ffill")
    equity = pd.Series(
        [config["initial_capital"], *(p.value for p in result.equity_curve)], dtype="float64"
    )
    returns = equity.pct_change().iloc[2:].reset_index(drop=True)  # r_2 .. r_N
    bench = benchmark.pct_change().iloc[1:].reset_index(drop=True)  # b_2 .. b_N
    beta = returns.cov(bench) / bench.var()
    expected = {
        "buy_and_hold_return_pct": (orcl.iloc[-1] / orcl.iloc[0] - 1) * 100,
        "beta": beta,
        "alpha": (returns.mean() - beta * bench.mean()) * 252,
        "correlation": returns.corr(bench),
        "tracking_error_pct": (returns - bench).std() * np.sqrt(252) * 100,
        "information_ratio": (returns - bench).mean() / (returns - bench).std() * np.sqrt(252),
    }
    assert len(result.equity_curve) == len(orcl)
    assert result.trade_log, "the case must trade to prove anything"
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert 0.1 < metrics["correlation"] < 1  # type: ignore[operator]
    assert result.data.benchmark is not None and result.data.benchmark.symbol == "NVDA"
    assert metrics["probabilistic_sharpe_ratio"] is not None

    # Without a benchmark: buy-and-hold still, the comparison figures null.
    alone = run(engine, HOLDER, {**config, "benchmark": None}, "verified")
    assert alone.result is not None, alone.error
    assert alone.result.metrics["buy_and_hold_return_pct"] == metrics["buy_and_hold_return_pct"]
    for name in ("alpha", "beta", "correlation", "information_ratio", "tracking_error_pct"):
        assert alone.result.metrics[name] is None, name

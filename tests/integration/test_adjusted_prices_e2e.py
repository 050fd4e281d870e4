"""`adjust_prices` end to end (issue 16): an SMA cross on ORCL's Yahoo file with adjusted prices,
through the real engine and image in both modes, equals plain Backtrader reading the raw
shared file with `YahooFinanceCSVData(dataname=..., fromdate, todate)` and its defaults.

The catalog is the session's `data_dir` (tests/conftest.py), imported from the shared files
through `data import`, which keeps their `Adj Close`. Backtrader's CSV feeds stamp daily bars
at the session's end and ours are at 00:00, so bars are compared by position (the broker
value after each), not by stamp.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import backtrader as bt
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER, SHARED_DATA
from tests.integration.test_backtest_parity import Tape, apply_compat, strategy_class

pytestmark = DOCKER

FILE = SHARED_DATA / "orcl-1995-2014.txt"
CONFIG: dict[str, Any] = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2009-12-31",
    "initial_capital": 100_000,
    "position_size": 100,
    "data_source": "file",
    "adjust_prices": True,
    "params": {"fast": 10, "slow": 30},
}
CODE = """
import backtrader as bt


class SmaCross(bt.Strategy):
    params = (("fast", 10), ("slow", 30))

    def __init__(self):
        fast, slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)

    def next(self):
        if self.cross > 0:
            self.close()
            self.buy()
        elif self.cross < 0:
            self.close()
            self.sell()
"""


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0)
    engine = Engine(settings)
    yield engine
    engine.close()


def run(engine: Engine, mode: str, **more: Any) -> Any:
    config = BacktestConfig(**{**CONFIG, **more, "mode": mode})
    outcome = engine.run(
        RunRequest(
            backtest_id=f"bt_adjusted_{mode}_{config.adjust_prices}", code=CODE, config=config
        )
    )
    assert outcome.result is not None, outcome.error
    return outcome.result


def plain_backtrader(**feed_params: Any) -> tuple[float, list[float], list[dict[str, Any]]]:
    """The strategy as at home: the raw file through YahooFinanceCSVData, dates as dates (the
    feed extends `todate` to the session's end, so the last day is in)."""
    apply_compat()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(
        bt.feeds.YahooFinanceCSVData(
            dataname=str(FILE),
            fromdate=date.fromisoformat(CONFIG["start_date"]),
            todate=date.fromisoformat(CONFIG["end_date"]),
            **feed_params,
        )
    )
    cerebro.broker.setcash(float(CONFIG["initial_capital"]))
    cerebro.addsizer(bt.sizers.FixedSize, stake=CONFIG["position_size"])
    cerebro.addstrategy(strategy_class(CODE, "adjusted_prices_sma_cross"), **CONFIG["params"])
    cerebro.addanalyzer(Tape, _name="tape")
    tape = cerebro.run()[0].analyzers.tape
    return cerebro.broker.getvalue(), tape.values, tape.trades


def test_adjusted_run_equals_backtrader_yahoo_feed_in_both_modes(engine: Engine) -> None:
    final, values, trades = plain_backtrader()
    unadjusted, _, _ = plain_backtrader(adjclose=False)
    assert unadjusted != final  # the adjustment moves the numbers: this test can fail
    assert len(trades) >= 20, "the case must trade to prove anything"

    verified = run(engine, "verified")
    fast = run(engine, "fast")
    assert verified.integrity.verified is True
    assert verified.integrity.claim_matches is True, verified.warnings
    for result in (verified, fast):
        assert result.metrics["final_value"] == final
        assert [point.value for point in result.equity_curve] == values  # bar by bar
        assert len(result.trade_log) == len(trades)
        for got, want in zip(result.trade_log, trades, strict=True):
            assert (got["pnl"], got["pnl_net"], got["direction"]) == (
                want["pnl"], want["pnl_net"], want["direction"],
            )  # fmt: skip
            assert got["entry_time"][:10] == want["entry_time"][:10]  # same day, other time


def test_without_the_flag_the_file_prices_are_used(engine: Engine) -> None:
    """The default is unadjusted: the same run without the flag is not the adjusted one."""
    adjusted = run(engine, "fast")
    plain = run(engine, "fast", adjust_prices=False)
    assert plain.metrics["final_value"] != adjusted.metrics["final_value"]
    assert plain.data.sha256 != adjusted.data.sha256
    assert plain.data.bars == adjusted.data.bars

"""Parity, bit for bit: verified == fast == plain in-process Backtrader.

Each strategy below exercises one family of orders (market, target percent, limit and stop
entries with every form of `valid`, OCO exits placed from notify_order, cancels, brackets,
trailing stops). It runs through the real engine in both modes, and once in this process with
plain Backtrader given the same bars and broker (preloaded, as anyone runs it at home). The
final value, the broker value after every bar and every closed trade must be equal as floats,
not approximately: the verified run's numbers come from the referee's replay of the orders
the strategy committed, so any event lost, stamped on the wrong bar or replayed with another
size, price or expiry would move them.
"""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER
from tests.integration.test_backtest_parity import Tape, apply_compat, raw_bars, strategy_class

pytestmark = DOCKER

HEADER = "import datetime\nimport backtrader as bt\n"

STRATEGIES: dict[str, str] = {
    "sma_cross": """
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
""",
    "target_percent": """
class TargetPercent(bt.Strategy):
    def __init__(self):
        self.rsi = bt.ind.RSI(period=14)

    def next(self):
        self.order_target_percent(target=min(0.95, max(0.0, (70 - self.rsi[0]) / 40)))
""",
    "limit_stop_oco": """
class LimitStopOco(bt.Strategy):
    def __init__(self):
        self.sma = bt.ind.SMA(period=20)
        self.entry = None
        self.exits = []

    def notify_order(self, order):  # `order` is a copy: compare refs
        is_entry = self.entry is not None and order.ref == self.entry.ref
        if order.status == order.Completed and is_entry:
            price = order.executed.price
            stop = self.sell(size=order.executed.size, exectype=bt.Order.Stop, price=price * 0.95)
            take = self.sell(size=order.executed.size, exectype=bt.Order.Limit,
                             price=price * 1.08, oco=stop)
            self.exits = [stop, take]
        if not order.alive() and is_entry:
            self.entry = None

    def next(self):
        if len(self) % 25 == 0 and self.exits:  # give up on the exits now and then
            for order in self.exits:
                self.cancel(order)
            self.exits = []
            self.close()
        if self.position or self.entry is not None:
            return
        kind = len(self) % 3
        if kind == 0:
            valid = datetime.timedelta(days=3)
        elif kind == 1:
            valid = self.data.datetime.date(0) + datetime.timedelta(days=5)
        else:
            valid = bt.Order.DAY
        if self.data.close[0] > self.sma[0]:
            self.entry = self.buy(exectype=bt.Order.Limit, price=self.data.close[0] * 0.99,
                                  valid=valid)
        else:
            self.entry = self.buy(exectype=bt.Order.StopLimit, price=self.data.close[0] * 1.01,
                                  plimit=self.data.close[0] * 1.02, valid=valid)
""",
    "bracket": """
class Bracket(bt.Strategy):
    def __init__(self):
        self.sma = bt.ind.SMA(period=15)
        self.legs = []

    def next(self):
        if self.position or any(order.alive() for order in self.legs):
            return
        if self.data.close[0] > self.sma[0]:
            close = self.data.close[0]
            self.legs = self.buy_bracket(price=close * 0.995, stopprice=close * 0.96,
                                         limitprice=close * 1.05)
""",
    "stop_trail": """
class StopTrail(bt.Strategy):
    def __init__(self):
        self.sma = bt.ind.SMA(period=20)
        self.trail = None

    def notify_order(self, order):
        if order.status == order.Completed and order.isbuy():
            self.trail = self.sell(exectype=bt.Order.StopTrail, trailpercent=0.04)

    def next(self):
        if not self.position and self.trail is None and self.data.close[0] > self.sma[0]:
            self.buy()
        if self.trail is not None and not self.trail.alive():
            self.trail = None
""",
}

COSTS = {
    "no_costs": {"position_size": 100},
    "commission_slippage": {"commission": 0.001, "slippage": 0.0005, "position_size": 50},
}
BASE = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2009-12-31",
    "initial_capital": 100_000,
    "data_source": "file",
    "timeout_seconds": 120,
}
FILE = "orcl-1995-2014.txt"


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(
        data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0
    )
    engine = Engine(settings)
    yield engine
    engine.close()


def plain_run(code: str, name: str, config: dict[str, Any]) -> tuple[float, list[float], list]:
    """The strategy in this process with plain Backtrader: preloaded, the config's broker."""
    apply_compat()
    bars = raw_bars(FILE, config["start_date"], config["end_date"])
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=bars))
    cerebro.broker.setcash(float(config["initial_capital"]))
    cerebro.broker.setcommission(commission=config.get("commission", 0.0))
    cerebro.broker.set_slippage_perc(config.get("slippage", 0.0))
    cerebro.addsizer(bt.sizers.FixedSize, stake=config["position_size"])
    cerebro.addstrategy(strategy_class(code, name))
    cerebro.addanalyzer(Tape, _name="tape")
    strategy = cerebro.run()[0]
    return cerebro.broker.getvalue(), strategy.analyzers.tape.values, strategy.analyzers.tape.trades


def run(engine: Engine, code: str, config: dict[str, Any], mode: str) -> Any:
    request = RunRequest(
        backtest_id=f"bt_parity_{mode}_{abs(hash((code, str(config)))):x}",
        code=code,
        config=BacktestConfig(**{**config, "mode": mode}),
    )
    outcome = engine.run(request)
    assert outcome.result is not None, outcome.error
    return outcome.result


@pytest.mark.parametrize("costs", list(COSTS))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_verified_equals_fast_equals_plain_backtrader(engine, strategy, costs):
    code = HEADER + STRATEGIES[strategy]
    config = {**BASE, **COSTS[costs]}
    verified = run(engine, code, config, "verified")
    fast = run(engine, code, config, "fast")
    final, values, trades = plain_run(code, f"verified_parity_{strategy}_{costs}", config)

    assert verified.integrity.verified is True
    assert verified.integrity.claim_matches is True, verified.warnings
    assert verified.integrity.rejected_events == 0
    assert verified.integrity.events >= 10, "the case must place orders to prove anything"
    assert fast.integrity.mode == "fast" and fast.integrity.verified is False

    for result in (verified, fast):
        assert result.metrics["final_value"] == final
        assert [point.value for point in result.equity_curve] == values
        assert len(result.trade_log) == len(trades)
        for got, want in zip(result.trade_log, trades, strict=True):
            for key in ("entry_time", "exit_time", "direction", "pnl", "pnl_net", "commission"):
                assert got[key] == want[key], (key, got, want)
    assert len(trades) >= 3, "the case must close trades to prove anything"
    assert [p.timestamp for p in verified.equity_curve] == [
        stamp.isoformat() for stamp in raw_bars(FILE, BASE["start_date"], BASE["end_date"]).index
    ]


def test_a_verified_run_stops_where_the_strategy_stopped(engine):
    code = HEADER + """
class StopsEarly(bt.Strategy):
    def next(self):
        if len(self) == 10:
            self.buy(size=5)
        if len(self) == 40:
            self.env.runstop()
"""
    config = {**BASE, "position_size": 1}
    verified = run(engine, code, config, "verified")
    fast = run(engine, code, config, "fast")
    assert len(verified.equity_curve) == len(fast.equity_curve) == 40
    assert verified.metrics["final_value"] == fast.metrics["final_value"]
    assert verified.integrity.claim_matches is True


def test_the_bar_count_is_known_in_both_modes(engine):
    code = HEADER + """
class Counts(bt.Strategy):
    def next(self):
        if len(self) == 1:
            print("BARS", self.data.total_bars, "BUFLEN", self.data.buflen(), flush=True)
"""
    config = {**BASE, "position_size": 1}
    bars = len(raw_bars(FILE, BASE["start_date"], BASE["end_date"]))
    verified = run(engine, code, config, "verified")
    fast = run(engine, code, config, "fast")
    assert f"BARS {bars} BUFLEN 1" in verified.logs  # buflen: what has been seen so far
    assert f"BARS {bars} BUFLEN {bars}" in fast.logs  # preloaded: the whole file
    assert date.fromisoformat(verified.data.first[:10]) >= date(2004, 1, 1)


def test_resampled_bars_verified_equals_fast_equals_plain_backtrader(engine, data_dir):
    """H1 bars the trusted side resamples from the catalog's 5-minute file: the strategy side
    gets finished hourly bars one at a time, and plain Backtrader given the same hourly bars
    agrees with both modes to the last bit."""
    from backtest_sandbox.data import catalog

    code = HEADER + STRATEGIES["sma_cross"]
    config = {
        "symbol": "IDX",
        "timeframe": "H1",
        "start_date": "2006-01-01",
        "end_date": "2006-12-31",
        "initial_capital": 100_000,
        "position_size": 1,
        "data_source": "file",
    }
    verified = run(engine, code, config, "verified")
    fast = run(engine, code, config, "fast")
    assert any("resampled" in warning for warning in verified.warnings), verified.warnings

    prepared = catalog.prepare(BacktestConfig(**config), data_dir)
    bars = pd.read_csv(io.BytesIO(prepared.csv_bytes), index_col="datetime", parse_dates=True)
    apply_compat()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(
        bt.feeds.PandasData(dataname=bars, timeframe=bt.TimeFrame.Minutes, compression=60)
    )
    cerebro.broker.setcash(100_000.0)
    cerebro.addsizer(bt.sizers.FixedSize, stake=1)
    cerebro.addstrategy(strategy_class(code, "verified_parity_resampled"))
    cerebro.addanalyzer(Tape, _name="tape")
    tape = cerebro.run()[0].analyzers.tape

    assert verified.integrity.claim_matches is True
    assert len(tape.trades) >= 3, "the case must close trades to prove anything"
    for result in (verified, fast):
        assert result.metrics["final_value"] == cerebro.broker.getvalue()
        assert [point.value for point in result.equity_curve] == tape.values
        assert [t["pnl"] for t in result.trade_log] == [t["pnl"] for t in tape.trades]

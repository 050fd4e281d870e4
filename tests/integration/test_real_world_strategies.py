"""Strategies as people write them at home (issue 16): a class with an `alias`, an abstract base
and `STRATEGY`, a Sizer class of their own, a script's `main()` that sets a futures commission,
coc, leverage or cheat-on-open, `import matplotlib.pyplot`, a module-level runner.

Each runs through the real engine and image in both modes where the mode allows it, and once
in this process as its author runs it: plain Backtrader with the settings written the way a
script's main() writes them (not through our config mapping). The final value, the broker value
after every bar and the closed trades must be equal as floats.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import backtrader as bt
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER
from tests.integration.test_backtest_parity import Tape, apply_compat, raw_bars

pytestmark = DOCKER

FILE = "orcl-1995-2014.txt"
BASE = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2004-01-01",
    "end_date": "2008-12-31",
    "initial_capital": 100000.0,
    "position_size": 100,
    "data_source": "file",
}

# Backtrader's bundled backtrader/strategies/sma_crossover.py, as people copy it: an alias
# makes Backtrader create a second subclass, which is not a second strategy.
ALIASED = """
import backtrader as bt


class SMA_CrossOver(bt.Strategy):
    alias = ("SMA_CrossOver",)
    params = (("fast", 10), ("slow", 30), ("_movav", bt.ind.MovAv.SMA))

    def __init__(self):
        sma_fast = self.p._movav(period=self.p.fast)
        sma_slow = self.p._movav(period=self.p.slow)
        self.buysig = bt.ind.CrossOver(sma_fast, sma_slow)

    def next(self):
        if self.position.size:
            if self.buysig < 0:
                self.sell()
        elif self.buysig > 0:
            self.buy()
"""

# An abstract base, two strategies and STRATEGY naming one; a Sizer class of the file; a
# script's main() below the `__main__` guard, with a plot at the end.
SCRIPT = """
import backtrader as bt
import matplotlib.pyplot as plt


class HalfCash(bt.Sizer):
    params = (("fraction", 0.5),)

    def _getsizing(self, comminfo, cash, data, isbuy):
        return int(cash * self.p.fraction / data.close[0])


class Base(bt.Strategy):
    params = (("period", 20),)

    def __init__(self):
        self.ma = bt.ind.EMA(period=self.p.period)

    def entry(self):
        raise NotImplementedError

    def next(self):
        if not self.position and self.entry():
            self.buy()
        elif self.position and self.data.close[0] < self.ma[0]:
            self.close()


class Breakout(Base):
    def entry(self):
        return self.data.close[0] > self.ma[0] * 1.02


class Pullback(Base):
    def entry(self):
        return self.data.close[0] < self.ma[0] * 0.98


STRATEGY = Breakout


def main():
    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.YahooFinanceCSVData(dataname="orcl.csv"))
    cerebro.addstrategy(Breakout)
    cerebro.addsizer(HalfCash)
    cerebro.run()
    cerebro.plot()
    plt.show()


if __name__ == "__main__":
    main()
"""

# Trades on the open of the next bar: next_open runs before that bar's orders fill.
CHEAT_ON_OPEN = """
import backtrader as bt


class OpenTrader(bt.Strategy):
    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=5), bt.ind.SMA(period=20))

    def next_open(self):
        if not self.position and self.cross[0] > 0:
            self.buy(coc=False)
        elif self.position and self.cross[0] < 0:
            self.close(coc=False)
"""


class PerShare(bt.CommInfoBase):  # type: ignore[misc]
    """A fixed amount per share, as people write it at home."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED))


def fixed_stake(cerebro: Any, stake: float = BASE["position_size"]) -> None:
    cerebro.addsizer(bt.sizers.FixedSize, stake=stake)


@dataclass(frozen=True)
class Case:
    code: str
    strategy: str  # the class its author runs
    config: dict[str, Any]  # beside BASE
    home: Any  # (cerebro, module): what the script's main() does, as people write it
    cerebro_options: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = ("verified", "fast")


CASES = {
    "alias_percent_sizer": Case(
        ALIASED,
        "SMA_CrossOver",
        {"sizer": "percent", "sizer_params": {"percents": 90}, "commission": 0.001},
        lambda c, m: (
            c.addsizer(bt.sizers.PercentSizer, percents=90),
            c.broker.setcommission(commission=0.001),
        ),
    ),
    "strategy_choice_sizer_class_matplotlib_main": Case(
        SCRIPT,
        "Breakout",
        {"sizer": "HalfCash", "sizer_params": {"fraction": 0.5}},
        lambda c, m: c.addsizer(m.HalfCash, fraction=0.5),
    ),
    "futures_commission": Case(
        ALIASED,
        "SMA_CrossOver",
        {
            "commission_type": "futures",
            "commission": 2.0,
            "margin": 2000.0,
            "mult": 10.0,
            "position_size": 10,  # ten contracts: 20,000 of margin
        },
        lambda c, m: (fixed_stake(c, 10), c.broker.setcommission(2.0, margin=2000.0, mult=10.0)),
    ),
    "per_share_commission": Case(
        ALIASED,
        "SMA_CrossOver",
        {"commission_type": "per_contract", "commission": 0.01},
        lambda c, m: (fixed_stake(c), c.broker.addcommissioninfo(PerShare(commission=0.01))),
    ),
    "coc_and_leverage": Case(
        ALIASED,
        "SMA_CrossOver",
        {"coc": True, "leverage": 2.0, "commission": 0.001},
        lambda c, m: (
            fixed_stake(c),
            c.broker.set_coc(True),
            c.broker.setcommission(commission=0.001, leverage=2.0),
        ),
    ),
    "cheat_on_open": Case(
        CHEAT_ON_OPEN,
        "OpenTrader",
        {"cheat_on_open": True},
        lambda c, m: fixed_stake(c),
        cerebro_options={"cheat_on_open": True},
        modes=("fast",),
    ),
}


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0)
    engine = Engine(settings)
    yield engine
    engine.close()


def run(engine: Engine, code: str, config: dict[str, Any], mode: str) -> Any:
    request = RunRequest(
        backtest_id=f"bt_home_{mode}_{abs(hash((code, str(config)))):x}",
        code=code,
        config=BacktestConfig(**{**BASE, **config, "mode": mode}),
    )
    return engine.run(request)


def at_home(name: str, case: Case) -> tuple[float, list[float], list[dict[str, Any]]]:
    """The script as its author runs it: the file's strategy, main()'s settings, the bars."""
    apply_compat()
    module = types.ModuleType(f"home_{name}")  # imported as a module: main() does not run
    sys.modules[module.__name__] = module
    exec(compile(case.code, f"{module.__name__}.py", "exec"), module.__dict__)
    cerebro = bt.Cerebro(stdstats=False, **case.cerebro_options)
    bars = raw_bars(FILE, BASE["start_date"], BASE["end_date"])
    cerebro.adddata(bt.feeds.PandasData(dataname=bars))
    cerebro.broker.setcash(BASE["initial_capital"])
    case.home(cerebro, module)
    cerebro.addstrategy(getattr(module, case.strategy))
    cerebro.addanalyzer(Tape, _name="tape")
    tape = cerebro.run()[0].analyzers.tape
    return cerebro.broker.getvalue(), tape.values, tape.trades


@pytest.mark.parametrize("name", list(CASES))
def test_runs_as_it_does_at_home(engine: Engine, name: str) -> None:
    case = CASES[name]
    final, values, trades = at_home(name, case)
    assert len(trades) >= 3, "the case must trade to prove anything"
    for mode in case.modes:
        outcome = run(engine, case.code, case.config, mode)
        assert outcome.result is not None, (mode, outcome.error)
        result = outcome.result
        assert result.metrics["final_value"] == final, mode
        assert [point.value for point in result.equity_curve] == values, mode
        assert [t["pnl_net"] for t in result.trade_log] == [t["pnl_net"] for t in trades], mode
        if mode == "verified":
            assert result.integrity.claim_matches is True, result.warnings


def test_cheat_on_open_is_refused_by_name_in_verified_mode(engine: Engine) -> None:
    outcome = run(engine, CHEAT_ON_OPEN, {"cheat_on_open": True}, "verified")
    assert outcome.error is not None
    assert outcome.error.type.value == "unsupported_feature"
    assert outcome.error.details["feature"] == "cheat_on_open"
    assert "mode 'fast'" in outcome.error.message


def test_a_sizer_the_file_does_not_define_says_so(engine: Engine) -> None:
    outcome = run(engine, ALIASED, {"sizer": "HalfCash"}, "fast")
    assert outcome.error is not None and outcome.error.type.value == "runtime_error"
    assert "config.sizer names 'HalfCash'" in outcome.error.message


@pytest.mark.parametrize("mode", ["verified", "fast"])
def test_a_module_level_runner_is_told_where_its_code_belongs(engine: Engine, mode: str) -> None:
    runner = SCRIPT.replace('if __name__ == "__main__":\n    main()', "main()")
    outcome = run(engine, runner, {}, mode)
    assert outcome.error is not None and outcome.error.type.value == "runtime_error"
    assert outcome.error.details["exception_type"] == "FileNotFoundError"
    assert 'move that code under `if __name__ == "__main__":`' in outcome.error.message

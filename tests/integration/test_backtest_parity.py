"""Parity: a sandboxed run gives exactly what plain, in-process Backtrader gives.

Each case runs one of the example strategies twice on the same inputs:

- through the real sandbox, as users do: `backtest-sandbox run STRATEGY --config ... --json`
  against a catalog built from the files under ../shared/data/backtrader/;
- in this test process, with a Cerebro built here from the same raw file (pandas and
  `bt.feeds.PandasData`), the same cash, `setcommission(commission=...)`,
  `set_slippage_perc(...)`, a `FixedSize` sizer of position_size x contract_size, the params,
  and the date range inclusive: the mapping docs/interface.md section 3 promises, written out
  independently of the harness.

The final value, the trade count, every closed trade (pnl, pnl after commission, commission,
entry and exit bar and entry price) and the broker value after every bar must agree: floats
to 1e-9 relative, everything else exactly. Nothing is hard-coded: a change of the data, the
strategy or Backtrader moves both sides.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import backtrader as bt
import pandas as pd
import pytest
from backtrader.utils import num2date

from tests.conftest import DOCKER, REPO, SHARED_DATA

pytestmark = DOCKER

EXAMPLES = REPO / "examples"
REL = 1e-9


def apply_compat() -> None:
    """runner_image/compat.py's shims, loaded by path: backtrader 1.9.78.123 on Python 3.11
    needs `collections.Iterable` back, as the harness restores it in the sandbox."""
    spec = importlib.util.spec_from_file_location("parity_compat", REPO / "runner_image/compat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep it clean
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    module.apply()


@dataclass(frozen=True)
class Case:
    strategy: str  # a file under examples/
    file: str  # a file under ../shared/data/backtrader/
    config: dict[str, Any]
    min_trades: int  # the case proves little unless the strategy really trades


CASES = {
    "sma_cross_orcl": Case(
        "sma_cross.py",
        "orcl-1995-2014.txt",
        {
            "symbol": "ORCL",
            "timeframe": "D1",
            "start_date": "2000-01-03",  # the first bar of 2000: the start is inclusive
            "end_date": "2009-12-31",  # the last bar of 2009: the end is inclusive
            "initial_capital": 10000,
            "position_size": 100,
            "params": {"fast": 10, "slow": 30},
        },
        min_trades=40,
    ),
    "breakout_commission_slippage_nvda": Case(
        "channel_breakout.py",
        "nvda-1999-2014.txt",
        {
            "symbol": "NVDA",
            "timeframe": "D1",
            "start_date": "2003-01-01",
            "end_date": "2008-12-31",
            "initial_capital": 10000,
            "commission": 0.001,
            "slippage": 0.0005,
            "position_size": 10,
            "contract_size": 10,
            "params": {"entry": 20, "exit": 10, "stop": 0.08},
        },
        min_trades=15,
    ),
    "indicators_idx_2006": Case(
        "indicators.py",
        "2006-day-001.txt",
        {
            "symbol": "IDX",
            "timeframe": "D1",
            "start_date": "2006-01-01",
            "end_date": "2006-12-31",
            "initial_capital": 10000,
            "position_size": 1,
            "params": {"rsi_low": 55, "rsi_high": 60},
        },
        min_trades=5,
    ),
    "indicators_commission_slippage_nvda": Case(
        "indicators.py",
        "nvda-1999-2014.txt",
        {
            "symbol": "NVDA",
            "timeframe": "D1",
            "start_date": "2005-01-01",
            "end_date": "2010-12-31",
            "initial_capital": 10000,
            "commission": 0.001,
            "slippage": 0.0005,
            "position_size": 10,
            "params": {},
        },
        min_trades=10,
    ),
}


# --- the reference: plain Backtrader, in this process ----------------------------------------


class Tape(bt.Analyzer):  # type: ignore[misc]
    """Broker value after every bar and every closed trade, as plain Backtrader reports them."""

    def start(self) -> None:
        self.values: list[float] = []
        self.trades: list[dict[str, Any]] = []
        self.opened: dict[int, float] = {}  # trade ref -> the size it opened with

    def next(self) -> None:  # the default prenext and nextstart call this: every bar counts
        self.values.append(self.strategy.broker.getvalue())

    def notify_trade(self, trade: Any) -> None:
        if trade.justopened:
            self.opened[trade.ref] = abs(trade.size)
        if trade.isclosed:
            size = self.opened.pop(trade.ref)  # every case opens and closes in one fill each
            sign = 1.0 if trade.long else -1.0
            self.trades.append(
                {
                    "entry_time": num2date(trade.dtopen).isoformat(timespec="seconds"),
                    "exit_time": num2date(trade.dtclose).isoformat(timespec="seconds"),
                    "direction": "long" if trade.long else "short",
                    "size": size,
                    "entry_price": trade.price,
                    "exit_price": trade.price + trade.pnl / (sign * size),
                    "pnl": trade.pnl,
                    "pnl_net": trade.pnlcomm,
                    "commission": trade.commission,
                    "bars_held": trade.barlen,
                }
            )


@dataclass
class Reference:
    final_value: float
    values: list[float]
    trades: list[dict[str, Any]] = field(default_factory=list)


def raw_bars(file: str, start: str, end: str) -> pd.DataFrame:
    """The shared file's daily bars with start <= date <= end, straight from the CSV."""
    frame = pd.read_csv(SHARED_DATA / file)
    frame.columns = [str(name).strip().lower() for name in frame.columns]
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("date"), format="%Y-%m-%d"))
    frame = frame[["open", "high", "low", "close", "volume"]].astype("float64")
    in_range = (frame.index.date >= date.fromisoformat(start)) & (
        frame.index.date <= date.fromisoformat(end)
    )
    return frame.loc[in_range]


def strategy_class(code: str, name: str) -> type:
    """Exec the example as a module and return its one bt.Strategy subclass."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # backtrader's metaclasses look classes up by module
    exec(compile(code, f"{name}.py", "exec"), module.__dict__)
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, bt.Strategy) and value.__module__ == name
    ]
    assert len(found) == 1, f"{name}: expected one strategy class, got {found}"
    return found[0]


def reference_run(case: Case, code: str, name: str) -> Reference:
    apply_compat()
    config = case.config
    bars = raw_bars(case.file, config["start_date"], config["end_date"])
    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.PandasData(dataname=bars))
    cerebro.broker.setcash(float(config["initial_capital"]))
    cerebro.broker.setcommission(commission=config.get("commission", 0.0))
    cerebro.broker.set_slippage_perc(config.get("slippage", 0.0))
    stake = config.get("position_size", 1.0) * config.get("contract_size", 1.0)
    cerebro.addsizer(bt.sizers.FixedSize, stake=stake)
    cerebro.addstrategy(strategy_class(code, name), **config["params"])
    cerebro.addanalyzer(Tape, _name="tape")
    strategy = cerebro.run()[0]
    tape = strategy.analyzers.tape
    return Reference(cerebro.broker.getvalue(), tape.values, tape.trades)


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_sandbox_equals_plain_backtrader(name, cli, tmp_path):
    case = CASES[name]
    strategy_path = EXAMPLES / case.strategy
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**case.config, "data_source": "file"}))

    run = cli("run", str(strategy_path), "--config", str(config_path), "--json")
    assert run.code == 0, run.stdout + run.stderr
    result = run.status["result"]
    expected = reference_run(case, strategy_path.read_text(), f"parity_{name}")

    # The same bars went in.
    bars = raw_bars(case.file, case.config["start_date"], case.config["end_date"])
    assert result["data"]["bars"] == len(bars)
    assert result["data"]["first"] == bars.index[0].isoformat()
    assert result["data"]["last"] == bars.index[-1].isoformat()

    # The same value came out, bar by bar and at the end.
    assert result["metrics"]["final_value"] == pytest.approx(expected.final_value, rel=REL)
    curve = [point["value"] for point in result["equity_curve"]]
    assert len(curve) == len(expected.values) == len(bars)
    assert curve == pytest.approx(expected.values, rel=REL)
    assert [p["timestamp"] for p in result["equity_curve"]] == [
        stamp.isoformat() for stamp in bars.index
    ]

    # The same trades, one by one.
    trades = result["trade_log"]
    assert result["metrics"]["total_trades"] == len(trades) == len(expected.trades)
    assert len(trades) >= case.min_trades, "the case must trade to prove anything"
    for position, (got, want) in enumerate(zip(trades, expected.trades, strict=True)):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=REL, abs=1e-9), (position, key)
            else:
                assert got[key] == value, (position, key)

    # Commission and slippage really were charged when asked for (not silently zero).
    commission = sum(trade["commission"] for trade in trades)
    if case.config.get("commission"):
        assert commission > 0
        assert all(t["pnl_net"] == pytest.approx(t["pnl"] - t["commission"]) for t in trades)
    else:
        assert commission == 0
    opens = {stamp.isoformat(): price for stamp, price in bars["open"].items()}
    slipped = [t for t in trades if t["entry_price"] != opens[t["entry_time"]]]
    if case.config.get("slippage"):
        assert slipped, "slippage was asked for, yet every entry filled at the bar's open"
    else:
        assert not slipped, "without slippage a market entry fills at the bar's open"

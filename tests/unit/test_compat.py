"""The Backtrader compatibility shims (runner_image/compat.py), and the paths that need none.

backtrader 1.9.78.123 on Python 3.11, pandas 3 and numpy 2: each shim gets a test that the
broken path is broken without it and works with it; the paths checked and found to work
unshimmed get a test that keeps them working (pytest turns every warning into an error).
"""

from __future__ import annotations

import collections
import collections.abc
import importlib.util
import json
import math
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "runner_image"
SHARED_DATA = REPO.parent / "shared" / "data" / "backtrader"

pytestmark = pytest.mark.timeout(60)

# An indicator that binds a child's line to its own with bindlines, the documented alternative
# to `self.lines.x = ...`; LineIterator.bindlines is where `collections.Iterable` is used.
BOUND_SMA = """\
import backtrader as bt


class BoundSma(bt.Indicator):
    lines = ("sma",)
    params = (("period", 5),)

    def __init__(self):
        bt.ind.SMA(self.data, period=self.p.period).bindlines("sma")
"""


def load_runner_module(name: str) -> types.ModuleType:
    """A runner_image module, loaded by path under a private name (no sys.path change)."""
    spec = importlib.util.spec_from_file_location(f"runner_{name}", RUNNER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # backtrader's metaclasses look classes up there
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep RUNNER clean
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def daily_bars() -> pd.DataFrame:
    frame = pd.read_csv(SHARED_DATA / "2006-day-001.txt", index_col="Date")
    frame.index = pd.to_datetime(frame.index, format="%Y-%m-%d")
    frame.columns = [name.lower() for name in frame.columns]
    return frame[["open", "high", "low", "close", "volume"]]


def exec_module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # backtrader's metaclasses look classes up there
    exec(compile(code, f"{name}.py", "exec"), module.__dict__)
    return module


# --- the collections ABC aliases --------------------------------------------------------------


def test_bindlines_is_broken_without_the_shim() -> None:
    # In a fresh interpreter that never applied the shim: why the shim exists. If backtrader
    # is ever upgraded past this, the shim can go.
    script = BOUND_SMA + textwrap.dedent("""
        import pandas as pd
        frame = pd.DataFrame({"close": [float(i) for i in range(10)]},
                             index=pd.date_range("2020-01-01", periods=10))
        cerebro = bt.Cerebro()
        cerebro.adddata(bt.feeds.PandasData(dataname=frame))

        class Uses(bt.Strategy):
            def __init__(self):
                BoundSma()

        cerebro.addstrategy(Uses)
        cerebro.run()
    """)
    process = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert process.returncode != 0
    assert "module 'collections' has no attribute 'Iterable'" in process.stderr


@pytest.mark.parametrize("runonce", [True, False], ids=["runonce", "next"])
def test_bindlines_works_after_the_shim(runonce: bool) -> None:
    load_runner_module("compat").apply()
    indicators = exec_module("bound_sma_strategy", BOUND_SMA)

    class Uses(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.bound = indicators.BoundSma(period=5)
            self.plain = bt.ind.SMA(period=5)

    frame = daily_bars()
    cerebro = bt.Cerebro(runonce=runonce, stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(Uses)
    strategy = cerebro.run()[0]
    bound = list(strategy.bound.sma.get(size=len(frame)))
    assert bound[4:] == list(strategy.plain.get(size=len(frame)))[4:]
    assert all(math.isfinite(value) for value in bound[4:])


def test_apply_restores_the_aliases_idempotently_and_overwrites_nothing() -> None:
    compat = load_runner_module("compat")
    ordered_dict = collections.OrderedDict
    compat.apply()
    compat.apply()
    for name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        assert getattr(collections, name) is getattr(collections.abc, name)
    assert collections.OrderedDict is ordered_dict


def test_the_harness_applies_the_shim(tmp_path: Path) -> None:
    job, out = tmp_path / "in", tmp_path / "out"
    job.mkdir()
    out.mkdir()
    frame = daily_bars()
    frame.index = pd.DatetimeIndex(frame.index).strftime("%Y-%m-%dT%H:%M:%S")
    frame.to_csv(job / "data.csv", index_label="datetime")
    code = BOUND_SMA + textwrap.dedent("""
        class Uses(bt.Strategy):
            def __init__(self):
                self.sma = BoundSma()

            def stop(self):
                print(round(self.sma.sma[0], 6))
    """)
    spec = {
        "protocol": 1,
        "code": code,
        "filename": "strategy.py",
        "params": {},
        "broker": {"initial_capital": 10000.0, "commission": 0.0, "slippage": 0.0, "stake": 1.0},
        "data": {"path": str(job / "data.csv"), "timeframe": "D1", "bars": len(frame)},
    }
    (job / "spec.json").write_text(json.dumps(spec))
    for name in ("result.json", "progress"):
        (out / name).touch()
    command = [sys.executable, "-I", str(RUNNER / "harness.py")]
    process = subprocess.run(
        [*command, "--job-dir", str(job), "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 0, process.stderr
    assert json.loads((out / "result.json").read_text())["outcome"] == "completed"
    assert float(process.stdout) == pytest.approx(frame["close"].iloc[-5:].mean(), abs=1e-6)


# --- paths checked on numpy 2 / pandas 3 that need no shim ------------------------------------


class Everything(bt.Strategy):  # type: ignore[misc]
    """Every indicator the harness is asked to support, and trades so analyzers see some."""

    def __init__(self) -> None:
        self.sma = bt.ind.SMA(period=10)
        self.ema = bt.ind.EMA(period=10)
        self.ind = {
            "sma": self.sma,
            "ema": self.ema,
            "rsi": bt.ind.RSI(period=14),
            "bollinger": bt.ind.BollingerBands(period=20),
            "macd": bt.ind.MACD(),
            "stochastic": bt.ind.Stochastic(),
            "atr": bt.ind.ATR(period=14),
        }
        self.cross = bt.ind.CrossOver(self.sma, self.ema)

    def next(self) -> None:
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()


ANALYZERS = {
    "sharpe": bt.analyzers.SharpeRatio,
    "drawdown": bt.analyzers.DrawDown,
    "trades": bt.analyzers.TradeAnalyzer,
    "sqn": bt.analyzers.SQN,
    "returns": bt.analyzers.Returns,
    "timereturn": bt.analyzers.TimeReturn,
    "annual": bt.analyzers.AnnualReturn,
    "vwr": bt.analyzers.VWR,
}


def run_everything(runonce: bool) -> Any:
    cerebro = bt.Cerebro(runonce=runonce)
    cerebro.adddata(bt.feeds.PandasData(dataname=daily_bars()))
    cerebro.addstrategy(Everything)
    for name, analyzer in ANALYZERS.items():
        cerebro.addanalyzer(analyzer, _name=name)
    return cerebro.run()[0]


def indicator_values(strategy: Any) -> dict[str, list[float]]:
    size = len(strategy)
    return {
        f"{name}.{line}": list(indicator.lines[i].get(size=size))
        for name, indicator in strategy.ind.items()
        for i, line in enumerate(indicator.lines.getlinealiases())
    }


@pytest.fixture(scope="module")
def everything() -> tuple[Any, Any]:
    """The same run in both of Cerebro's modes (vectorised runonce, and bar by bar)."""
    return run_everything(runonce=True), run_everything(runonce=False)


def test_indicators_agree_with_pandas(everything: tuple[Any, Any]) -> None:
    strategy, _ = everything
    close = daily_bars()["close"]
    size = len(strategy)
    sma = pd.Series(list(strategy.sma.get(size=size)))
    assert sma[9:].tolist() == pytest.approx(close.rolling(10).mean()[9:].tolist(), rel=1e-12)
    # Backtrader's EMA seeds with the SMA of the first period, then alpha = 2 / (period + 1).
    expected = close.copy()
    expected.iloc[:10] = close.iloc[:10].mean()
    ema = expected.iloc[9:].ewm(alpha=2 / 11, adjust=False).mean()
    assert list(strategy.ema.get(size=size))[9:] == pytest.approx(ema.tolist(), rel=1e-12)


def test_indicators_are_finite_after_warm_up_and_equal_in_both_modes(
    everything: tuple[Any, Any],
) -> None:
    vectorised, stepped = (indicator_values(strategy) for strategy in everything)
    assert vectorised.keys() == stepped.keys()
    for name, values in vectorised.items():
        assert all(math.isfinite(v) for v in values[50:]), name
        assert values[50:] == pytest.approx(stepped[name][50:], rel=1e-9), name


def test_analyzers_produce_results(everything: tuple[Any, Any]) -> None:
    strategy, _ = everything
    analyses = {name: strategy.analyzers.getbyname(name).get_analysis() for name in ANALYZERS}
    assert analyses["trades"]["total"]["closed"] > 0
    assert analyses["sqn"]["trades"] == analyses["trades"]["total"]["closed"]
    assert math.isfinite(analyses["drawdown"]["max"]["drawdown"])
    assert math.isfinite(analyses["returns"]["rtot"])
    assert len(analyses["timereturn"]) == len(strategy)
    assert list(analyses["annual"]) == [2006]

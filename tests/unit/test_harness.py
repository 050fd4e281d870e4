"""The harness (runner_image/harness.py) run as the container runs it, on the host.

Each test runs `python -I runner_image/harness.py --job-dir ... --out-dir ...` with this
venv's Python on real daily, weekly and 5-minute bars, and compares what it reports with a
plain in-process Backtrader run of the same inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "runner_image" / "harness.py"
SHARED_DATA = REPO.parent / "shared" / "data" / "backtrader"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
RUN_TIMEOUT = 30  # seconds for one harness run; a run here takes well under one

pytestmark = pytest.mark.timeout(60)

FREE = {"initial_capital": 10000.0, "commission": 0.0, "slippage": 0.0, "stake": 1.0}
COSTLY = {"initial_capital": 10000.0, "commission": 0.001, "slippage": 0.0005, "stake": 2.0}

SMA_CROSS = """\
import backtrader as bt


class SmaCross(bt.Strategy):
    params = (("fast", 10), ("slow", 30))

    def __init__(self):
        fast, slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)

    def next(self):
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()
"""


# --- inputs -----------------------------------------------------------------------------------


def normalise(source: str) -> str:
    """A file of ../shared/data/backtrader as the host's data.csv text."""
    raw = pd.read_csv(SHARED_DATA / source)
    stamps = raw["Date"] + ("T" + raw["Time"] if "Time" in raw else "T00:00:00")
    frame = pd.DataFrame({"datetime": stamps})
    for column in ("Open", "High", "Low", "Close", "Volume"):
        frame[column.lower()] = raw[column]
    return str(frame.to_csv(index=False))


@dataclass
class Job:
    """One job's directories, laid out as the host lays out a run directory."""

    job_dir: Path
    out_dir: Path

    @property
    def data_csv(self) -> Path:
        return self.job_dir / "data.csv"

    def result(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.out_dir / "result.json").read_bytes())
        return loaded

    def progress(self) -> str:
        return (self.out_dir / "progress").read_text()


def make_job(root: Path, source: str = "2006-day-001.txt") -> Job:
    job = Job(root / "in", root / "out")
    job.job_dir.mkdir(parents=True)
    job.out_dir.mkdir()
    job.data_csv.write_text(normalise(source))
    for name in ("result.json", "progress"):  # the host pre-creates both, empty
        (job.out_dir / name).touch()
    return job


def spec_for(
    job: Job,
    code: str,
    params: dict[str, Any] | None = None,
    broker: dict[str, Any] | None = None,
    timeframe: str = "D1",
) -> dict[str, Any]:
    bars = len(job.data_csv.read_text().splitlines()) - 1
    return {
        "protocol": 1,
        "code": code,
        "filename": "strategy.py",
        "params": params or {},
        "broker": broker or FREE,
        "data": {"path": str(job.data_csv), "timeframe": timeframe, "bars": bars},
    }


def write_spec(job: Job, spec: dict[str, Any]) -> None:
    """As the host does: a temporary file renamed into place."""
    tmp = job.job_dir / ".spec.json.tmp"
    tmp.write_text(json.dumps(spec))
    tmp.replace(job.job_dir / "spec.json")


def harness_command(job: Job) -> list[str]:
    args = ["--job-dir", str(job.job_dir), "--out-dir", str(job.out_dir)]
    return [sys.executable, "-I", str(HARNESS), *args]


def run_harness(job: Job, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    write_spec(job, spec)
    return subprocess.run(
        harness_command(job), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def run_code(tmp_path: Path, code: str, **spec_args: Any) -> tuple[dict[str, Any], str]:
    """Run `code` through the harness; (result, stdout). The harness must exit 0."""
    job = make_job(tmp_path)
    process = run_harness(job, spec_for(job, textwrap.dedent(code), **spec_args))
    assert process.returncode == 0, process.stderr
    return job.result(), process.stdout


# --- the plain Backtrader run the harness must agree with ------------------------------------


@dataclass
class Reference:
    final_value: float
    final_cash: float
    values: list[float]  # the Broker observer's value line, one per bar
    trades: list[tuple[float, float, float]]  # (pnl, pnlcomm, commission) per closed trade


class _ClosedTrades(bt.Analyzer):  # type: ignore[misc]
    def start(self) -> None:
        self.closed: list[tuple[float, float, float]] = []

    def notify_trade(self, trade: Any) -> None:
        if trade.isclosed:
            self.closed.append((trade.pnl, trade.pnlcomm, trade.commission))


def plain_backtrader(
    job: Job, code: str, params: dict[str, Any], broker: dict[str, Any]
) -> Reference:
    """The same inputs through textbook Backtrader: PandasData, default Cerebro and observers."""
    module = types.ModuleType("reference_strategy")
    sys.modules[module.__name__] = module  # backtrader's metaclasses look classes up there
    exec(compile(code, "reference_strategy.py", "exec"), module.__dict__)
    frame = pd.read_csv(job.data_csv, index_col="datetime")
    frame.index = pd.to_datetime(frame.index, format=TIMESTAMP_FORMAT)
    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.broker.setcash(broker["initial_capital"])
    cerebro.broker.setcommission(commission=broker["commission"])
    cerebro.broker.set_slippage_perc(broker["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=broker["stake"])
    cerebro.addstrategy(module.SmaCross, **params)
    cerebro.addanalyzer(_ClosedTrades, _name="closed")
    strategy = cerebro.run()[0]
    return Reference(
        final_value=cerebro.broker.getvalue(),
        final_cash=cerebro.broker.getcash(),
        values=list(strategy.observers.broker.lines.value.get(size=len(strategy))),
        trades=strategy.analyzers.closed.closed,
    )


# --- a completed run agrees with plain Backtrader ---------------------------------------------


@dataclass
class SmaRun:
    job: Job
    result: dict[str, Any]
    reference: Reference
    broker: dict[str, Any]


@pytest.fixture(scope="module", params=[FREE, COSTLY], ids=["free", "costly"])
def sma_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SmaRun:
    broker: dict[str, Any] = request.param
    params = {"fast": 5, "slow": 20}
    job = make_job(tmp_path_factory.mktemp("sma"))
    process = run_harness(job, spec_for(job, SMA_CROSS, params=params, broker=broker))
    assert process.returncode == 0, process.stderr
    assert process.stdout == process.stderr == ""  # the harness itself prints nothing
    return SmaRun(job, job.result(), plain_backtrader(job, SMA_CROSS, params, broker), broker)


def test_sma_cross_matches_plain_backtrader(sma_run: SmaRun) -> None:
    result, reference = sma_run.result, sma_run.reference
    assert result["outcome"] == "completed"
    assert result["backtrader_version"] == "1.9.78.123"
    assert result["final_value"] == reference.final_value
    assert result["final_cash"] == reference.final_cash
    assert len(result["trades"]) == len(reference.trades) > 0
    reported = [(t["pnl"], t["pnl_net"], t["commission"]) for t in result["trades"]]
    assert reported == reference.trades


def test_equity_curve_is_the_broker_value_after_every_bar(sma_run: SmaRun) -> None:
    result = sma_run.result
    stamps = pd.read_csv(sma_run.job.data_csv)["datetime"].tolist()
    assert result["bars"] == len(result["equity_curve"]) == len(stamps) == 255
    assert [stamp for stamp, _ in result["equity_curve"]] == stamps
    # Includes the 19 warm-up bars before SMA(20) has a value.
    assert [value for _, value in result["equity_curve"]] == sma_run.reference.values
    assert result["equity_curve"][-1][1] == result["final_value"]


def test_commission_and_slippage_are_applied(sma_run: SmaRun) -> None:
    trades = sma_run.result["trades"]
    if sma_run.broker["commission"]:
        assert all(t["commission"] > 0 and t["pnl_net"] < t["pnl"] for t in trades)
        assert all(t["size"] == sma_run.broker["stake"] for t in trades)
    else:
        assert all(t["commission"] == 0 and t["pnl_net"] == t["pnl"] for t in trades)


def test_trades_are_well_formed(sma_run: SmaRun) -> None:
    for trade in sma_run.result["trades"]:
        assert trade["direction"] == "long"
        assert trade["entry_time"] < trade["exit_time"]
        assert trade["bars_held"] > 0
        pnl = (trade["exit_price"] - trade["entry_price"]) * trade["size"]
        assert trade["pnl"] == pytest.approx(pnl, rel=1e-9)


def test_progress_ends_as_done_of_total(sma_run: SmaRun) -> None:
    assert sma_run.job.progress() == "255 255\n"


def test_bars_in_market_and_open_trades(sma_run: SmaRun) -> None:
    result = sma_run.result
    assert 0 < result["bars_in_market"] < result["bars"]
    assert result["open_trades"] in (0, 1)


def test_params_reach_the_strategy(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Echo(bt.Strategy):
            params = (("fast", 10), ("label", "default"))

            def stop(self):
                print(self.p.fast, self.p.label)
    """
    result, stdout = run_code(tmp_path, code, params={"fast": 3, "label": "given"})
    assert result["outcome"] == "completed"
    assert stdout == "3 given\n"


# --- trade records ----------------------------------------------------------------------------


def test_a_short_trade_closed_in_two_fills(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class ScaleOut(bt.Strategy):
            def next(self):
                if len(self) == 10:
                    self.sell(size=2)
                elif len(self) in (20, 30):
                    self.buy(size=1)
    """
    job = make_job(tmp_path)
    spec = spec_for(job, textwrap.dedent(code))
    spec["data"]["feeds"] = [{"name": "ORCL", "path": str(job.data_csv)}]  # a named feed
    assert run_harness(job, spec).returncode == 0
    result = job.result()
    bars = pd.read_csv(tmp_path / "in" / "data.csv")
    # Market orders fill at the next bar's open: bars 10, 20 and 30, counting from 0.
    (trade,) = result["trades"]
    assert trade == {
        "symbol": "ORCL",  # the feed's name
        "entry_time": bars["datetime"][10],
        "exit_time": bars["datetime"][30],
        "direction": "short",
        "size": 2.0,
        "entry_price": bars["open"][10],
        "exit_price": (bars["open"][20] + bars["open"][30]) / 2,
        "pnl": pytest.approx(2 * bars["open"][10] - bars["open"][20] - bars["open"][30]),
        "pnl_net": trade["pnl"],
        "commission": 0.0,
        "bars_held": 20,
    }
    assert result["bars_in_market"] == 20  # short at the close of bars 10 to 29
    assert result["open_trades"] == 0


def test_trade_record_when_the_strategy_turns_trade_history_off(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class NoHistory(bt.Strategy):
            def start(self):
                self.set_tradehistory(False)

            def next(self):
                if len(self) == 10:
                    self.buy(size=2)
                elif len(self) == 20:
                    self.close()
    """
    result, _ = run_code(tmp_path, code, broker=COSTLY)
    bars = pd.read_csv(tmp_path / "in" / "data.csv")
    (trade,) = result["trades"]
    # Derived from the pnl instead of the fills: the same prices, to rounding.
    assert trade["size"] == 2.0
    assert trade["entry_price"] == pytest.approx(bars["open"][10] * (1 + COSTLY["slippage"]))
    assert trade["exit_price"] == pytest.approx(bars["open"][20] * (1 - COSTLY["slippage"]))
    assert trade["bars_held"] == 10


def test_an_open_trade_is_counted_not_listed(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Hold(bt.Strategy):
            def next(self):
                if not self.position:
                    self.buy()
    """
    result, _ = run_code(tmp_path, code)
    assert result["trades"] == []
    assert result["open_trades"] == 1
    assert result["bars_in_market"] == result["bars"] - 1  # bought at the second bar's open


# --- data feeds and timeframes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "timeframe", "expected"),
    [
        ("2006-min-005.txt", "M5", "(bt.TimeFrame.Minutes, 5)"),
        ("2006-week-001.txt", "W1", "(bt.TimeFrame.Weeks, 1)"),
        ("2006-day-001.txt", "H4", "(bt.TimeFrame.Minutes, 240)"),
    ],
)
def test_feed_timeframe_and_timestamps(
    tmp_path: Path, source: str, timeframe: str, expected: str
) -> None:
    code = f"""\
        import backtrader as bt

        class Check(bt.Strategy):
            def __init__(self):
                assert (self.data._timeframe, self.data._compression) == {expected}
                self.sma = bt.ind.SMA(period=30)  # 29 warm-up bars still count
    """
    job = make_job(tmp_path, source)
    process = run_harness(job, spec_for(job, textwrap.dedent(code), timeframe=timeframe))
    assert process.returncode == 0, process.stderr
    result = job.result()
    assert result["outcome"] == "completed", result
    stamps = pd.read_csv(job.data_csv)["datetime"].tolist()
    assert [stamp for stamp, _ in result["equity_curve"]] == stamps
    assert job.progress() == f"{len(stamps)} {len(stamps)}\n"


def _load_datafeed() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "runner_datafeed", REPO / "runner_image" / "datafeed.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # backtrader's metaclasses look classes up there
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep it clean
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


@pytest.mark.parametrize("source", ["2006-day-001.txt", "2006-min-005.txt"])
def test_fast_feed_loads_what_pandasdata_loads(tmp_path: Path, source: str) -> None:
    datafeed = _load_datafeed()
    job = make_job(tmp_path, source)
    frame = datafeed.read_bars(str(job.data_csv))
    loaded = []
    for feed in (datafeed.make_feed(frame, "D1"), bt.feeds.PandasData(dataname=frame)):
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(feed)
        cerebro.addstrategy(bt.Strategy)
        cerebro.run()
        aliases = feed.lines.getlinealiases()
        loaded.append({name: list(feed.lines[i].array) for i, name in enumerate(aliases)})
    fast, plain = loaded
    assert fast.keys() == plain.keys()
    for name in fast:
        assert fast[name] == pytest.approx(plain[name], nan_ok=True, rel=0, abs=0), name
    assert len(fast["close"]) == len(frame)


# --- runtime errors ---------------------------------------------------------------------------


def assert_runtime_error(result: dict[str, Any], exc_type: str) -> dict[str, str]:
    assert result["protocol"] == 1
    assert result["outcome"] == "runtime_error"
    assert result["backtrader_version"] == "1.9.78.123"
    assert set(result) == {"protocol", "outcome", "backtrader_version", "error"}
    error: dict[str, str] = result["error"]
    assert set(error) == {"exc_type", "message", "traceback"}
    assert error["exc_type"] == exc_type
    return error


def test_strategy_chosen_with_STRATEGY(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Idle(bt.Strategy):
            pass

        class Buyer(bt.Strategy):
            def next(self):
                if not self.position:
                    self.buy()

        STRATEGY = Buyer
    """
    result, _ = run_code(tmp_path, code)
    assert result["outcome"] == "completed"
    assert result["open_trades"] == 1  # Buyer ran, not Idle


def test_imported_strategies_and_aliases_do_not_count(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt
        from backtrader.strategies import SMA_CrossOver

        class Mine(bt.Strategy):
            pass

        Alias = Mine
    """
    result, _ = run_code(tmp_path, code)
    assert result["outcome"] == "completed"


def test_a_backtrader_alias_is_not_a_second_strategy(tmp_path: Path) -> None:
    """As backtrader/strategies/sma_crossover.py writes it: the metaclass makes a subclass
    named after each alias, in the same module."""
    code = """\
        import backtrader as bt

        class MA_CrossOver(bt.Strategy):
            alias = ("SMA_CrossOver",)

            def next(self):
                if not self.position:
                    self.buy()
    """
    result, _ = run_code(tmp_path, code)
    assert result["outcome"] == "completed" and result["open_trades"] == 1


def test_an_abstract_base_is_not_a_choice(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Base(bt.Strategy):
            def signal(self):
                raise NotImplementedError

            def next(self):
                if not self.position and self.signal():
                    self.buy()

        class Always(Base):
            def signal(self):
                return True
    """
    result, _ = run_code(tmp_path, code)
    assert result["outcome"] == "completed" and result["open_trades"] == 1  # Always ran


def test_no_strategy_is_a_runtime_error(tmp_path: Path) -> None:
    result, _ = run_code(tmp_path, "import backtrader as bt\n\nx = 1\n")
    error = assert_runtime_error(result, "StrategyDiscoveryError")
    assert error["message"] == (
        "strategy.py defines no backtrader.Strategy subclass; "
        "define one, e.g. `class MyStrategy(bt.Strategy): ...`"
    )
    assert error["traceback"] == ""


def test_two_strategies_without_STRATEGY_is_a_runtime_error(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class First(bt.Strategy):
            pass

        class Second(bt.Strategy):
            pass
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "StrategyDiscoveryError")
    assert "several backtrader.Strategy subclasses (First, Second)" in error["message"]
    assert "STRATEGY = Second" in error["message"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("42", "STRATEGY must be a backtrader.Strategy subclass, not a value of type int"),
        ("dict", "STRATEGY must be a backtrader.Strategy subclass; dict is not one"),
        ("bt.Strategy", "not backtrader.Strategy itself"),
    ],
)
def test_STRATEGY_that_is_not_a_strategy(tmp_path: Path, value: str, message: str) -> None:
    result, _ = run_code(tmp_path, f"import backtrader as bt\n\nSTRATEGY = {value}\n")
    error = assert_runtime_error(result, "StrategyDiscoveryError")
    assert message in error["message"]


def test_exception_in_next_keeps_only_the_users_frames(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt


        def ratio(a, b):
            return a / b


        class Divider(bt.Strategy):
            def next(self):
                print("bar", len(self))
                if len(self) == 3:
                    ratio(1, 0)
    """
    result, stdout = run_code(tmp_path, code)
    error = assert_runtime_error(result, "ZeroDivisionError")
    assert error["message"] == "division by zero"
    trace = error["traceback"]
    assert trace.startswith('  File "strategy.py", line 12, in next\n    ratio(1, 0)\n')
    assert '  File "strategy.py", line 5, in ratio\n    return a / b\n' in trace
    for internal in ("harness", "recorder", "backtrader", "site-packages"):
        assert internal not in trace
    assert stdout == "bar 1\nbar 2\nbar 3\n"  # the strategy's own output is left alone


def test_exception_at_module_level(tmp_path: Path) -> None:
    result, _ = run_code(tmp_path, "import backtrader as bt\nundefined_name + 1\n")
    error = assert_runtime_error(result, "NameError")
    assert "undefined_name" in error["message"]
    assert error["traceback"].startswith('  File "strategy.py", line 2, in <module>\n')


def test_exception_while_constructing(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Broken(bt.Strategy):
            def __init__(self):
                self.sma = bt.ind.SMA(period=self.p.missing)
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "AttributeError")
    assert "missing" in error["message"]
    assert 'File "strategy.py", line 5, in __init__' in error["traceback"]


def test_unknown_param_shows_where_backtrader_refused_it(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Plain(bt.Strategy):
            def __init__(self):
                pass
    """
    result, _ = run_code(tmp_path, code, params={"nope": 1})
    error = assert_runtime_error(result, "TypeError")
    assert "nope" in error["message"]
    # Refused before any line of the user's ran: the innermost frame alone, in backtrader.
    assert error["traceback"].count('  File "') == 1
    assert "backtrader" in error["traceback"]


def test_unknown_param_is_ignored_like_plain_backtrader(tmp_path: Path) -> None:
    # bt.Strategy's own __init__ swallows unknown keyword arguments; the harness adds no rule.
    code = "import backtrader as bt\n\nclass Plain(bt.Strategy):\n    pass\n"
    result, _ = run_code(tmp_path, code, params={"nope": 1})
    assert result["outcome"] == "completed"


def test_sys_exit_is_a_runtime_error_not_an_exit(tmp_path: Path) -> None:
    code = """\
        import sys
        import backtrader as bt

        class Quitter(bt.Strategy):
            def next(self):
                sys.exit(3)
    """
    result, _ = run_code(tmp_path, code)  # and still exit 0
    error = assert_runtime_error(result, "SystemExit")
    assert error["message"] == "3"
    assert 'File "strategy.py", line 6, in next' in error["traceback"]


def test_hostile_exception_str_does_not_crash_the_harness(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Weird(Exception):
            def __str__(self):
                raise RuntimeError("no")

        class Raiser(bt.Strategy):
            def start(self):
                raise Weird()
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "Weird")
    assert error["message"] == "<unprintable Weird>"


def test_deep_recursion_traceback_is_capped_to_whole_recent_frames(tmp_path: Path) -> None:
    # Two functions in turn: no run of identical frames for Python to fold into one line.
    code = """\
        import backtrader as bt

        def ping(n):
            return pong(n + 1)

        def pong(n):
            return ping(n + 1)

        class Deep(bt.Strategy):
            def next(self):
                ping(0)
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "RecursionError")
    trace = error["traceback"]
    assert 4 * 1024 < len(trace.encode()) <= 8 * 1024
    assert trace.startswith('  File "strategy.py", line ')
    # Ends with the innermost frame, whole: its header, its line, the caret line under it.
    assert trace.splitlines()[-3].startswith('  File "strategy.py", line ')
    assert trace.splitlines()[-2].strip().startswith("return p")


def test_code_that_parses_but_does_not_compile(tmp_path: Path) -> None:
    # The host's syntax check may parse without compiling; `return` at module level parses.
    result, _ = run_code(tmp_path, "import backtrader as bt\n\nreturn 1\n")
    error = assert_runtime_error(result, "SyntaxError")
    assert "'return' outside function" in error["message"]
    assert error["traceback"].startswith('  File "strategy.py", line 3\n    return 1\n')
    assert "discovery" not in error["traceback"]


def test_strategy_skip_error_is_a_runtime_error(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Skipper(bt.Strategy):
            def __init__(self):
                raise bt.errors.StrategySkipError()
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "StrategySkipError")
    assert "nothing ran" in error["message"]


def test_non_finite_value_is_reported_as_an_error(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Infinite(bt.Strategy):
            def start(self):
                self.broker.setcash(float("inf"))
    """
    result, _ = run_code(tmp_path, code)
    error = assert_runtime_error(result, "ValueError")
    assert "non-finite number (result.final_value)" in error["message"]


def test_threads_and_atexit_left_behind_do_not_hold_the_exit(tmp_path: Path) -> None:
    code = """\
        import atexit, os, threading, time
        import backtrader as bt

        threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon
        atexit.register(os._exit, 7)

        class Plain(bt.Strategy):
            def stop(self):
                print("done", flush=False)
    """
    result, stdout = run_code(tmp_path, code)  # run_code's timeout and returncode 0
    assert result["outcome"] == "completed"
    assert stdout == "done\n"  # buffered output is flushed before the exit


# --- start-up and harness faults --------------------------------------------------------------


def test_waits_for_a_spec_that_appears_late(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    spec = spec_for(job, SMA_CROSS)
    with subprocess.Popen(
        harness_command(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        timer = threading.Timer(0.3, write_spec, args=(job, spec))
        timer.start()
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        finally:
            timer.cancel()
            process.kill()
    assert process.returncode == 0, stderr
    assert job.result()["outcome"] == "completed"


def test_a_fault_in_the_recorder_crashes_instead_of_blaming_the_strategy(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Meddler(bt.Strategy):
            def start(self):
                self.analyzers[0].values = None  # breaks the harness's own recorder
    """
    job = make_job(tmp_path)
    process = run_harness(job, spec_for(job, textwrap.dedent(code)))
    assert process.returncode != 0
    assert "recorder.py" in process.stderr
    assert (job.out_dir / "result.json").read_bytes() == b""


def test_a_bad_spec_crashes_without_a_result(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    spec = spec_for(job, SMA_CROSS) | {"protocol": 2}
    process = run_harness(job, spec)
    assert process.returncode != 0
    assert "unsupported protocol 2" in process.stderr
    assert (job.out_dir / "result.json").read_bytes() == b""


def test_a_missing_result_file_is_not_created(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    os.remove(job.out_dir / "result.json")
    process = run_harness(job, spec_for(job, SMA_CROSS))
    assert process.returncode != 0
    assert "FileNotFoundError" in process.stderr
    assert not (job.out_dir / "result.json").exists()

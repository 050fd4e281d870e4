"""Several feeds in one run and a benchmark, without Docker (interface section 8).

The host's side: the catalog aligns the extra symbols on the timestamps every feed has and
values the benchmark at the run's bars (data/alignment.py, data/catalog.py), and the gate
releases one step, a bar of every feed, per commit (verify/gate.py). The harness's side: fast
mode reads one file per feed; verified mode gets the steps over the pipe, feed 0 making the
exchange and the other feeds taking their bar of the same step (runner_image/pipefeed.py),
and the referee replays with the same feeds. A pairs strategy that finds its two feeds by
name is checked against plain Backtrader given the same two aligned feeds, bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from backtest_sandbox.data import alignment, catalog
from backtest_sandbox.data.catalog import MIN_BARS, prepare
from backtest_sandbox.data.frames import normalised_csv
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError
from backtest_sandbox.verify.gate import BarGate, step_rows
from backtest_sandbox.verify.referee import referee_command
from tests.conftest import SHARED_DATA
from tests.strategies import PAIRS
from tests.unit.test_harness import HARNESS, RUN_TIMEOUT
from tests.unit.test_referee import (
    LIMITS,
    AttachedHarness,
    RecordedRefereeRun,
    RecordingReferee,
)
from tests.unit.test_verified_gate import ScriptedSide, commit, order

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
FILES = {"ORCL": "orcl-1995-2014.txt", "NVDA": "nvda-1999-2014.txt", "YHOO": "yhoo-1996-2014.txt"}
BROKER = {"initial_capital": 100000.0, "commission": 0.001, "slippage": 0.0005, "stake": 1.0}
COLUMNS = ["open", "high", "low", "close", "volume"]


def raw(symbol: str) -> pd.DataFrame:
    """A shared file's bars as pandas reads it, indexed by date: the independent reference."""
    frame = pd.read_csv(SHARED_DATA / FILES[symbol], index_col="Date", parse_dates=True)
    frame.columns = [str(column).lower() for column in frame.columns]
    return frame[COLUMNS].astype("float64")


def config(**fields: Any) -> BacktestConfig:
    base = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2006-01-01",
            "end_date": "2006-12-31", "data_source": "file"}  # fmt: skip
    return BacktestConfig.model_validate({**base, **fields})


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """ORCL, NVDA and YHOO daily as they are; NVDA with five bars of 2006 missing (a gap in
    its file: the other feeds' bars of those days cannot be in the run)."""
    root = tmp_path / "data"
    for symbol, name in FILES.items():
        (root / symbol).mkdir(parents=True)
        shutil.copy(SHARED_DATA / name, root / symbol / "D1.csv")
    lines = (root / "NVDA" / "D1.csv").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(GAP)]
    assert len(lines) - len(kept) == 5
    (root / "NVDA" / "D1.csv").write_text("".join(kept))
    return root


GAP = tuple(f"2006-03-{day:02d}" for day in (6, 7, 8, 9, 10))  # a week NVDA's file lacks


# --- alignment on its own ----------------------------------------------------------------------


def frame_on(days: list[str], close: float = 10.0) -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.to_datetime(days), name="datetime")
    return pd.DataFrame({c: close for c in COLUMNS}, index=index)


def test_the_feeds_keep_the_timestamps_they_all_have() -> None:
    a = frame_on(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"])
    b = frame_on(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"])
    (left, right), lost = alignment.intersect([a, b])
    assert (
        list(left.index)
        == list(right.index)
        == list(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06"]))
    )
    assert lost == [1, 1]
    same, lost = alignment.intersect([a, a.copy()])
    assert lost == [0, 0] and same[0] is a  # nothing lost: not copied


def test_the_benchmark_is_its_last_close_at_or_before_each_bar() -> None:
    run = pd.DatetimeIndex(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06"]))
    closes = pd.Series(
        [1.0, 2.0, 3.0], index=pd.to_datetime(["2020-01-01", "2020-01-03", "2020-01-04"])
    )
    values, carried = alignment.as_of(run, closes, "SPY")
    assert values == [1.0, 2.0, 3.0] and carried == 2  # 01-02 from 01-01, 01-06 from 01-04
    with pytest.raises(DataError, match="SPY has no bar at or before the run's first bar") as e:
        alignment.as_of(run, closes[1:], "SPY")
    assert e.value.details["field"] == "config.benchmark"


# --- the catalog: extra symbols ---------------------------------------------------------------


def test_extra_symbols_are_aligned_on_the_timestamps_every_feed_has(catalog_dir: Path) -> None:
    run = config(extra_symbols=["NVDA", "YHOO"])
    data = prepare(run, catalog_dir)
    assert [feed.symbol for feed in data.feeds] == ["ORCL", "NVDA", "YHOO"]

    # Independently: each file's 2006 bars, on the days all three have.
    frames = {s: raw(s).loc["2006"] for s in FILES}
    frames["NVDA"] = frames["NVDA"][~frames["NVDA"].index.strftime("%Y-%m-%d").isin(GAP)]
    common = frames["ORCL"].index.intersection(frames["NVDA"].index)
    common = common.intersection(frames["YHOO"].index)
    assert len(common) == 251 - 5
    for feed in data.feeds:
        expected = frames[feed.symbol].loc[common]
        assert list(feed.frame.index) == list(common)
        assert (feed.frame.to_numpy() == expected.to_numpy()).all()
        assert (
            feed.bars == len(common)
            and feed.sha256 == hashlib.sha256(normalised_csv(feed.frame)).hexdigest()
        )
    assert data.warnings == [
        f"extra_symbols: the feeds are aligned on the timestamps they all have ({len(common)} "
        "bars); bars missing from any feed were dropped from all: ORCL lost 5, YHOO lost 5"
    ]
    info = data.info()
    assert (info.bars, info.sha256) == (len(common), data.sha256)
    assert [(f.symbol, f.source, f.bars, f.path) for f in info.extra_symbols] == [
        ("NVDA", "file", len(common), "NVDA/D1.csv"),
        ("YHOO", "file", len(common), "YHOO/D1.csv"),
    ]
    assert info.benchmark is None


def test_the_identity_names_every_feed_and_changes_with_any_of_them(catalog_dir: Path) -> None:
    run = config(extra_symbols=["NVDA"], benchmark="YHOO")
    before = catalog.data_identity(run, catalog_dir)
    assert prepare(run, catalog_dir).identity == before
    alone = catalog.data_identity(config(), catalog_dir)
    assert before.startswith(alone + "|NVDA=file:") and "|benchmark YHOO=file:" in before
    for symbol in ("NVDA", "YHOO"):
        path = catalog_dir / symbol / "D1.csv"
        replacement = path.with_suffix(".new")
        replacement.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        replacement.replace(path)
        after = catalog.data_identity(run, catalog_dir)
        assert after != before and prepare(run, catalog_dir).identity == after
        before = after


def test_an_extra_symbol_without_data_is_a_data_error_naming_the_field(
    catalog_dir: Path,
) -> None:
    with pytest.raises(DataError) as caught:
        prepare(config(extra_symbols=["NVDA", "MSFT"]), catalog_dir)
    assert str(caught.value).startswith("config.extra_symbols: no data for MSFT D1: ")
    assert caught.value.details["field"] == "config.extra_symbols"
    assert caught.value.details["symbol"] == "MSFT"
    with pytest.raises(DataError, match=r"^config.extra_symbols: no data for NVDA D1 between"):
        prepare(config(extra_symbols=["NVDA"], start_date="1996-01-01",
                       end_date="1996-12-31"), catalog_dir)  # fmt: skip


def test_auto_gives_a_symbol_without_a_file_synthetic_bars_and_says_so_first(
    catalog_dir: Path,
) -> None:
    data = prepare(config(extra_symbols=["MSFT"], data_source="auto"), catalog_dir)
    assert [feed.source for feed in data.feeds] == ["file", "synthetic"]
    assert data.warnings[0].startswith("synthetic data: the catalog has no file for MSFT D1")
    # Synthetic bars are on every weekday: the holidays of ORCL's file are dropped from them.
    weekdays = len(pd.bdate_range("2006-01-01", "2006-12-31"))
    assert data.bars == 251 and data.warnings[1].endswith(f"MSFT lost {weekdays - 251}")


def test_too_few_common_bars_is_a_data_error_naming_extra_symbols(catalog_dir: Path) -> None:
    # A file of weekend bars and synthetic weekday bars have no timestamp in common.
    (catalog_dir / "WKND").mkdir()
    saturdays = pd.date_range("2006-01-07", periods=20, freq="7D").strftime("%Y-%m-%d")
    rows = [f"{day},10,11,9,10.5,100" for day in saturdays]
    (catalog_dir / "WKND" / "D1.csv").write_text("\n".join(["Date,Open,High,Low,Close,Volume",
                                                            *rows]) + "\n")  # fmt: skip
    with pytest.raises(DataError) as caught:
        prepare(config(symbol="WKND", extra_symbols=["MSFT"], data_source="auto"), catalog_dir)
    assert str(caught.value).startswith(
        "config.extra_symbols: only 0 bars of D1 between 2006-01-01 and 2006-12-31 are in "
        "every feed (WKND 20, MSFT 260 on their own); "
        f"at least {MIN_BARS} common bars are needed"
    )
    assert caught.value.details == {
        "field": "config.extra_symbols", "rule": "min_bars", "bars": 0,
    }  # fmt: skip


# --- the catalog: the benchmark ---------------------------------------------------------------


def test_the_benchmark_is_valued_at_the_runs_bars_by_its_last_close(catalog_dir: Path) -> None:
    data = prepare(config(benchmark="NVDA"), catalog_dir)
    orcl = raw("ORCL").loc["2006"]
    nvda = raw("NVDA").loc[:"2006-12-31"]
    nvda = nvda[~nvda.index.strftime("%Y-%m-%d").isin(GAP)]
    # Independently: pandas' own forward fill of NVDA's closes onto ORCL's days.
    expected = nvda["close"].reindex(orcl.index, method="ffill")
    assert data.bars == len(orcl) == 251  # the benchmark never cuts the run's bars
    assert list(data.benchmark_closes) == expected.tolist()
    assert data.warnings == [
        "benchmark: NVDA has no bar at 5 of the run's 251 bars; its last close before each "
        "of them is used there"
    ]
    # Its bars: 2006's without the gap, and the last before the range (2005-12-30).
    assert data.benchmark is not None and data.benchmark.bars == 246 + 1
    assert data.benchmark.first == "2005-12-30T00:00:00"
    info = data.info().benchmark
    assert info is not None and (info.symbol, info.source, info.path) == (
        "NVDA", "file", "NVDA/D1.csv",
    )  # fmt: skip


def test_the_benchmark_is_read_from_a_file_whatever_the_data_source(catalog_dir: Path) -> None:
    data = prepare(config(benchmark="NVDA", data_source="synthetic"), catalog_dir)
    assert data.source == "synthetic"
    assert data.benchmark is not None and data.benchmark.source == "file"
    # Synthetic bars start on 2006-01-02, a holiday: NVDA's close of the bar before it.
    assert data.first == "2006-01-02T00:00:00"
    assert data.benchmark_closes[0] == raw("NVDA").loc["2005-12-30", "close"]
    with pytest.raises(DataError) as caught:
        prepare(config(benchmark="SPY", data_source="auto"), catalog_dir)
    assert str(caught.value).startswith("config.benchmark: no data for SPY D1: ")
    assert "never made synthetic" in str(caught.value)
    assert caught.value.details["field"] == "config.benchmark"


def test_a_benchmark_that_starts_after_the_run_is_a_data_error(catalog_dir: Path) -> None:
    late = config(benchmark="NVDA", start_date="1999-01-01", end_date="1999-12-31")
    with pytest.raises(DataError) as caught:
        prepare(late, catalog_dir)
    assert str(caught.value) == (
        "config.benchmark: NVDA has no bar at or before the run's first bar "
        "1999-01-04T00:00:00 (its first bar is 1999-01-22T00:00:00), so it "
        "cannot be valued there"
    )
    assert caught.value.details["rule"] == "benchmark_covers_first_bar"


# --- the gate: one step, a bar of every feed, per commit ---------------------------------------


def csv_of(symbol: str, first: str, end: str) -> str:
    """A shared file's bars from `first` up to `end`, as the host's data.csv text."""
    frame = raw(symbol)
    return normalised_csv(frame.loc[first:end]).decode()


def test_a_step_is_feed_0s_row_then_each_other_feeds_values() -> None:
    orcl, nvda = (
        csv_of("ORCL", "2006-01-01", "2006-01-10"),
        csv_of("NVDA", "2006-01-01", "2006-01-10"),
    )
    steps = step_rows([orcl.encode(), nvda.encode()])
    rows_a, rows_b = orcl.splitlines()[1:], nvda.splitlines()[1:]
    assert len(steps) == len(rows_a) == 6
    for step, a, b in zip(steps, rows_a, rows_b, strict=True):
        assert step == f"{a},{b.split(',', 1)[1]}\n".encode()
    assert steps[0].startswith(b"2006-01-03T00:00:00,")
    assert step_rows([orcl.encode()]) == orcl.encode().splitlines(keepends=True)[1:]
    shifted = csv_of("NVDA", "2006-01-04", "2006-01-11")
    with pytest.raises(ValueError, match="feeds not aligned"):
        step_rows([orcl.encode(), shifted.encode()])


def test_the_gate_releases_steps_and_accepts_orders_for_each_feed_of_the_run() -> None:
    steps = [
        b"2006-01-03T00:00:00,1,1,1,1,0,2,2,2,2,0\n",
        b"2006-01-04T00:00:00,1,1,1,1,0,2,2,2,2,0\n",
    ]
    referee = RecordingReferee()
    gate = BarGate(steps, referee, LIMITS, feeds=2)  # type: ignore[arg-type]
    side = ScriptedSide(
        b"[]",
        commit(order(ref=1, feed=0), order(ref=2, feed=1, side="sell"), order(ref=3, feed=2)),
        b"[]",
    )
    assert gate.talk(side) is None
    assert side.sent == [*steps, b"E\n"]
    assert gate.released == 2 and gate.events == 3 and gate.rejected_events == 1
    [(stamp, accepted)] = referee.received
    assert stamp == 0 and [(e["ref"], e["feed"]) for e in accepted] == [(1, 0), (2, 1)]


# --- the harness and the referee, several feeds -------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> types.SimpleNamespace:
    """runner_image's modules by their own names, as the referee process imports them."""
    saved_path, writes_bytecode = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, str(REPO / "runner_image"))
    sys.dont_write_bytecode = True
    try:
        modules = {n: importlib.import_module(n) for n in ("referee", "backtest", "recorder")}
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = writes_bytecode
    return types.SimpleNamespace(**modules)


class _NoProgress:
    def tick(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


def plain_pairs(
    runner: types.SimpleNamespace, csvs: dict[str, str], broker: dict[str, float], name: str
) -> dict[str, Any]:
    """PAIRS through plain Backtrader (PandasData, preloaded, vectorised), the feeds added
    in order with their names: its completed result as the harness would report it."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # backtrader's metaclasses look classes up there
    exec(compile(PAIRS, f"{name}.py", "exec"), module.__dict__)
    cerebro = bt.Cerebro(stdstats=False, tradehistory=True)
    for symbol, text in csvs.items():
        frame = pd.read_csv(io.StringIO(text), index_col="datetime", parse_dates=True)
        cerebro.adddata(bt.feeds.PandasData(dataname=frame), name=symbol)
    cerebro.broker.setcash(broker["initial_capital"])
    cerebro.broker.setcommission(commission=broker["commission"])
    cerebro.broker.set_slippage_perc(broker["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=broker["stake"])
    cerebro.addstrategy(module.Pairs)
    runner.backtest.add_recorder(cerebro, _NoProgress())
    (ran,) = cerebro.run()
    result = runner.backtest.completed_result(ran)
    assert result["final_value"] == cerebro.broker.getvalue()
    return dict(json.loads(runner.backtest.encode_result(result)))


CORE = ("bars", "final_value", "final_cash", "bars_in_market", "equity_curve", "trades",
        "open_trades")  # fmt: skip


def core(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in CORE}


@pytest.fixture(scope="module")
def pair_csvs() -> dict[str, str]:
    """ORCL and NVDA daily 2004-2007 (the same calendar), as the host's data.csv texts."""
    return {s: csv_of(s, "2004-01-01", "2007-12-31") for s in ("ORCL", "NVDA")}


@pytest.fixture(scope="module")
def plain(runner: types.SimpleNamespace, pair_csvs: dict[str, str]) -> dict[str, Any]:
    result = plain_pairs(runner, pair_csvs, BROKER, "several_feeds_plain_pairs")
    assert len(result["trades"]) >= 10, "the case must close trades to prove anything"
    return result


def test_fast_mode_reads_one_file_per_feed_named_by_its_symbol(
    tmp_path: Path, pair_csvs: dict[str, str], plain: dict[str, Any]
) -> None:
    job, out = tmp_path / "in", tmp_path / "out"
    job.mkdir()
    out.mkdir()
    for name in ("result.json", "progress"):
        (out / name).touch()
    (job / "data.csv").write_text(pair_csvs["ORCL"])
    (job / "data-1.csv").write_text(pair_csvs["NVDA"])
    bars = len(pair_csvs["ORCL"].splitlines()) - 1
    spec = {
        "protocol": 1, "mode": "fast", "code": PAIRS, "filename": "strategy.py", "params": {},
        "broker": BROKER,
        "data": {"timeframe": "D1", "bars": bars, "path": "/job/data.csv", "feeds": [
            {"name": "ORCL", "path": str(job / "data.csv")},
            {"name": "NVDA", "path": str(job / "data-1.csv")},
        ]},
    }  # fmt: skip
    (job / "spec.json").write_text(json.dumps(spec))
    process = subprocess.run(
        [sys.executable, "-I", str(HARNESS), "--job-dir", str(job), "--out-dir", str(out)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    result = json.loads((out / "result.json").read_bytes())
    assert result["outcome"] == "completed", result
    assert core(result) == core(plain)


def test_verified_mode_steps_every_feed_and_the_referee_replays_both_legs(
    tmp_path: Path, pair_csvs: dict[str, str], plain: dict[str, Any]
) -> None:
    orcl, nvda = pair_csvs["ORCL"], pair_csvs["NVDA"]
    steps = step_rows([orcl.encode(), nvda.encode()])
    process = subprocess.Popen(  # both start at once: their imports overlap
        referee_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    harness = AttachedHarness(tmp_path, PAIRS, orcl, BROKER, names=["ORCL", "NVDA"])
    referee = RecordedRefereeRun(process)
    try:
        referee.begin({"protocol": 1, "timeframe": "D1", "broker": BROKER, "feeds": [
            {"name": "ORCL", "bars_csv": orcl}, {"name": "NVDA", "bars_csv": nvda},
        ]})  # fmt: skip
        gate = BarGate(steps, referee, LIMITS, feeds=2)
        problem, _, claimed = harness.talk(gate)
        rejected, raw_result = referee.finish(gate.released, RUN_TIMEOUT)
    finally:
        referee.abort()
    replayed = json.loads(raw_result)

    assert problem is None
    assert claimed["outcome"] == "completed", claimed
    assert gate.released == len(steps) and gate.rejected_events == rejected == 0
    # Both legs were ordered: events name feed 0 and feed 1.
    feeds = {event["feed"] for _, events in referee.received for event in events
             if event["op"] == "order"}  # fmt: skip
    assert feeds == {0, 1}
    assert replayed == claimed  # the referee's numbers are the strategy's own claim
    assert core(claimed) == core(plain)  # and plain Backtrader's, to the last bit


def test_a_look_ahead_on_the_second_feed_is_an_index_error(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class PeekAtTheOther(bt.Strategy):
            def next(self):
                print("now", self.data1.close[0], flush=True)
                if self.getdatabyname("NVDA").close[1] > self.data1.close[0]:
                    self.buy(data=self.data1)
    """
    orcl = csv_of("ORCL", "2006-01-01", "2006-03-01")
    nvda = csv_of("NVDA", "2006-01-01", "2006-03-01")
    gate = BarGate(step_rows([orcl.encode(), nvda.encode()]), RecordingReferee(), LIMITS, feeds=2)  # type: ignore[arg-type]
    harness = AttachedHarness(tmp_path, textwrap.dedent(code), orcl, BROKER, names=["ORCL", "NVDA"])
    problem, logs, result = harness.talk(gate)
    assert problem is None
    assert result["outcome"] == "runtime_error", result
    error = result["error"]
    assert error["exc_type"] == "IndexError"
    assert "index 1 and later have not happened yet" in error["message"]
    assert 'File "strategy.py", line 6, in next' in error["traceback"]
    assert gate.released == 1  # the step it asked about was never sent
    first_nvda_close = nvda.splitlines()[1].split(",")[4]
    assert logs is not None and logs[0] == f"now {float(first_nvda_close)}\n"

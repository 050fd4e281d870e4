"""The market data, end to end: catalog files into the sandbox, and every data problem named.

- The 5-minute file (separate Date and Time columns) runs as H1 by resampling; its bars are
  checked against a pandas resample of the raw file done here, down to the content hash.
- Each validation rule gives a data_error naming the file, the line and the data row; through
  the CLI that is exit 3 with `error.type == "data_error"` on stdout.
- No file (data_source "file") is a data_error; `auto` without a file runs on synthetic bars
  and says so; too few bars in the range is a data_error.
- `backtest-sandbox data import` refuses a bad file naming the line, and writes a good one.
- `result.data.sha256` is the SHA-256 of the normalised bars (PROTOCOL.md's data.csv, rebuilt
  here from the raw file) and the same on every run; the equity curve has a point per bar and
  the trade log the fields users rely on.
- Progress reaches the caller: Engine.run's on_progress ends at (bars, bars), and the CLI
  draws a bar when stderr is a terminal.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.models import RunOutcome
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from tests.conftest import DOCKER, SHARED_DATA

pytestmark = DOCKER

DAILY = SHARED_DATA / "2006-day-001.txt"
FIVE_MINUTES = SHARED_DATA / "2006-min-005.txt"
COLUMNS = ["open", "high", "low", "close", "volume"]
TRADE_FIELDS = {"entry_time", "exit_time", "entry_price", "exit_price", "size", "pnl"}
TRADE_FIELDS |= {"pnl_net", "commission", "bars_held"}

SMA_CROSS = """
import backtrader as bt


class SmaCross(bt.Strategy):
    params = (("fast", 5), ("slow", 20))

    def __init__(self):
        fast, slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)

    def next(self):
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()
"""


def span(symbol: str, timeframe: str, start: str = "2006-01-01", end: str = "2006-12-31") -> list:
    """`run`'s flags for a symbol, timeframe and date range."""
    return ["--symbol", symbol, "--timeframe", timeframe, "--start", start, "--end", end]


IDX_2006 = span("IDX", "D1")
YEAR_2006 = {"timeframe": "D1", "start_date": "2006-01-01", "end_date": "2006-12-31"}
FILE_JSON = ["--data-source", "file", "--json"]  # no synthetic fallback; JSON on stdout


# --- independent readings of the raw files ----------------------------------------------------


def raw_daily(path: Path = DAILY) -> pd.DataFrame:
    frame = pd.read_csv(path)
    frame.columns = [name.lower() for name in frame.columns]
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("date"), format="%Y-%m-%d"))
    return frame[COLUMNS].astype("float64")


def raw_five_minutes_as_hours() -> pd.DataFrame:
    """The M5 file resampled to hours by pandas: bins [h:00, h+1:00), labelled by their start."""
    frame = pd.read_csv(FIVE_MINUTES, dtype={"Date": str, "Time": str})
    frame.index = pd.DatetimeIndex(
        pd.to_datetime(frame["Date"] + " " + frame["Time"], format="%Y-%m-%d %H:%M:%S")
    )
    frame.columns = [name.lower() for name in frame.columns]
    hours = (
        frame[COLUMNS]
        .astype("float64")
        .resample("1h", closed="left", label="left")
        .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    )
    return hours.dropna(subset=["open"])  # hours with no 5-minute bar (nights) are no bars


def normalised_sha256(frame: pd.DataFrame) -> str:
    """SHA-256 of PROTOCOL.md's data.csv for these bars: ISO seconds, floats as repr."""
    lines = ["datetime,open,high,low,close,volume"]
    for stamp, row in zip(frame.index, frame[COLUMNS].itertuples(index=False), strict=True):
        lines.append(",".join([stamp.strftime("%Y-%m-%dT%H:%M:%S"), *map(repr, map(float, row))]))
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


# --- helpers -----------------------------------------------------------------------------------


def engine_run(
    data_dir: Path,
    state_dir: Path,
    code: str,
    on_progress: Callable[[int, int], None] | None = None,
    **config: Any,
) -> RunOutcome:
    """One run through the real Engine (and, unless the data fails first, the sandbox)."""
    engine = Engine(Settings(data_dir=data_dir, state_dir=state_dir, pool_size=0))
    try:
        request = RunRequest(
            backtest_id=f"bt_data_{time.monotonic_ns()}",
            code=code,
            config=BacktestConfig.model_validate(config),
        )
        return engine.run(request, on_progress=on_progress)
    finally:
        engine.close()


def bad_catalog(tmp_path: Path, edit: Callable[[list[str]], None]) -> Path:
    """A catalog whose BAD/D1.csv is the IDX 2006 daily file with `edit` applied to its lines
    (lines[0] is the header, line 1 of the file)."""
    lines = DAILY.read_text().splitlines()
    edit(lines)
    root = tmp_path / "bad_catalog"
    (root / "BAD").mkdir(parents=True)
    (root / "BAD" / "D1.csv").write_text("\n".join(lines) + "\n")
    return root


def set_cell(line_number: int, column: str, value: str) -> Callable[[list[str]], None]:
    """An edit that sets one cell, on a 1-based file line (the header is line 1)."""

    def edit(lines: list[str]) -> None:
        header = lines[0].lower().split(",")
        cells = lines[line_number - 1].split(",")
        cells[header.index(column)] = value
        lines[line_number - 1] = ",".join(cells)

    return edit


def cell(line_number: int, column: str) -> float:
    """A number from the daily file, on a 1-based file line."""
    header, *rows = DAILY.read_text().splitlines()
    return float(rows[line_number - 2].split(",")[header.lower().split(",").index(column)])


def copy_previous_date(line_number: int) -> Callable[[list[str]], None]:
    """An edit that gives a line the timestamp of the line before it."""

    def edit(lines: list[str]) -> None:
        previous = lines[line_number - 2].split(",")[0]
        lines[line_number - 1] = ",".join([previous, *lines[line_number - 1].split(",")[1:]])

    return edit


def swap_lines(first: int, second: int) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        lines[first - 1], lines[second - 1] = lines[second - 1], lines[first - 1]

    return edit


# --- resampling --------------------------------------------------------------------------------


def test_five_minute_file_runs_as_h1_by_resampling(cli, write_strategy):
    hours = raw_five_minutes_as_hours()
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("IDX", "H1"), *FILE_JSON)
    assert run.code == 0, run.stdout + run.stderr
    result = run.status["result"]

    assert result["data"]["source"] == "file"
    assert result["data"]["bars"] == len(hours) == len(result["equity_curve"])
    assert [point["timestamp"] for point in result["equity_curve"]] == [
        stamp.isoformat() for stamp in hours.index
    ]
    assert result["data"]["first"] == hours.index[0].isoformat()
    assert result["data"]["last"] == hours.index[-1].isoformat()
    # Every bar's open, high, low, close and volume, through the content hash.
    assert result["data"]["sha256"] == normalised_sha256(hours)
    resampled = [w for w in result["warnings"] if "resampled" in w]
    assert resampled and "H1" in resampled[0] and "M5" in resampled[0], result["warnings"]
    assert result["metrics"]["total_trades"] > 0


# --- malformed files: each rule names the file, the line and the row --------------------------

# (edit, rule, the 1-based file line it breaks, words the message must hold)
PROBLEMS = {
    "high_below_close": (set_cell(13, "high", "3600"), "high_ge_open_close", 13, ["high 3600"]),
    "low_above_open": (set_cell(20, "low", "3700"), "low_le_open_close", 20, ["low 3700"]),
    "nan_close": (set_cell(31, "close", "NaN"), "not_empty", 31, ["close"]),
    "empty_open": (set_cell(7, "open", ""), "not_empty", 7, ["open"]),
    "text_volume": (set_cell(8, "volume", "lots"), "numeric", 8, ["volume", "lots"]),
    "zero_price": (set_cell(40, "low", "0"), "positive", 40, ["low", "> 0"]),
    "duplicate_timestamp": (copy_previous_date(51), "unique", 51, ["duplicate"]),
    "unsorted": (swap_lines(60, 61), "sorted", 61, ["earlier"]),
    "bad_timestamp": (set_cell(70, "date", "2006-13-45"), "timestamp", 70, ["2006-13-45"]),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_malformed_file_is_a_data_error_naming_file_and_row(problem, tmp_path):
    edit, rule, line, words = PROBLEMS[problem]
    catalog = bad_catalog(tmp_path, edit)
    outcome = engine_run(catalog, tmp_path / "state", SMA_CROSS, symbol="BAD", **YEAR_2006)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.type == "data_error"
    message = outcome.error.message
    assert "BAD/D1.csv" in message
    assert f"line {line} (data row {line - 1})" in message
    for word in words:
        assert word in message, (word, message)
    assert outcome.error.details["rule"] == rule
    assert outcome.error.details["line"] == line
    assert outcome.error.details["row"] == line - 1
    assert outcome.error.details["file"] == "BAD/D1.csv"
    assert str(catalog) not in message  # names the file in the catalog, not a host path


def test_malformed_file_through_the_cli_exits_3_with_data_error(cli, write_strategy, tmp_path):
    top = max(cell(13, "open"), cell(13, "close"))
    catalog = bad_catalog(tmp_path, set_cell(13, "high", str(top - 1.0)))
    strategy = str(write_strategy(SMA_CROSS))
    env = {"BACKTEST_DATA_DIR": str(catalog)}
    run = cli("run", strategy, *span("BAD", "D1"), "--json", env=env)
    assert run.code == 3, run.stdout + run.stderr
    status = run.status
    assert status["status"] == "failed"
    assert status["result"] is None
    error = status["error"]
    assert error["type"] == "data_error"
    assert "BAD/D1.csv line 13 (data row 12)" in error["message"]
    assert f"high {top - 1.0} is below max(open, close) = {top}" in error["message"]
    assert error["details"]["line"] == 13


# --- missing data, synthetic data, too few bars ------------------------------------------------


def test_no_data_for_the_symbol_with_data_source_file_is_a_data_error(cli, write_strategy):
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("NOPE", "D1"), *FILE_JSON)
    assert run.code == 3, run.stdout + run.stderr
    error = run.status["error"]
    assert error["type"] == "data_error"
    assert "NOPE" in error["message"] and "D1" in error["message"]
    assert error["details"]["rule"] == "no_data"


def test_auto_without_a_file_runs_on_marked_synthetic_data(cli, write_strategy):
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("NOPE", "D1"), "--json")  # data_source: auto
    assert run.code == 0, run.stdout + run.stderr
    result = run.status["result"]
    assert result["data"]["source"] == "synthetic"
    assert result["data"]["path"] is None
    assert result["data"]["bars"] == len(result["equity_curve"]) >= 200  # a year of weekdays
    assert any("synthetic" in warning for warning in result["warnings"]), result["warnings"]


def test_too_few_bars_in_the_range_is_a_data_error(cli, write_strategy):
    bars = raw_daily().loc["2006-01-01":"2006-01-10"]
    assert 0 < len(bars) < 10
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("IDX", "D1", "2006-01-01", "2006-01-10"), "--json")
    assert run.code == 3, run.stdout + run.stderr
    error = run.status["error"]
    assert error["type"] == "data_error"
    assert f"only {len(bars)} bars" in error["message"]
    assert "IDX/D1.csv" in error["message"]
    assert error["details"]["rule"] == "min_bars"
    assert error["details"]["bars"] == len(bars)


def test_a_range_outside_the_file_is_a_data_error(cli, write_strategy):
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("IDX", "D1", "1990-01-01", "1990-12-31"), *FILE_JSON)
    assert run.code == 3, run.stdout + run.stderr
    error = run.status["error"]
    assert error["type"] == "data_error"
    assert error["details"]["rule"] == "no_data"
    assert "2006-01-02" in error["message"]  # says what the file does hold


# --- data import ---------------------------------------------------------------------------


def test_data_import_refuses_a_bad_file_naming_the_row(cli, tmp_path):
    bad = bad_catalog(tmp_path, set_cell(13, "high", "1.0")) / "BAD" / "D1.csv"
    target = tmp_path / "imported"
    env = {"BACKTEST_DATA_DIR": str(target)}
    run = cli("data", "import", str(bad), "--symbol", "BAD", "--timeframe", "D1", env=env)
    assert run.code != 0
    assert "line 13 (data row 12)" in run.stderr
    assert str(bad) in run.stderr
    assert not (target / "BAD" / "D1.csv").exists()


def test_data_import_writes_a_catalog_file_that_runs(cli, write_strategy, tmp_path):
    catalog = tmp_path / "imported"
    env = {"BACKTEST_DATA_DIR": str(catalog)}
    run = cli("data", "import", str(DAILY), "--symbol", "NEW", "--timeframe", "D1", env=env)
    assert run.code == 0, run.stderr
    written = catalog / "NEW" / "D1.csv"
    assert Path(run.stdout.strip()) == written
    bars = raw_daily()
    imported = pd.read_csv(written, index_col="datetime", parse_dates=["datetime"])
    assert list(imported.columns) == COLUMNS  # OpenInterest dropped, names normalised
    pd.testing.assert_frame_equal(imported, bars, check_names=False, check_freq=False)
    assert hashlib.sha256(written.read_bytes()).hexdigest() == normalised_sha256(bars)

    # The sandbox reads it even when the host keeps the catalog private to its own user.
    written.chmod(0o600)
    written.parent.chmod(0o700)
    catalog.chmod(0o700)
    strategy = str(write_strategy(SMA_CROSS))
    run = cli("run", strategy, *span("NEW", "D1"), *FILE_JSON, env=env)
    assert run.code == 0, run.stdout + run.stderr
    assert run.status["result"]["data"]["sha256"] == normalised_sha256(bars)


# --- hash, equity curve, trade log ---------------------------------------------------------


def test_data_hash_is_the_normalised_bars_and_stable_and_curve_and_log_are_complete(
    cli, write_strategy
):
    bars = raw_daily()
    strategy = str(write_strategy(SMA_CROSS))
    first = cli("run", strategy, *IDX_2006, "--json")
    second = cli("run", strategy, *IDX_2006, "--json")
    assert first.code == second.code == 0, first.stdout + first.stderr + second.stderr
    result, again = first.status["result"], second.status["result"]

    assert result["data"]["sha256"] == normalised_sha256(bars)
    assert again["data"]["sha256"] == result["data"]["sha256"]
    assert again["metrics"] == result["metrics"]  # the same inputs, the same figures

    # One point per bar, at the bar's own timestamp.
    assert result["data"]["bars"] == len(bars) == len(result["equity_curve"])
    assert [p["timestamp"] for p in result["equity_curve"]] == [
        stamp.isoformat() for stamp in bars.index
    ]

    trades = result["trade_log"]
    assert trades
    stamps = {stamp.isoformat() for stamp in bars.index}
    for trade in trades:
        assert set(trade) >= TRADE_FIELDS, TRADE_FIELDS - set(trade)
        assert trade["entry_time"] in stamps and trade["exit_time"] in stamps
        assert trade["entry_time"] < trade["exit_time"]
        assert trade["size"] == 1.0
        # A market order fills at the next bar's open (no slippage here).
        assert trade["entry_price"] == bars.loc[trade["entry_time"], "open"]
        assert trade["exit_price"] == bars.loc[trade["exit_time"], "open"]
        held = bars.index.get_loc(trade["exit_time"]) - bars.index.get_loc(trade["entry_time"])
        assert trade["bars_held"] == held
        assert trade["pnl"] == pytest.approx(trade["exit_price"] - trade["entry_price"])
        assert trade["commission"] == 0
        assert trade["pnl_net"] == trade["pnl"]


# --- progress ------------------------------------------------------------------------------


def test_engine_reports_progress_ending_at_all_bars(data_dir, tmp_path):
    reports: list[tuple[int, int]] = []
    whole_file = {"timeframe": "D1", "start_date": "1995-01-01", "end_date": "2014-12-31"}
    outcome = engine_run(
        data_dir,
        tmp_path / "state",
        SMA_CROSS,
        on_progress=lambda done, total: reports.append((done, total)),
        symbol="ORCL",
        **whole_file,
    )
    assert outcome.status == "completed", outcome.error
    assert outcome.result is not None
    bars = outcome.result.data.bars
    assert reports, "no progress reached the caller"
    assert reports[-1] == (bars, bars)
    assert all(total == bars for _, total in reports)
    done = [d for d, _ in reports]
    assert done == sorted(done)


def read_pty(master: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Everything written to the pty until the process exits and the pty drains."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # EIO: every writer closed the slave side
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_cli_draws_a_progress_bar_when_stderr_is_a_terminal(data_dir, write_strategy, tmp_path):
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(tmp_path / "state"),
    }
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backtest_sandbox",
            "run",
            str(write_strategy(SMA_CROSS)),
            "--symbol",
            "ORCL",
            "--timeframe",
            "D1",
            "--start",
            "1995-01-01",
            "--end",
            "2014-12-31",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    ) as proc:
        os.close(slave)
        try:
            terminal = read_pty(master, proc, timeout=120).decode()
        finally:
            os.close(master)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        assert proc.wait(timeout=30) == 0, stdout + terminal
    bars = raw_daily(SHARED_DATA / "orcl-1995-2014.txt").shape[0]
    assert f"\r[{'#' * 30}] 100%  {bars}/{bars} bars" in terminal, terminal
    assert "completed" in stdout
    # stdout is not a terminal: no bar there.
    assert "\r[" not in stdout


def test_cli_draws_no_bar_when_stderr_is_not_a_terminal(cli, write_strategy):
    """A CI log gets plain progress lines (every 5 s at most, and the end), never a bar."""
    run = cli("run", str(write_strategy(SMA_CROSS)), *IDX_2006)
    assert run.code == 0, run.stdout + run.stderr
    assert "\r" not in run.stderr and "[" not in run.stderr
    assert run.stderr.splitlines()[-1] == "progress: 255/255 bars (100%)"
    assert "completed" in run.stdout

"""Adjusted prices (`config.adjust_prices`, issue 16): the catalog keeps a file's adjusted close,
and a run that asks for it gets bars adjusted as backtrader's YahooFinanceCSVData adjusts them.

The reference is plain Backtrader reading the raw shared file with YahooFinanceCSVData and its
defaults (no code of ours in between): every bar's open, high, low, close and volume must be
the same float.
"""

from __future__ import annotations

import random
import shutil
from datetime import date, datetime
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from backtest_sandbox.data import catalog
from backtest_sandbox.data.bars_file import COLUMNS, read_bars
from backtest_sandbox.data.catalog import import_file, prepare
from backtest_sandbox.data.frames import normalised_csv
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError
from backtest_sandbox.domain.timeframes import Timeframe
from backtest_sandbox.jobs.cache import cache_key
from backtest_sandbox.jobs.engine import RunRequest
from backtest_sandbox.verify.gate import step_rows
from tests.conftest import SHARED_DATA

YAHOO = {"ORCL": "orcl-1995-2014.txt", "NVDA": "nvda-1999-2014.txt", "YHOO": "yhoo-1996-2014.txt"}
SIX = "datetime,open,high,low,close,volume"
HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
GOOD = [f"2020-01-{day:02d},10,11,9,10.5,5.25,100" for day in range(1, 13)]

Bar = tuple[float, float, float, float, float]


def config(symbol: str, timeframe: str = "D1", **more: object) -> BacktestConfig:
    fields = {"symbol": symbol, "timeframe": timeframe, "start_date": "1990-01-01"}
    return BacktestConfig.model_validate({"end_date": "2020-12-31", **fields, **more})


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog of the Yahoo files and the index's daily file, through `data import`."""
    root = tmp_path_factory.mktemp("catalog")
    for symbol, name in YAHOO.items():
        import_file(SHARED_DATA / name, symbol, Timeframe.D1, root)
    import_file(SHARED_DATA / "2006-day-001.txt", "IDX", Timeframe.D1, root)
    return root


class Recorder(bt.Strategy):  # type: ignore[misc]
    """Every bar of the first feed, as the strategy sees it."""

    def start(self) -> None:
        self.bars: list[tuple[datetime, Bar]] = []

    def next(self) -> None:
        d = self.data
        bar = (d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0])
        self.bars.append((d.datetime.datetime(0), bar))


def backtrader_tape(name: str, weekly: bool = False, **dates: date) -> dict[date, Bar]:
    """The raw shared file through plain Backtrader's YahooFinanceCSVData, its defaults: the
    bars by day (Backtrader stamps them at the session's end, ours at 00:00)."""
    cerebro = bt.Cerebro(stdstats=False)
    feed = bt.feeds.YahooFinanceCSVData(dataname=str(SHARED_DATA / name), **dates)
    if weekly:
        cerebro.resampledata(feed, timeframe=bt.TimeFrame.Weeks)
    else:
        cerebro.adddata(feed)
    cerebro.addstrategy(Recorder)
    return {stamp.date(): bar for stamp, bar in cerebro.run()[0].bars}


def backtrader_bars(name: str, weekly: bool = False, **dates: date) -> list[Bar]:
    return list(backtrader_tape(name, weekly, **dates).values())


def our_bars(frame: pd.DataFrame) -> list[Bar]:
    return [tuple(row) for row in frame[list(COLUMNS)].itertuples(index=False)]


# --- import keeps the adjusted close ----------------------------------------------------------


def test_import_keeps_the_adjusted_close_as_a_last_column(imported: Path) -> None:
    text = (imported / "ORCL" / "D1.csv").read_text()
    assert text.startswith(f"{SIX},adj_close\n1995-01-03T00:00:00,2.179012,")
    assert text.splitlines()[1].endswith(",36301200.0,1.883304")
    back, _ = read_bars(imported / "ORCL" / "D1.csv")
    raw = pd.read_csv(SHARED_DATA / YAHOO["ORCL"])
    assert back["adj_close"].tolist() == raw["Adj Close"].tolist()
    assert back["close"].tolist() == raw["Close"].tolist()


def test_a_file_without_an_adjusted_close_keeps_the_six_columns(imported: Path) -> None:
    assert (imported / "IDX" / "D1.csv").read_text().startswith(f"{SIX}\n2006-01-02T00:00:00,")


@pytest.mark.parametrize("name", ["Adj Close", "adj_close", "ADJCLOSE", "<Adj Close>"])
def test_adjusted_close_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER.replace("Adj Close", name), *GOOD]) + "\n")
    frame, _ = read_bars(path)
    assert (frame["adj_close"] == 5.25).all()


@pytest.mark.parametrize(
    ("cell", "rule", "text"),
    [
        ("0", "positive", "adj_close must be > 0, got 0.0"),
        ("-1.5", "positive", "adj_close must be > 0, got -1.5"),
        ("", "not_empty", "adj_close is empty"),
        ("abc", "numeric", "adj_close is not a number: 'abc'"),
        ("inf", "finite", "adj_close is not finite"),
    ],
)
def test_the_adjusted_close_is_validated_as_prices_are(
    tmp_path: Path, cell: str, rule: str, text: str
) -> None:
    rows = list(GOOD)
    rows[4] = f"2020-01-05,10,11,9,10.5,{cell},100"
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(DataError) as caught:
        import_file(path, "X", Timeframe.D1, tmp_path / "data")
    assert str(caught.value).startswith(f"{path} line 6 (data row 5): {text}")
    assert caught.value.details["rule"] == rule
    assert not (tmp_path / "data").exists()


def test_two_adjusted_close_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER + ",adj_close", *(r + ",5" for r in GOOD)]) + "\n")
    with pytest.raises(DataError, match=r"\['Adj Close', 'adj_close'\] are each an adjusted"):
        read_bars(path)


def test_parquet_keeps_the_adjusted_close(tmp_path: Path) -> None:
    frame, _ = read_bars(SHARED_DATA / YAHOO["NVDA"])
    frame.to_parquet(tmp_path / "nvda.parquet")
    back, _ = read_bars(tmp_path / "nvda.parquet")
    pd.testing.assert_frame_equal(back, frame)
    assert "adj_close" in back


# --- adjusting equals backtrader's YahooFinanceCSVData ------------------------------------------


@pytest.mark.parametrize("symbol", list(YAHOO))
def test_adjusted_bars_equal_yahoo_finance_csv_data(imported: Path, symbol: str) -> None:
    data = prepare(config(symbol, adjust_prices=True), imported)
    expected = backtrader_bars(YAHOO[symbol])
    assert data.bars == len(expected) > 4000
    assert our_bars(data.frame) == expected  # every float, bit for bit
    plain = prepare(config(symbol), imported)
    assert our_bars(plain.frame) != expected  # the test can fail: adjusting moves the bars
    assert plain.sha256 != data.sha256


def test_a_raw_yahoo_file_in_the_catalog_adjusts_alike(imported: Path, tmp_path: Path) -> None:
    (tmp_path / "ORCL").mkdir()
    shutil.copy(SHARED_DATA / YAHOO["ORCL"], tmp_path / "ORCL" / "D1.csv")  # not normalised
    copied = prepare(config("ORCL", adjust_prices=True), tmp_path)
    assert copied.csv_bytes == prepare(config("ORCL", adjust_prices=True), imported).csv_bytes


def test_adjusting_comes_before_resampling_as_backtrader_resamples(imported: Path) -> None:
    weekly = prepare(
        config("ORCL", "W1", start_date="2010-01-01", end_date="2011-12-31", adjust_prices=True),
        imported,
    )
    dates = {"fromdate": date(2010, 1, 1), "todate": date(2011, 12, 31)}  # whole days
    expected = backtrader_bars(YAHOO["ORCL"], weekly=True, **dates)
    assert weekly.bars == len(expected) == 104
    assert our_bars(weekly.frame) == expected


def test_rounding_and_ties_as_backtrader(tmp_path: Path) -> None:
    """A Yahoo-style file of awkward values (ties at the third decimal, a volume of x.5 after
    the factor, random prices and factors): plain Backtrader reading it and our run agree on
    every float. 45.965 rounds to 45.97 with Python's round (the float is a little above),
    where numpy's round says 45.96: a vectorised rounding would fail here."""
    rng = random.Random(7)
    rows = ["2020-01-01,45.965,46.5,45.0,45.965,45.965,100", "2020-01-02,3.0,3.3,2.9,3.0,1.0,10.5",
            "2020-01-03,3.0,3.3,2.9,3.0,1.0,11.5"]  # fmt: skip
    for day in range(4, 29):
        close, open_ = round(rng.uniform(1, 100), 6), round(rng.uniform(1, 100), 6)
        high = round(max(open_, close) * rng.uniform(1, 1.05), 6)
        low = round(min(open_, close) * rng.uniform(0.95, 1), 6)
        adjusted = round(close * rng.uniform(0.2, 1), 6)
        rows.append(
            f"2020-01-{day:02d},{open_},{high},{low},{close},{adjusted},{rng.randint(0, 10**7)}"
        )
    (tmp_path / "X").mkdir()
    path = tmp_path / "X" / "D1.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    data = prepare(config("X", adjust_prices=True), tmp_path)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.YahooFinanceCSVData(dataname=str(path)))
    cerebro.addstrategy(Recorder)
    expected = [bar for _, bar in cerebro.run()[0].bars]
    assert our_bars(data.frame) == expected and len(expected) == 28
    assert expected[0][3] == 45.97 and float(np.round(45.965, 2)) == 45.96
    assert (expected[1][4], expected[2][4]) == (32.0, 34.0)  # 31.5 and 34.5: half to even


# --- the sandbox never sees adj_close -------------------------------------------------------


@pytest.mark.parametrize("adjust", [False, True])
def test_the_run_gets_six_columns_either_way(imported: Path, adjust: bool) -> None:
    data = prepare(config("ORCL", extra_symbols=["NVDA"], adjust_prices=adjust), imported)
    for feed in data.feeds:
        assert list(feed.frame.columns) == list(COLUMNS)
        assert feed.csv_bytes.decode().startswith(f"{SIX}\n")
        assert feed.csv_bytes == normalised_csv(feed.frame)
    steps = step_rows([feed.csv_bytes for feed in data.feeds])
    assert {step.count(b",") for step in steps} == {10}  # a stamp and 5 values per feed


def test_unadjusted_runs_are_as_before(imported: Path) -> None:
    """The default leaves the prices as the file has them: the pinned hash of the catalog
    tests (tests/unit/test_catalog.py) holds for a catalog that keeps adj_close."""
    data = prepare(config("ORCL", start_date="2010-01-01", end_date="2010-12-31"), imported)
    assert data.sha256 == "8f76afb03f42ece878d436869827cad2e2a55608be14f80b22d505cfff52786d"


# --- every feed alike; errors and synthetic data --------------------------------------------


def test_extra_symbols_and_the_benchmark_are_adjusted_alike(imported: Path) -> None:
    both = config("ORCL", extra_symbols=["NVDA"], benchmark="YHOO", adjust_prices=True)
    data = prepare(both, imported)
    orcl, nvda = backtrader_tape(YAHOO["ORCL"]), backtrader_tape(YAHOO["NVDA"])
    days = [stamp.date() for stamp in pd.DatetimeIndex(data.frame.index)]
    assert days == sorted(orcl.keys() & nvda.keys()) and len(days) > 4000
    assert our_bars(data.frame) == [orcl[day] for day in days]
    assert our_bars(data.extras[0].frame) == [nvda[day] for day in days]
    assert data.benchmark is not None
    yhoo = backtrader_bars(YAHOO["YHOO"])
    assert our_bars(data.benchmark.frame) == yhoo
    assert data.benchmark_closes[-1] == yhoo[-1][3]


def test_a_file_without_adjusted_closes_is_a_data_error(imported: Path) -> None:
    with pytest.raises(DataError) as caught:
        prepare(config("IDX", adjust_prices=True), imported)
    assert str(caught.value).startswith(
        "config.adjust_prices: IDX/D1.csv has no adjusted close (a column Adj Close, adj_close"
    )
    assert caught.value.details["field"] == "config.adjust_prices"
    assert caught.value.details["rule"] == "adj_close_required"
    for other in ({"extra_symbols": ["IDX"]}, {"benchmark": "IDX"}):
        with pytest.raises(DataError, match=r"config\.adjust_prices: IDX/D1\.csv has no adj"):
            prepare(config("ORCL", adjust_prices=True, **other), imported)
    assert prepare(config("IDX"), imported).bars == 255  # without the flag it runs as before


def test_an_old_six_column_catalog_file_keeps_working(imported: Path, tmp_path: Path) -> None:
    frame, _ = read_bars(imported / "ORCL" / "D1.csv")
    (tmp_path / "ORCL").mkdir()
    (tmp_path / "ORCL" / "D1.csv").write_bytes(normalised_csv(frame))  # as imports wrote it
    old = prepare(config("ORCL"), tmp_path)
    assert old.csv_bytes == prepare(config("ORCL"), imported).csv_bytes
    with pytest.raises(DataError, match="needs importing again"):
        prepare(config("ORCL", adjust_prices=True), tmp_path)


def test_an_adjusted_price_that_rounds_to_zero_is_a_data_error(tmp_path: Path) -> None:
    rows = [f"2020-01-{day:02d},1,1.1,0.9,1,0.001,100" for day in range(1, 13)]
    (tmp_path / "TINY").mkdir()
    (tmp_path / "TINY" / "D1.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(DataError, match="bar 2020-01-01T00:00:00: a price adjusted") as caught:
        prepare(config("TINY", adjust_prices=True), tmp_path)
    assert caught.value.details["rule"] == "positive_after_adjustment"


def test_synthetic_bars_are_not_adjusted_with_a_warning(imported: Path) -> None:
    for source in ("synthetic", "auto"):
        symbol = "ORCL" if source == "synthetic" else "NOFILE"
        adjusted = prepare(config(symbol, data_source=source, adjust_prices=True), imported)
        plain = prepare(config(symbol, data_source=source), imported)
        assert adjusted.source == "synthetic" and adjusted.csv_bytes == plain.csv_bytes
        assert adjusted.warnings == [
            *plain.warnings,
            f"config.adjust_prices ignored for {symbol}: synthetic bars have no adjusted "
            "close; they are not adjusted",
        ]


# --- the cache key ---------------------------------------------------------------------------


def test_adjusted_and_unadjusted_runs_have_other_cache_keys(imported: Path) -> None:
    keys = set()
    for adjust in (False, True):
        run = config("ORCL", adjust_prices=adjust)
        request = RunRequest(backtest_id="bt_x", code="pass", config=run)
        keys.add(cache_key(request, catalog.data_identity(run, imported), "image"))
    assert len(keys) == 2
    assert (
        BacktestConfig.model_validate(
            {
                "symbol": "ORCL",
                "timeframe": "D1",
                "start_date": "2020-01-01",
                "end_date": "2020-02-01",
            }
        ).adjust_prices
        is False
    )

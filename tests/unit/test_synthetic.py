"""Synthetic bars: deterministic, valid, on the timeframe's grid, independent of the range."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from backtest_sandbox.data.bars_file import read_bars
from backtest_sandbox.data.catalog import prepare
from backtest_sandbox.data.frames import normalised_csv
from backtest_sandbox.data.synthetic import MAX_BARS, seed_for, session_slots, synthetic_bars
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError
from backtest_sandbox.domain.timeframes import Timeframe

YEAR = (date(2021, 1, 1), date(2021, 12, 31))


def bars(symbol: str, timeframe: Timeframe, start: date, end: date) -> pd.DataFrame:
    return synthetic_bars(symbol, timeframe, start, end)


@pytest.mark.parametrize("timeframe", list(Timeframe), ids=lambda t: t.name)
def test_bars_are_valid_for_every_timeframe(timeframe: Timeframe, tmp_path: Path) -> None:
    frame = bars("EURUSD", timeframe, *YEAR)
    assert len(frame) >= 12
    body_top = frame[["open", "close"]].max(axis=1)
    body_bottom = frame[["open", "close"]].min(axis=1)
    assert (frame["high"] >= body_top).all() and (frame["low"] <= body_bottom).all()
    assert (frame["low"] > 0).all() and (frame["volume"] >= 1).all()
    assert frame.index.is_monotonic_increasing and frame.index.is_unique
    assert frame.index[0].date() >= YEAR[0] and frame.index[-1].date() <= YEAR[1]
    # The catalog's own validation accepts them, as it would a file.
    path = tmp_path / "synthetic.csv"
    path.write_bytes(normalised_csv(frame))
    back, _ = read_bars(path)
    pd.testing.assert_frame_equal(back, frame)


@pytest.mark.parametrize("symbol", ["A", "ORCL", "EURUSD", "x_1", "ZZZZZZZZ"])
def test_prices_stay_in_sensible_bounds_over_centuries(symbol: str) -> None:
    frame = bars(symbol, Timeframe.W1, date(1900, 1, 1), date(2199, 12, 31))
    assert frame["low"].min() > 0.5 and frame["high"].max() < 20_000


def test_grids_and_sessions() -> None:
    daily = bars("ORCL", Timeframe.D1, *YEAR)
    assert (daily.index.day_of_week < 5).all() and (daily.index == daily.index.normalize()).all()
    assert len(daily) == 261  # the weekdays of 2021
    weekly = bars("ORCL", Timeframe.W1, *YEAR)
    assert (weekly.index.day_of_week == 0).all()
    monthly = bars("ORCL", Timeframe.MN1, *YEAR)
    assert list(monthly.index.month) == list(range(1, 13)) and (monthly.index.day == 1).all()
    minutes = bars("ORCL", Timeframe.M5, *YEAR)
    times = minutes.index.strftime("%H:%M")
    assert times.min() == "09:30" and times.max() == "15:55"
    assert (minutes.index.day_of_week < 5).all()
    assert len(minutes) == 261 * 78
    assert session_slots(Timeframe.H1) == [h * 60 for h in range(9, 16)]
    assert session_slots(Timeframe.H4) == [8 * 60, 12 * 60]


def test_same_inputs_give_identical_bytes() -> None:
    first = normalised_csv(bars("ORCL", Timeframe.H1, *YEAR))
    assert first == normalised_csv(bars("ORCL", Timeframe.H1, *YEAR))
    # Pinned: synthetic data feeds the content hash and the cache; it must not drift.
    daily = normalised_csv(bars("ORCL", Timeframe.D1, date(2020, 1, 1), date(2020, 1, 31)))
    assert daily.splitlines()[1] == b"2020-01-01T00:00:00,14.5661,14.9893,14.5252,14.8788,844458.0"
    assert hashlib.sha256(daily).hexdigest()[:16] == "150482c0ea1dd8f5"


def test_seed_is_stable_and_not_pythons_hash() -> None:
    assert seed_for("bars", "ORCL", "D1") == seed_for("bars", "ORCL", "D1")
    digest = hashlib.sha256(b"bars\x00ORCL\x00D1").digest()
    assert seed_for("bars", "ORCL", "D1") == int.from_bytes(digest[:8], "big")


def test_bars_do_not_depend_on_the_range_asked_for() -> None:
    whole = bars("ORCL", Timeframe.M15, date(2021, 1, 1), date(2021, 3, 31))
    part = bars("ORCL", Timeframe.M15, date(2021, 2, 10), date(2021, 2, 20))
    pd.testing.assert_frame_equal(part, whole.loc["2021-02-10":"2021-02-20"])
    early = bars("ORCL", Timeframe.D1, date(1950, 1, 1), date(1950, 12, 31))
    later = bars("ORCL", Timeframe.D1, date(1950, 6, 1), date(2001, 1, 1))
    pd.testing.assert_frame_equal(later.loc[:"1950-12-31"], early.loc["1950-06-01":])


def test_timeframes_of_a_symbol_share_the_daily_walk() -> None:
    daily = bars("ORCL", Timeframe.D1, *YEAR)
    hourly = bars("ORCL", Timeframe.H1, *YEAR)
    by_day = hourly.groupby(hourly.index.normalize())
    assert by_day["open"].first().tolist() == daily["open"].tolist()
    assert by_day["close"].last().tolist() == daily["close"].tolist()


def test_symbols_and_timeframes_differ() -> None:
    orcl = bars("ORCL", Timeframe.D1, *YEAR)
    msft = bars("MSFT", Timeframe.D1, *YEAR)
    assert not orcl["close"].equals(msft["close"])
    m30 = bars("ORCL", Timeframe.M30, *YEAR)
    h1 = bars("ORCL", Timeframe.H1, *YEAR)
    assert m30.loc["2021-03-01 10:00", "volume"] != h1.loc["2021-03-01 10:00", "volume"]


def test_a_weekend_has_no_bars_and_a_run_needs_enough(tmp_path: Path) -> None:
    assert bars("ORCL", Timeframe.D1, date(2021, 1, 2), date(2021, 1, 3)).empty
    config = BacktestConfig.model_validate(
        {"symbol": "ORCL", "timeframe": "D1", "start_date": "2021-01-01", "end_date": "2021-01-08"}
    )
    with pytest.raises(DataError, match="only 6 bars for ORCL D1"):
        prepare(config, tmp_path)  # auto, and the catalog is empty: synthetic


def test_refuses_ranges_outside_the_span_or_too_big() -> None:
    with pytest.raises(DataError, match="synthetic data covers 1900-01-01 to 2199-12-31"):
        bars("ORCL", Timeframe.D1, date(1850, 1, 1), date(1900, 12, 31))
    with pytest.raises(DataError, match=f"at most {MAX_BARS:,}") as caught:
        bars("ORCL", Timeframe.M1, date(2000, 1, 1), date(2030, 1, 1))
    assert caught.value.details["rule"] == "synthetic_size"

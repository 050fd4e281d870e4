"""The market data catalog: reading, validation (file, line, rule), resampling, cutting, hashing."""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from backtest_sandbox.data import bars_file, catalog, frames
from backtest_sandbox.data.bars_file import read_bars
from backtest_sandbox.data.catalog import MIN_BARS, can_resample, import_file, prepare
from backtest_sandbox.data.frames import normalised_csv
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError, InvalidRequest
from backtest_sandbox.domain.timeframes import Timeframe
from tests.conftest import SHARED_DATA

HEADER = "Date,Open,High,Low,Close,Volume"
GOOD = [f"2020-01-{day:02d},10,11,9,10.5,100" for day in range(1, 13)]
AGG = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}


def csv(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def config(
    symbol: str, timeframe: str, start: str, end: str, source: str = "auto"
) -> BacktestConfig:
    return BacktestConfig.model_validate(
        {
            "symbol": symbol,
            "timeframe": timeframe,
            "start_date": start,
            "end_date": end,
            "data_source": source,
        }
    )


def replaced(index: int, row: str) -> list[str]:
    rows = list(GOOD)
    rows[index] = row
    return rows


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """ORCL daily and the index's 5-minute bars, copied as they are (not normalised)."""
    root = tmp_path / "data"
    (root / "ORCL").mkdir(parents=True)
    (root / "IDX").mkdir()
    shutil.copy(SHARED_DATA / "orcl-1995-2014.txt", root / "ORCL" / "D1.csv")
    shutil.copy(SHARED_DATA / "2006-min-005.txt", root / "IDX" / "M5.csv")
    return root


# --- every data problem names the file, the line and data row, and the rule --------------

BAD_FILES = [
    pytest.param(replaced(4, "2020-01-03,10,11,9,10.5,100"), "line 6 (data row 5)", "sorted",
                 "earlier than the previous row's 2020-01-04T00:00:00", id="unsorted"),
    pytest.param(replaced(4, "2020-01-04,10,11,9,10.5,100"), "line 6 (data row 5)", "unique",
                 "duplicate timestamp 2020-01-04T00:00:00", id="duplicate"),
    pytest.param(replaced(2, "2020-01-03,10,11,9,,100"), "line 4 (data row 3)", "not_empty",
                 "close is empty", id="empty"),
    pytest.param(replaced(2, "2020-01-03,10,11,9,NaN,100"), "line 4 (data row 3)", "not_empty",
                 "close is empty or NaN", id="nan"),
    pytest.param(replaced(2, "2020-01-03,10,11,9,abc,100"), "line 4 (data row 3)", "numeric",
                 "close is not a number: 'abc'", id="not-a-number"),
    pytest.param(replaced(2, "2020-01-03,10,inf,9,10,100"), "line 4 (data row 3)", "finite",
                 "high is not finite", id="infinite"),
    pytest.param(replaced(7, "2020-01-08,10,10.4,9,10.5,100"), "line 9 (data row 8)",
                 "high_ge_open_close", "high 10.4 is below max(open, close) = 10.5", id="high"),
    pytest.param(replaced(7, "2020-01-08,10,11,10.2,10.5,100"), "line 9 (data row 8)",
                 "low_le_open_close", "low 10.2 is above min(open, close) = 10.0", id="low"),
    pytest.param(replaced(0, "2020-01-01,0,11,0,10.5,100"), "line 2 (data row 1)", "positive",
                 "open must be > 0, got 0.0", id="zero-price"),
    pytest.param(replaced(9, "2020-01-10,-1,11,-2,10.5,100"), "line 11 (data row 10)",
                 "positive", "open must be > 0, got -1.0", id="negative-price"),
    pytest.param(replaced(3, "2020-01-04,10,11,9,10.5,-5"), "line 5 (data row 4)",
                 "volume_non_negative", "volume must be >= 0, got -5.0", id="negative-volume"),
    pytest.param(replaced(5, "2020-13-45,10,11,9,10.5,100"), "line 7 (data row 6)", "timestamp",
                 "cannot parse timestamp '2020-13-45'", id="unparsable-date"),
    pytest.param(replaced(5, ",10,11,9,10.5,100"), "line 7 (data row 6)", "timestamp",
                 "the timestamp is empty", id="empty-date"),
    pytest.param(replaced(1, "2020-01-02T10:00:00.5,10,11,9,10.5,100"), "line 3 (data row 2)",
                 "timestamp", "fraction of a second", id="sub-second"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "where", "rule", "text"), BAD_FILES)
def test_bad_row_names_file_line_and_rule(
    tmp_path: Path, rows: list[str], where: str, rule: str, text: str
) -> None:
    path = csv(tmp_path, rows)
    with pytest.raises(DataError) as caught:
        read_bars(path, name="ORCL/D1.csv")
    message = str(caught.value)
    assert message.startswith(f"ORCL/D1.csv {where}: "), message
    assert text in message
    assert caught.value.details["rule"] == rule
    assert caught.value.details["file"] == "ORCL/D1.csv"


def test_counts_rows_breaking_the_same_rule(tmp_path: Path) -> None:
    rows = [r.replace(",11,", ",10.1,") for r in GOOD]  # high below close on every row
    with pytest.raises(DataError, match=r"line 2 \(data row 1\).*\(12 rows break this rule\)"):
        read_bars(csv(tmp_path, rows))


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path: Path) -> None:
    rows = [*GOOD[:3], "", "", *GOOD[3:6], "2020-01-05,10,11,9,10.5,100", *GOOD[7:]]
    with pytest.raises(DataError) as caught:
        read_bars(csv(tmp_path, rows))
    assert "line 10 (data row 7)" in str(caught.value)
    assert (caught.value.details["line"], caught.value.details["row"]) == (10, 7)
    frame, _ = read_bars(csv(tmp_path, [*GOOD[:3], "", *GOOD[3:]], name="ok.csv"))
    assert len(frame) == len(GOOD)


def test_missing_column(tmp_path: Path) -> None:
    path = csv(tmp_path, [r.rsplit(",", 2)[0] for r in GOOD], header="Date,Open,High,Low")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) close;") as caught:
        read_bars(path)
    assert caught.value.details["rule"] == "columns"


def test_missing_time_column(tmp_path: Path) -> None:
    path = csv(tmp_path, [r.split(",", 1)[1] for r in GOOD], header="Open,High,Low,Close,Volume")
    with pytest.raises(DataError, match=r"missing column\(s\) date \(or datetime\)"):
        read_bars(path)


def test_header_only_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data rows"):
        read_bars(csv(tmp_path, []))
    with pytest.raises(DataError, match="cannot open"):
        read_bars(tmp_path / "nothing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="binary.csv"):
        read_bars(binary)


def test_refuses_files_over_the_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bars_file, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match="data files of at most 100 bytes") as caught:
        read_bars(csv(tmp_path, GOOD))
    assert caught.value.details["rule"] == "max_file_bytes"


# --- shapes that are accepted ---------------------------------------------------------------


def test_headers_in_any_case_and_extra_columns(tmp_path: Path) -> None:
    header = "DATE,oPeN,HIGH,low,Close,VOLUME,OpenInterest,Adj Close"
    frame, notes = read_bars(csv(tmp_path, [r + ",0,1.5" for r in GOOD], header=header))
    assert list(frame.columns) == ["open", "high", "low", "close", "volume", "adj_close"]
    assert (frame["adj_close"] == 1.5).all()  # kept, for config.adjust_prices
    assert notes == []
    assert frame.index.name == "datetime" and str(frame.index.dtype) == "datetime64[ns]"
    assert (frame.dtypes == "float64").all()


def test_shared_files_in_their_shapes() -> None:
    orcl, _ = read_bars(SHARED_DATA / "orcl-1995-2014.txt")  # Adj Close kept as adj_close
    assert (len(orcl), orcl["close"].iloc[0]) == (5036, 2.117284)
    assert orcl["adj_close"].iloc[0] == 1.883304
    day, _ = read_bars(SHARED_DATA / "2006-day-001.txt")  # OpenInterest ignored
    assert len(day) == 255
    minutes, _ = read_bars(SHARED_DATA / "2006-min-005.txt")  # separate Date and Time
    assert minutes.index[0] == pd.Timestamp("2006-01-02 09:05:00")
    assert minutes.index[1] - minutes.index[0] == pd.Timedelta(minutes=5)


def test_datetime_column_separator_bom_and_time_zone(tmp_path: Path) -> None:
    rows = [f"2020-01-{d:02d}T10:00:00+02:00;10;11;9;10.5;100" for d in range(1, 13)]
    path = tmp_path / "semi.csv"
    path.write_bytes(("\ufeffDateTime;Open;High;Low;Close;Volume\n" + "\n".join(rows)).encode())
    frame, _ = read_bars(path)
    assert frame.index[0] == pd.Timestamp("2020-01-01 10:00:00")  # wall-clock time kept


def test_other_date_formats_are_inferred(tmp_path: Path) -> None:
    rows = [f"2020.01.{d:02d},00:00,10,11,9,10.5,100" for d in range(1, 13)]
    frame, _ = read_bars(csv(tmp_path, rows, header="<DATE>,<TIME>,OPEN,HIGH,LOW,CLOSE,VOL"))
    assert frame.index[-1] == pd.Timestamp("2020-01-12")
    assert frame["volume"].iloc[0] == 0.0  # VOL is not volume: missing, so 0


def test_missing_volume_is_zero_with_a_warning(tmp_path: Path) -> None:
    rows = [r.rsplit(",", 1)[0] for r in GOOD]
    frame, notes = read_bars(csv(tmp_path, rows, header="date,open,high,low,close"))
    assert (frame["volume"] == 0.0).all()
    assert notes == [f"{tmp_path / 'bad.csv'}: no volume column; volume set to 0"]


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame, _ = read_bars(SHARED_DATA / "orcl-1995-2014.txt")
    frame.to_parquet(tmp_path / "indexed.parquet")  # with its datetime index
    back, _ = read_bars(tmp_path / "indexed.parquet")
    pd.testing.assert_frame_equal(back, frame)
    flat = frame.reset_index().rename(columns=str.upper)  # upper-case columns, no index
    flat.to_parquet(tmp_path / "flat.parquet", index=False)
    back, _ = read_bars(tmp_path / "flat.parquet")
    pd.testing.assert_frame_equal(back, frame)
    assert normalised_csv(back) == normalised_csv(frame)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    frame = pd.read_csv(io.StringIO("\n".join([HEADER, *replaced(6, "2020-01-07,10,9,9,10.5,1")])))
    frame.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(DataError, match=r"^bad\.parquet row 7: high 9\.0 is below") as caught:
        read_bars(tmp_path / "bad.parquet", name="bad.parquet")
    assert caught.value.details == {"file": "bad.parquet", "rule": "high_ge_open_close", "row": 7}


def test_reading_orcl_is_fast() -> None:
    read_bars(SHARED_DATA / "orcl-1995-2014.txt")  # warm imports and caches
    started = time.perf_counter()
    read_bars(SHARED_DATA / "orcl-1995-2014.txt")
    # ~10 ms on a developer machine; the bound leaves room for a busy CI runner.
    assert time.perf_counter() - started < 0.25


# --- resolution for a run -------------------------------------------------------------------


def test_file_cut_to_range(catalog_dir: Path) -> None:
    data = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31"), catalog_dir)
    assert (data.source, data.bars, data.first, data.last) == (
        "file",
        252,
        "2010-01-04T00:00:00",
        "2010-12-31T00:00:00",
    )
    assert data.path == catalog_dir / "ORCL" / "D1.csv" and data.name == "ORCL/D1.csv"
    assert data.warnings == []
    assert data.info().model_dump() == {
        "source": "file", "bars": 252, "first": data.first, "last": data.last,
        "sha256": data.sha256, "path": "ORCL/D1.csv", "extra_symbols": [], "benchmark": None,
    }  # fmt: skip


def test_end_date_includes_the_whole_day_for_intraday(catalog_dir: Path) -> None:
    data = prepare(config("IDX", "M5", "2006-01-02", "2006-01-03"), catalog_dir)
    assert data.first == "2006-01-02T09:05:00" and data.last == "2006-01-03T17:30:00"


def test_symbol_and_file_names_ignore_case(catalog_dir: Path) -> None:
    (catalog_dir / "ORCL" / "D1.csv").rename(catalog_dir / "ORCL" / "d1.CSV")
    data = prepare(config("orcl", "D1", "2010-01-01", "2010-12-31", "file"), catalog_dir)
    assert data.bars == 252


def test_csv_wins_over_parquet(catalog_dir: Path) -> None:
    frame, _ = read_bars(catalog_dir / "ORCL" / "D1.csv")
    frame.iloc[:-1].to_parquet(catalog_dir / "ORCL" / "D1.parquet")
    data = prepare(config("ORCL", "D1", "2014-01-01", "2014-12-31"), catalog_dir)
    assert data.path == catalog_dir / "ORCL" / "D1.csv" and data.last == "2014-12-31T00:00:00"
    (catalog_dir / "ORCL" / "D1.csv").unlink()
    data = prepare(config("ORCL", "D1", "2014-01-01", "2014-12-31"), catalog_dir)
    assert data.name == "ORCL/D1.parquet" and data.last == "2014-12-30T00:00:00"


def test_no_data_in_range(catalog_dir: Path) -> None:
    with pytest.raises(DataError) as caught:
        prepare(config("ORCL", "D1", "2020-01-01", "2020-12-31"), catalog_dir)
    assert str(caught.value) == (
        "no data for ORCL D1 between 2020-01-01 and 2020-12-31 "
        "(ORCL/D1.csv holds 1995-01-03T00:00:00 to 2014-12-31T00:00:00)"
    )
    assert caught.value.details["rule"] == "no_data"


def test_too_few_bars(catalog_dir: Path) -> None:
    with pytest.raises(DataError, match=rf"only 5 bars for ORCL D1 .* at least {MIN_BARS}"):
        prepare(config("ORCL", "D1", "2010-01-04", "2010-01-08"), catalog_dir)


def test_a_malformed_file_fails_the_run_even_on_auto(catalog_dir: Path) -> None:
    csv(catalog_dir / "ORCL", replaced(3, "2020-01-04,10,9,9,10.5,1"), name="D1.csv")
    with pytest.raises(DataError, match=r"^ORCL/D1\.csv line 5 \(data row 4\): high 9\.0"):
        prepare(config("ORCL", "D1", "2020-01-01", "2020-12-31"), catalog_dir)


def test_file_source_without_a_file(catalog_dir: Path) -> None:
    with pytest.raises(DataError, match="^no data for MSFT D1: the catalog has no MSFT/D1"):
        prepare(config("MSFT", "D1", "2010-01-01", "2010-12-31", "file"), catalog_dir)
    with pytest.raises(DataError, match="no data for ORCL H1"):  # D1 cannot make H1
        prepare(config("ORCL", "H1", "2010-01-01", "2010-12-31", "file"), catalog_dir)


def test_auto_without_a_file_is_synthetic_with_a_warning(catalog_dir: Path) -> None:
    data = prepare(config("MSFT", "D1", "2010-01-01", "2010-12-31"), catalog_dir)
    assert (data.source, data.path, data.bars) == ("synthetic", None, 261)
    assert len(data.warnings) == 1 and "synthetic" in data.warnings[0]
    assert data.info().source == "synthetic"


def test_synthetic_source_ignores_files(catalog_dir: Path) -> None:
    data = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31", "synthetic"), catalog_dir)
    assert data.source == "synthetic" and "data_source=synthetic" in data.warnings[0]


def test_missing_data_dir_is_an_empty_catalog(tmp_path: Path) -> None:
    data = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31"), tmp_path / "none")
    assert data.source == "synthetic"


# --- resampling ------------------------------------------------------------------------------


def test_five_minute_bars_resampled_to_h1_match_pandas(catalog_dir: Path) -> None:
    data = prepare(config("IDX", "H1", "2006-01-01", "2006-12-31", "file"), catalog_dir)
    raw = pd.read_csv(SHARED_DATA / "2006-min-005.txt")
    raw.index = pd.to_datetime(raw["Date"] + " " + raw["Time"])
    raw.columns = raw.columns.str.lower()
    expected = raw.resample("1h", closed="left", label="left").agg(AGG).dropna()
    assert data.bars == len(expected) == 189
    assert data.warnings == ["IDX H1 resampled from M5 (IDX/M5.csv)"]
    assert (data.source, data.path) == ("file", catalog_dir / "IDX" / "M5.csv")
    pd.testing.assert_frame_equal(
        data.frame, expected.astype("float64"), check_names=False, check_index_type=False
    )


def test_daily_and_weekly_resampling_match_pandas(catalog_dir: Path) -> None:
    daily = prepare(config("IDX", "D1", "2006-01-01", "2006-01-31"), catalog_dir)
    raw = pd.read_csv(SHARED_DATA / "2006-min-005.txt")
    raw.index = pd.to_datetime(raw["Date"])
    raw.columns = raw.columns.str.lower()
    assert daily.bars == raw.index.nunique()
    assert daily.frame["close"].tolist() == raw.groupby(level=0)["close"].last().tolist()
    weekly = prepare(config("ORCL", "W1", "2010-01-01", "2010-12-31"), catalog_dir)
    orcl = pd.read_csv(SHARED_DATA / "orcl-1995-2014.txt", index_col="Date", parse_dates=True)
    orcl.columns = orcl.columns.str.lower()
    expected = orcl.resample("W-MON", closed="left", label="left").agg(AGG).dropna()
    expected = expected.loc["2010-01-01":"2010-12-31"]
    assert weekly.first == "2010-01-04T00:00:00"  # Mondays label the week
    assert weekly.frame["close"].tolist() == expected["close"].tolist()
    assert weekly.frame["volume"].tolist() == expected["volume"].tolist()


def test_monthly_bars_are_whole_months_inside_the_range(catalog_dir: Path) -> None:
    data = prepare(config("ORCL", "MN1", "2009-12-15", "2010-12-15"), catalog_dir)
    assert data.first == "2010-01-01T00:00:00" and data.last == "2010-12-01T00:00:00"
    orcl, _ = read_bars(catalog_dir / "ORCL" / "D1.csv")
    assert data.frame["close"].iloc[-1] == orcl.loc["2010-12", "close"].iloc[-1]  # all December


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("M5", "H1", True), ("M20", "H1", True), ("H3", "H4", False), ("M2", "M3", False),
        ("H1", "D1", True), ("D1", "W1", True), ("D1", "MN1", True), ("W1", "MN1", False),
        ("D1", "D1", False), ("H1", "M30", False),
    ],
)  # fmt: skip
def test_can_resample(source: str, target: str, expected: bool) -> None:
    assert can_resample(Timeframe[source], Timeframe[target]) is expected


def test_the_coarsest_usable_file_is_resampled(catalog_dir: Path) -> None:
    frame, _ = read_bars(catalog_dir / "IDX" / "M5.csv")
    (catalog_dir / "IDX" / "M15.csv").write_bytes(
        normalised_csv(frames.resample(frame, Timeframe.M15))
    )
    data = prepare(config("IDX", "H1", "2006-01-01", "2006-01-31"), catalog_dir)
    assert data.warnings == ["IDX H1 resampled from M15 (IDX/M15.csv)"]
    assert data.bars == 189


# --- the normalised CSV and imports ------------------------------------------------------


def test_csv_bytes_are_the_protocol_form_and_round_trip(catalog_dir: Path) -> None:
    data = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31"), catalog_dir)
    lines = data.csv_bytes.decode().splitlines()
    assert lines[0] == "datetime,open,high,low,close,volume"
    assert lines[1] == "2010-01-04T00:00:00,24.66,25.190001,24.66,24.85,26795000.0"
    assert data.sha256 == hashlib.sha256(data.csv_bytes).hexdigest()
    back = pd.read_csv(io.BytesIO(data.csv_bytes), index_col="datetime", parse_dates=True)
    pd.testing.assert_frame_equal(back, data.frame, check_index_type=False)


def test_csv_bytes_and_hash_are_stable(catalog_dir: Path) -> None:
    first = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31"), catalog_dir)
    again = prepare(config("ORCL", "D1", "2010-01-01", "2010-12-31", "file"), catalog_dir)
    assert first.csv_bytes == again.csv_bytes
    # Pinned: the hash is the cache key, so a change of format must be deliberate.
    assert first.sha256 == "8f76afb03f42ece878d436869827cad2e2a55608be14f80b22d505cfff52786d"


def test_import_file_writes_the_normalised_csv(tmp_path: Path) -> None:
    root = tmp_path / "data"
    src = SHARED_DATA / "2006-min-005.txt"
    path = import_file(src, "IDX", Timeframe.M5, root)
    assert path == root / "IDX" / "M5.csv"
    frame, _ = read_bars(src)
    assert path.read_bytes() == normalised_csv(frame)
    assert path.read_text().startswith("datetime,open,high,low,close,volume\n2006-01-02T09:05:00,")
    assert [p.name for p in path.parent.iterdir()] == ["M5.csv"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644
    imported = prepare(config("IDX", "M5", "2006-01-01", "2006-12-31"), root)
    copied = tmp_path / "copy" / "IDX"
    copied.mkdir(parents=True)
    shutil.copy(src, copied / "M5.csv")
    from_copy = prepare(config("IDX", "M5", "2006-01-01", "2006-12-31"), copied.parent)
    assert imported.sha256 == from_copy.sha256  # an imported file reads back identically
    assert import_file(src, "IDX", Timeframe.M5, root) == path  # replacing is fine


def test_import_refuses_bad_files_and_symbols(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DataError, match="high_ge|high 10.4"):
        import_file(
            csv(tmp_path, replaced(1, "2020-01-02,10,10.4,9,10.5,1")), "X", Timeframe.D1, root
        )
    with pytest.raises(DataError, match=f"at least {MIN_BARS}"):
        import_file(csv(tmp_path, GOOD[:3], name="short.csv"), "X", Timeframe.D1, root)
    with pytest.raises(InvalidRequest, match="symbol"):
        import_file(csv(tmp_path, GOOD, name="ok.csv"), "../etc", Timeframe.D1, root)
    assert not root.exists()


def test_frames_and_dates_cut_inclusively() -> None:
    frame, _ = read_bars(SHARED_DATA / "2006-day-001.txt")
    window = frames.cut(frame, date(2006, 1, 3), date(2006, 1, 5))
    assert [d.day for d in window.index] == [3, 4, 5]
    assert len(frames.cut(frame, date(1, 1, 1), date(9999, 12, 31))) == len(frame)


def test_extreme_config_dates_are_data_errors_not_crashes(catalog_dir: Path) -> None:
    whole = prepare(config("ORCL", "W1", "0001-01-01", "9999-12-31", "file"), catalog_dir)
    assert whole.first == "1995-01-02T00:00:00" and whole.last == "2014-12-29T00:00:00"
    with pytest.raises(DataError, match="synthetic data covers"):
        prepare(config("ORCL", "D1", "0001-01-01", "9999-12-31", "synthetic"), catalog_dir)


# --- naming the data without reading it -----------------------------------------------------


def test_the_data_identity_is_what_a_run_reads(catalog_dir: Path) -> None:
    daily = config("ORCL", "D1", "2005-01-01", "2006-12-31")
    identity = catalog.data_identity(daily, catalog_dir)
    assert identity.startswith("file:") and identity.endswith(":D1")
    assert prepare(daily, catalog_dir).identity == identity
    weekly = config("ORCL", "W1", "2005-01-01", "2006-12-31")  # resampled from D1
    assert catalog.data_identity(weekly, catalog_dir).endswith(":D1")
    assert prepare(weekly, catalog_dir).identity == catalog.data_identity(weekly, catalog_dir)


def test_a_replaced_file_gets_another_identity(catalog_dir: Path) -> None:
    daily = config("ORCL", "D1", "2005-01-01", "2006-12-31")
    before = catalog.data_identity(daily, catalog_dir)
    path = catalog_dir / "ORCL" / "D1.csv"
    replacement = path.with_suffix(".new")
    replacement.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    replacement.replace(path)  # as `data import` does: a new file renamed into place
    assert catalog.data_identity(daily, catalog_dir) != before
    assert prepare(daily, catalog_dir).identity != before


def test_synthetic_data_is_named_without_generating_it(
    catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("the identity generated bars")

    monkeypatch.setattr(catalog, "synthetic_bars", never)
    huge = config("SYNTH", "M1", "2000-01-01", "2019-12-31", source="synthetic")
    assert catalog.data_identity(huge, catalog_dir) == catalog.SYNTHETIC_IDENTITY
    unknown = config("NOPE", "D1", "2000-01-01", "2019-12-31")  # auto: falls back to synthetic
    assert catalog.data_identity(unknown, catalog_dir) == catalog.SYNTHETIC_IDENTITY
    strict = config("NOPE", "D1", "2000-01-01", "2019-12-31", source="file")
    assert catalog.data_identity(strict, catalog_dir) == "none"

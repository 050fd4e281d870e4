"""One bars file, read and validated: the first thing the host does with market data.

Trusted side only (data/catalog.py calls it for every file a run or an import reads).

Reading a file (CSV or Parquet, at most MAX_FILE_BYTES):

- Column names in any letter case, surrounding spaces and MT5-style `<...>` ignored.
- Time: a `datetime` column, or a `date` column (date or date and time), or `date` plus
  `time`. ISO 8601 is parsed strictly; any other format is inferred by pandas from the first
  value (month first when ambiguous, so prefer ISO dates). Time zones are dropped, keeping
  the wall-clock time. Timestamps are a bar's start, in whole seconds.
- `open`, `high`, `low`, `close` are required. `volume` is required by the contract but a
  file without it is accepted with volume 0 and a warning. An adjusted close (`Adj Close`,
  `adj_close` or `adjclose`, as Yahoo's files have) is kept as `adj_close`, validated as the
  prices are. Other columns are ignored.
- CSV: the separator is `,`, `;` or a tab, whichever the header line has most of; UTF-8,
  with or without a BOM. A line whose used cells are all empty (a blank line) is skipped.

Validation: each failure is a `DataError` whose message names the file, the place and the
rule, e.g. `ORCL/D1.csv line 13 (data row 12): high 1.5 is below max(open, close) = 2.0`.
Places: in a CSV, `line N` is the physical line (the header is line 1) and `data row M`
the 1-based data row (header and blank lines not counted); in a Parquet file, `row M` is
the 1-based row. `details` carry file, row, line (CSV only) and rule. Rules, in the order
checked: required columns present; at least one data row; timestamps parse and are whole
seconds; OHLC(V) and adj_close present, numeric and finite; prices and adj_close > 0;
high >= max(open, close); low <= min(open, close); volume >= 0; timestamps strictly
ascending (sorted, unique).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from backtest_sandbox.domain.errors import DataError

MAX_FILE_BYTES = 512 * 1024 * 1024  # refuse to load anything bigger into the host's memory
COLUMNS = ("open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
ADJ_CLOSE = "adj_close"  # optional: the adjusted close of Yahoo-style files
# How an adjusted close column may be named, as `_pick_columns` sees names (lower case).
ADJ_CLOSE_NAMES = ("adj close", "adj_close", "adjclose")
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
_Column = FloatArray | pd.Series | pd.DatetimeIndex  # where a message's cell values come from


def iso(stamp: pd.Timestamp) -> str:
    """A bar's timestamp as the catalog and its messages write it: YYYY-MM-DDTHH:MM:SS."""
    return stamp.strftime(ISO_SECONDS)


@dataclass(frozen=True)
class _Table:
    """A file's rows as read, before validation; `lines` maps rows to CSV lines."""

    rows: pd.DataFrame  # canonical column names; timestamp columns as read
    name: str
    lines: npt.NDArray[np.int64] | None  # None for Parquet

    def where(self, position: int) -> tuple[str, dict[str, int]]:
        row = position + 1
        if self.lines is None:
            return f"row {row}", {"row": row}
        line = int(self.lines[position])
        return f"line {line} (data row {row})", {"row": row, "line": line}


# --- reading ----------------------------------------------------------------------------


def read_bars(path: Path, *, name: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate a whole CSV or Parquet bar file.

    Returns the bars (indexed by `datetime`, float columns open high low close volume, and
    adj_close when the file has an adjusted close) and warnings (e.g. a missing volume
    column). `name` is how messages call the file.

    Raises:
        DataError: the file is missing, too big, unreadable, or breaks a rule (the message
            names the file, the line or row, and the rule).
    """
    name = name or str(path)
    _check_size(path, name)
    is_parquet = path.suffix.lower() == ".parquet"
    return _validate(_read_parquet(path, name) if is_parquet else _read_csv(path, name))


def _check_size(path: Path, name: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{name}: cannot open: {e.strerror}", file=name, rule="readable") from e
    if not path.is_file():
        raise DataError(f"{name}: not a regular file", file=name, rule="readable")
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{name}: {size:,} bytes; data files of at most {MAX_FILE_BYTES:,} bytes are read",
            file=name,
            rule="max_file_bytes",
        )


def _sniff_separator(path: Path) -> str:
    with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline(65536)
    return max((",", ";", "\t"), key=header.count)


def _read_csv(path: Path, name: str) -> _Table:
    try:
        sep = _sniff_separator(path)
        header = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8-sig")
        columns = _pick_columns([str(c) for c in header.columns], name)
        text_columns = {columns[c]: str for c in ("datetime", "date", "time") if c in columns}
        rows = pd.read_csv(
            path,
            sep=sep,
            usecols=list(columns.values()),
            dtype=text_columns,
            encoding="utf-8-sig",
            index_col=False,
            skip_blank_lines=False,  # keep blank lines as rows, so row i is line i + 2
        )
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{name}: cannot read as CSV: {e}", file=name, rule="readable") from e
    rows = rows.rename(columns={actual: key for key, actual in columns.items()})
    lines = np.arange(2, len(rows) + 2, dtype=np.int64)
    blank = rows.isna().all(axis=1).to_numpy()
    if blank.any():
        rows, lines = rows.loc[~blank].reset_index(drop=True), lines[~blank]
    return _Table(rows, name, lines)


def _read_parquet(path: Path, name: str) -> _Table:
    try:
        rows = pd.read_parquet(path)
    except (ValueError, OSError, NotImplementedError) as e:
        raise DataError(f"{name}: cannot read as Parquet: {e}", file=name, rule="readable") from e
    if isinstance(rows.index, pd.DatetimeIndex) or rows.index.name is not None:
        rows = rows.reset_index()  # a frame saved with its datetime index
    columns = _pick_columns([str(c) for c in rows.columns], name)
    rows.columns = pd.Index([str(c) for c in rows.columns])
    rows = rows[list(columns.values())].rename(
        columns={actual: key for key, actual in columns.items()}
    )
    return _Table(rows.reset_index(drop=True), name, None)


def _pick_columns(names: list[str], name: str) -> dict[str, str]:
    """Canonical column -> the file's column, for the columns this catalog uses.

    Raises:
        DataError: a required column is missing, or two columns differ only in case.
    """
    found: dict[str, list[str]] = {}
    for actual in names:
        found.setdefault(actual.strip().strip("<>").strip().lower(), []).append(actual)
    time_keys = ["datetime"] if "datetime" in found else ["date", "time"]
    wanted = [k for k in (*time_keys, *COLUMNS) if k in found]
    for key in wanted:
        if len(found[key]) > 1:
            raise DataError(
                f"{name}: columns {found[key]} are the same name in different case",
                file=name,
                rule="columns",
            )
    missing = [k for k in PRICES if k not in found]
    if "datetime" not in found and "date" not in found:
        missing.insert(0, "date (or datetime)")
    if missing:
        raise DataError(
            f"{name}: missing column(s) {', '.join(missing)}; the header has {names}; "
            "needed: date (or datetime, or date and time), open, high, low, close, volume, "
            "in any letter case",
            file=name,
            rule="columns",
        )
    picked = {key: found[key][0] for key in wanted}
    adjusted = [actual for alias in ADJ_CLOSE_NAMES for actual in found.get(alias, [])]
    if len(adjusted) > 1:
        raise DataError(
            f"{name}: columns {adjusted} are each an adjusted close; keep one",
            file=name,
            rule="columns",
        )
    if adjusted:
        picked[ADJ_CLOSE] = adjusted[0]
    return picked


# --- validation ---------------------------------------------------------------------------


def _value(values: _Column, position: int) -> object:
    """One cell, printable: a Python float (repr round-trips), an ISO timestamp, or the text."""
    if isinstance(values, pd.DatetimeIndex):
        return iso(values[position])
    if isinstance(values, pd.Series):
        return values.iloc[position]
    return values[position].item()


def _fail(table: _Table, bad: BoolArray, rule: str, template: str, **cells: _Column) -> None:
    """Raise for the first row where `bad` is True; `template` is filled with its cells.

    Raises:
        DataError: when any row is bad, naming the file, the line/row and the rule.
    """
    positions = np.flatnonzero(bad)
    if positions.size == 0:
        return
    first = int(positions[0])
    where, place = table.where(first)
    text = template.format(**{key: _value(values, first) for key, values in cells.items()})
    more = f" ({positions.size} rows break this rule)" if positions.size > 1 else ""
    raise DataError(f"{table.name} {where}: {text}{more}", file=table.name, rule=rule, **place)


def _parse_times(text: pd.Series, raw: pd.Series, name: str) -> pd.Series:
    """Strict ISO 8601 first; else let pandas infer the format from the first value.

    Raises:
        DataError: pandas refuses the column as a whole (e.g. mixed time zones).
    """
    try:
        with warnings.catch_warnings():
            # pandas warns when it falls back to parsing element by element.
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
            if parsed.isna().all() and raw.notna().any():
                parsed = pd.to_datetime(text, errors="coerce")
        if parsed.dt.tz is not None:
            parsed = parsed.dt.tz_localize(None)  # keep the wall-clock time the file shows
        return parsed
    except (ValueError, TypeError) as e:
        raise DataError(f"{name}: cannot parse timestamps: {e}", file=name, rule="timestamp") from e


def _timestamps(table: _Table) -> pd.DatetimeIndex:
    """Parse the time column(s) into a naive, whole-second, ns DatetimeIndex.

    Raises:
        DataError: an empty or unparsable timestamp, a fraction of a second, mixed zones.
    """
    rows = table.rows
    raw = rows["datetime"] if "datetime" in rows else rows["date"]
    text = raw if raw.dtype.kind == "M" else raw.astype("str")
    if "time" in rows and "datetime" not in rows:
        text = raw.astype("str") + " " + rows["time"].astype("str")
        raw = raw.where(rows["time"].notna())  # either part empty is an empty timestamp
    parsed = _parse_times(text, raw, table.name)
    _fail(table, raw.isna().to_numpy(), "timestamp", "the timestamp is empty")
    _fail(table, parsed.isna().to_numpy(), "timestamp", "cannot parse timestamp {t!r}", t=text)
    try:
        index = pd.DatetimeIndex(parsed).as_unit("ns")
    except (ValueError, OverflowError) as e:
        raise DataError(
            f"{table.name}: timestamp out of range: {e}", file=table.name, rule="timestamp"
        ) from e
    _fail(
        table,
        np.asarray(index != index.floor("s")),
        "timestamp",
        "timestamp {t} has a fraction of a second; whole seconds only",
        t=pd.Series(index.astype(str)),
    )
    return index.rename("datetime")


def _number_column(table: _Table, column: str) -> FloatArray:
    """A column as float64.

    Raises:
        DataError: a cell is empty, not a number, or not finite.
    """
    raw = table.rows[column]
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    _fail(table, raw.isna().to_numpy(), "not_empty", f"{column} is empty or NaN")
    _fail(table, np.isnan(numbers), "numeric", f"{column} is not a number: {{x!r}}", x=raw)
    _fail(table, ~np.isfinite(numbers), "finite", f"{column} is not finite: {{x}}", x=numbers)
    return numbers + 0.0  # turns -0.0 into 0.0, so that the normalised text is canonical


def _check_prices(table: _Table, v: dict[str, FloatArray]) -> None:
    """Raises: DataError: a price <= 0, a high or low inside the body, a negative volume."""
    for column in (*PRICES, ADJ_CLOSE):
        if column in v:  # adj_close is optional
            _fail(
                table, v[column] <= 0, "positive", f"{column} must be > 0, got {{x}}", x=v[column]
            )
    top = np.maximum(v["open"], v["close"])
    bottom = np.minimum(v["open"], v["close"])
    _fail(
        table,
        v["high"] < top,
        "high_ge_open_close",
        "high {h} is below max(open, close) = {t}; need high >= max(open, close)",
        h=v["high"],
        t=top,
    )
    _fail(
        table,
        v["low"] > bottom,
        "low_le_open_close",
        "low {low} is above min(open, close) = {b}; need low <= min(open, close)",
        low=v["low"],
        b=bottom,
    )
    _fail(
        table, v["volume"] < 0, "volume_non_negative", "volume must be >= 0, got {x}", x=v["volume"]
    )


def _check_order(table: _Table, index: pd.DatetimeIndex) -> None:
    """Raises: DataError: a timestamp is not after the one on the previous row."""
    step = np.diff(index.asi8)
    previous = index[np.r_[0, np.arange(len(index) - 1)]]
    _fail(
        table,
        np.r_[False, step < 0],
        "sorted",
        "timestamp {t} is earlier than the previous row's {p}; rows must be sorted ascending",
        t=index,
        p=previous,
    )
    _fail(
        table,
        np.r_[False, step == 0],
        "unique",
        "duplicate timestamp {t} (the previous row has it too); timestamps must be unique",
        t=index,
    )


def _validate(table: _Table) -> tuple[pd.DataFrame, list[str]]:
    """Raises: DataError: the first rule (in the module's order) that a row breaks."""
    if table.rows.empty:
        raise DataError(f"{table.name}: no data rows", file=table.name, rule="not_empty")
    index = _timestamps(table)
    notes: list[str] = []
    values: dict[str, FloatArray] = {}
    for column in COLUMNS:
        if column in table.rows:
            values[column] = _number_column(table, column)
        else:  # only volume can be missing: _pick_columns demands the prices
            values[column] = np.zeros(len(table.rows))
            notes.append(f"{table.name}: no volume column; volume set to 0")
    if ADJ_CLOSE in table.rows:
        values[ADJ_CLOSE] = _number_column(table, ADJ_CLOSE)
    _check_prices(table, values)
    _check_order(table, index)
    return pd.DataFrame(values, index=index), notes

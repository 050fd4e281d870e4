"""The market data catalog: find the bars for a run, and prepare and hash them.

Runs on the host (the trusted side). The sandbox never reads the catalog: it gets the
normalised CSV (`PreparedData.csv_bytes`) as `/job/data.csv` (runner_image/PROTOCOL.md).

Layout: `<data_dir>/<SYMBOL>/<TIMEFRAME name>.csv` or `.parquet`, e.g. `ORCL/D1.csv`. The
symbol directory and the file name are matched exactly first, then ignoring letter case.
When both a `.csv` and a `.parquet` exist, the `.csv` wins (it is what `import_file` writes).

Reading and validating a file (CSV or Parquet): bars_file.py says how, and which rule each
`DataError` names. A run also needs MIN_BARS bars in its date range.

Adjusting (`config.adjust_prices`): each bar is adjusted by its adjusted close exactly as
backtrader's `YahooFinanceCSVData` does with its defaults (`yahoo_adjusted`), before any
resampling; a file without adjusted closes is then a data_error. Without the flag the bars
are as the file has them. Either way `adj_close` stops here: the run's bars, and so the
sandbox's data.csv, have only the six columns of the normalised CSV (frames.py).

Resampling: when a run's timeframe has no file but a finer one does, the coarsest finer file
that builds it exactly is resampled (a warning says so): intraday targets from timeframes
that divide them (H1 from M5, M20 or M30; H4 not from H3), D1 from intraday, W1 from D1 or
intraday, MN1 from D1 or intraday (not W1: weeks straddle months). How the bins are made:
frames.py.

Cutting: bars with start_date <= bar date <= end_date; end_date includes the whole day for
intraday bars. Resampled bins are cut by their label, so a W1 or MN1 bar is complete and
starts inside the range, as a file of that timeframe would be.

Several feeds (`extra_symbols`) and a benchmark: each extra symbol is prepared as the symbol
is (same timeframe, range and data_source rules), then all feeds are cut to the timestamps
they all have; the benchmark is always read from a file (its bars in the range and the last
one before it) and is valued at the run's bars by its last close at or before each
(alignment.py). `prepare` does all of it; `prepare_symbol` is one symbol alone.

What the sandbox gets is the normalised CSV (frames.py); its SHA-256 is the data's content
hash (results and the cache key). A catalog file written by `import_file` is that form, with a
last column `adj_close` when the source had an adjusted close.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from backtest_sandbox.domain.config import SYMBOL_PATTERN, BacktestConfig
from backtest_sandbox.domain.errors import DataError, InvalidRequest
from backtest_sandbox.domain.models import DataInfo, FeedInfo
from backtest_sandbox.domain.timeframes import Timeframe

from . import alignment
from .bars_file import ADJ_CLOSE, PRICES, iso, read_bars
from .frames import (
    YAHOO_PRICE_DECIMALS,
    catalog_csv,
    clamp_day,
    cut,
    normalised_csv,
    resample,
    yahoo_adjusted,
)
from .synthetic import synthetic_bars

log = logging.getLogger(__name__)

MIN_BARS = 10  # fewer bars cannot warm up even a short moving average
SUFFIXES = (".csv", ".parquet")  # in order of preference
ADJUST_FIELD = "config.adjust_prices"
# Resampling reads this far past end_date, so that the last W1/MN1 bin in range is complete.
RESAMPLE_MARGIN = timedelta(days=32)

Source = Literal["file", "synthetic"]


@dataclass(frozen=True)
class PreparedData:
    """The bars for one run, normalised and hashed; what the sandbox gets is `csv_bytes`."""

    symbol: str
    timeframe: Timeframe
    frame: pd.DataFrame  # indexed by `datetime` (bar start); float open high low close volume
    source: Source
    path: Path | None  # the file read (the finer one when resampled); None when synthetic
    bars: int
    first: str  # YYYY-MM-DDTHH:MM:SS of the first bar
    last: str
    csv_bytes: bytes
    sha256: str  # hex SHA-256 of csv_bytes: the content hash
    warnings: list[str] = field(default_factory=list)
    name: str | None = None  # the file relative to the catalog, as messages name it
    identity: str = ""  # what `data_identity` said of the source these bars were read from
    # The run's other feeds (config.extra_symbols, in order), on the same timestamps as these.
    extras: tuple[PreparedData, ...] = ()
    # config.benchmark's own bars in the range, and its close at each of this feed's bars.
    benchmark: PreparedData | None = None
    benchmark_closes: tuple[float, ...] = ()

    @property
    def feeds(self) -> tuple[PreparedData, ...]:
        """Every feed of the run in order: this one (the symbol), then the extra symbols."""
        return (self, *self.extras)

    def info(self) -> DataInfo:
        """The `data` block of a result (docs/interface.md section 4); names no host path."""
        return DataInfo(
            source=self.source,
            bars=self.bars,
            first=self.first,
            last=self.last,
            sha256=self.sha256,
            path=self.name,
            extra_symbols=[extra.feed_info() for extra in self.extras],
            benchmark=None if self.benchmark is None else self.benchmark.feed_info(),
        )

    def feed_info(self) -> FeedInfo:
        return FeedInfo(
            symbol=self.symbol, source=self.source, bars=self.bars, sha256=self.sha256,
            path=self.name,
        )  # fmt: skip


# --- locating ------------------------------------------------------------------------------


def _symbol_dir(data_dir: Path, symbol: str) -> Path | None:
    """The symbol's directory: the exact name, else the one name equal ignoring case.

    Raises:
        DataError: several directories match ignoring case.
    """
    exact = data_dir / symbol
    if exact.is_dir():
        return exact
    try:
        matches = [p for p in data_dir.iterdir() if p.name.lower() == symbol.lower()]
    except OSError:
        return None
    matches = [p for p in matches if p.is_dir()]
    if len(matches) > 1:
        names = sorted(p.name for p in matches)
        raise DataError(
            f"symbol {symbol!r} matches several catalog directories: {names}",
            symbol=symbol,
            rule="catalog",
        )
    return matches[0] if matches else None


def _timeframe_files(symbol_dir: Path) -> dict[str, Path]:
    """Lower-case file name -> path; an exactly spelt name wins over another case."""
    files: dict[str, Path] = {}
    try:
        entries = sorted(symbol_dir.iterdir())
    except OSError:
        return files
    canonical = {f"{tf.name}{suffix}" for tf in Timeframe for suffix in SUFFIXES}
    for entry in entries:
        key = entry.name.lower()
        if entry.is_file() and (key not in files or entry.name in canonical):
            files[key] = entry
    return files


def find_file(data_dir: Path, symbol: str, timeframe: Timeframe) -> Path | None:
    """The catalog file for exactly this symbol and timeframe, if there is one.

    Raises:
        DataError: the symbol names several directories (differing only in case).
    """
    symbol_dir = _symbol_dir(data_dir, symbol)
    if symbol_dir is None:
        return None
    files = _timeframe_files(symbol_dir)
    for suffix in SUFFIXES:
        path = files.get(f"{timeframe.name.lower()}{suffix}")
        if path is not None:
            return path
    return None


def can_resample(source: Timeframe, target: Timeframe) -> bool:
    """Whether bars of `target` are built exactly from bars of `source`."""
    if source.minutes >= target.minutes:
        return False
    if target.minutes < 1440:
        return target.minutes % source.minutes == 0
    return not (target is Timeframe.MN1 and source is Timeframe.W1)


def locate(data_dir: Path, symbol: str, timeframe: Timeframe) -> tuple[Path, Timeframe] | None:
    """The file to read for a run, and its timeframe: the exact one, else the coarsest finer
    one that builds it (see the module docstring), else None.

    Raises:
        DataError: the symbol names several directories (differing only in case).
    """
    exact = find_file(data_dir, symbol, timeframe)
    if exact is not None:
        return exact, timeframe
    for source in sorted(Timeframe, key=lambda t: t.minutes, reverse=True):
        if can_resample(source, timeframe):
            path = find_file(data_dir, symbol, source)
            if path is not None:
                return path, source
    return None


# --- the bars a run sees -----------------------------------------------------------------


def _check_adjustable(frame: pd.DataFrame, config: BacktestConfig, name: str) -> None:
    """Raises: DataError: adjust_prices is set and the file has no adjusted close."""
    if config.adjust_prices and ADJ_CLOSE not in frame:
        raise DataError(
            f"{ADJUST_FIELD}: {name} has no adjusted close (a column Adj Close, adj_close or "
            "adjclose; a file imported before adjusted closes were kept needs importing "
            "again); import one that has it, or set adjust_prices to false",
            field=ADJUST_FIELD,
            rule="adj_close_required",
            file=name,
            symbol=config.symbol,
        )


def _as_run_sees(frame: pd.DataFrame, config: BacktestConfig, name: str) -> pd.DataFrame:
    """The bars a run uses: adjusted when `config.adjust_prices` (checked adjustable), else
    as read; the six normalised columns either way.

    Raises:
        DataError: an adjusted price rounds to 0 (backtrader would trade at 0).
    """
    if not config.adjust_prices:
        return frame.drop(columns=ADJ_CLOSE) if ADJ_CLOSE in frame else frame
    adjusted = yahoo_adjusted(frame)
    zero = (adjusted[list(PRICES)] <= 0).any(axis=1).to_numpy()
    if zero.any():
        first = iso(pd.DatetimeIndex(adjusted.index)[int(np.flatnonzero(zero)[0])])
        raise DataError(
            f"{ADJUST_FIELD}: {name} bar {first}: a price adjusted by its adjusted close and "
            f"rounded to {YAHOO_PRICE_DECIMALS} decimals is 0 ({int(zero.sum())} bars); "
            "set adjust_prices to false for this file",
            field=ADJUST_FIELD,
            rule="positive_after_adjustment",
            file=name,
            symbol=config.symbol,
        )
    return adjusted


# --- what the catalog holds ---------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """One file of the catalog as `list_data` shows it."""

    symbol: str
    timeframe: str
    first: str
    last: str
    bars: int


def datasets(data_dir: Path, known: dict[str, Dataset | None]) -> list[Dataset]:
    """Every valid bar file of the catalog, by symbol and timeframe.

    `known` maps a file's identity to what it held (None: invalid), and is updated: a file is
    read only when it is new or changed, so listing costs a few stats once warm. Invalid files
    are logged and left out.
    """
    found: list[Dataset] = []
    try:
        symbol_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir())
    except OSError:
        return found
    for symbol_dir in symbol_dirs:
        for name, path in sorted(_timeframe_files(symbol_dir).items()):
            stem = name.rsplit(".", 1)[0].upper()
            if stem not in Timeframe.__members__:
                continue
            try:
                identity = _file_identity(path)
            except DataError:
                continue
            if identity not in known:
                known[identity] = _describe(path, symbol_dir.name, stem, data_dir)
            if known[identity] is not None:
                found.append(known[identity])  # type: ignore[arg-type]
    return found


def _describe(path: Path, symbol: str, timeframe: str, data_dir: Path) -> Dataset | None:
    try:
        frame, _ = read_bars(path, name=_relative(path, data_dir))
    except DataError as e:
        log.warning("catalog file left out of the listing: %s", e)
        return None
    index = pd.DatetimeIndex(frame.index)
    return Dataset(symbol, timeframe, iso(index[0]), iso(index[-1]), len(frame))


# --- runs and imports ----------------------------------------------------------------------


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return path.name


def _enough(
    frame: pd.DataFrame, config: BacktestConfig, name: str | None, holds: str | None = None
) -> None:
    """Raises: DataError: no bars, or fewer than MIN_BARS, in the config's range."""
    what = f"{config.symbol} {config.timeframe.name}"
    span = f"between {config.start_date} and {config.end_date}"
    source = f" ({holds})" if holds else ""
    details = {
        "symbol": config.symbol,
        "timeframe": config.timeframe.name,
        "file": name,
        "start_date": str(config.start_date),
        "end_date": str(config.end_date),
    }
    if frame.empty:
        raise DataError(f"no data for {what} {span}{source}", rule="no_data", **details)
    if len(frame) < MIN_BARS:
        raise DataError(
            f"only {len(frame)} bars for {what} {span}{source}; at least {MIN_BARS} are needed",
            rule="min_bars",
            bars=len(frame),
            **details,
        )


def _prepared(
    config: BacktestConfig,
    frame: pd.DataFrame,
    source: Source,
    path: Path | None,
    name: str | None,
    notes: list[str],
) -> PreparedData:
    empty = PreparedData(
        symbol=config.symbol,
        timeframe=config.timeframe,
        frame=frame,
        source=source,
        path=path,
        bars=0,
        first="",
        last="",
        csv_bytes=b"",
        sha256="",
        warnings=notes,
        name=name,
    )
    return _with_frame(empty, frame)


def _with_frame(data: PreparedData, frame: pd.DataFrame) -> PreparedData:
    """`data` holding the bars of `frame` (non-empty): its CSV, hash, count, first and last."""
    csv_bytes = normalised_csv(frame)
    index = pd.DatetimeIndex(frame.index)
    return replace(
        data,
        frame=frame,
        bars=len(frame),
        first=iso(index[0]),
        last=iso(index[-1]),
        csv_bytes=csv_bytes,
        sha256=hashlib.sha256(csv_bytes).hexdigest(),
    )


def _from_file(
    config: BacktestConfig,
    data_dir: Path,
    path: Path,
    source_timeframe: Timeframe,
    *,
    lead: int = 0,
) -> PreparedData:
    """The file's bars in the config's range (resampled when the file is finer), and the
    `lead` bars before the range when there are (a benchmark's last close before it)."""
    name = _relative(path, data_dir)
    identity = _file_identity(path)
    whole, notes = read_bars(path, name=name)
    if _file_identity(path) != identity:
        # Replaced while we read it: the bars may be either file's, so name neither.
        raise DataError(f"{name} changed while it was read; run again", file=name, rule="changed")
    _check_adjustable(whole, config, name)
    frame = whole
    resampled = source_timeframe is not config.timeframe
    if resampled:
        # A lead bar is a whole bin before the range: start the window a bin earlier.
        first = clamp_day(config.start_date) - (RESAMPLE_MARGIN if lead else timedelta(0))
        window = cut(whole, first, clamp_day(config.end_date) + RESAMPLE_MARGIN)
        # Adjusted before resampling, bar by bar, as a resampled Yahoo feed is.
        frame = resample(_as_run_sees(window, config, name), config.timeframe)
        notes.append(
            f"{config.symbol} {config.timeframe.name} resampled from "
            f"{source_timeframe.name} ({name})"
        )
    index = pd.DatetimeIndex(whole.index)
    in_range = cut(frame, config.start_date, config.end_date)
    _enough(in_range, config, name, f"{name} holds {iso(index[0])} to {iso(index[-1])}")
    if lead:
        in_range = cut(frame, config.start_date, config.end_date, lead=lead)
    if not resampled:  # adjusting bar by bar commutes with the cut: adjust only these
        in_range = _as_run_sees(in_range, config, name)
    prepared = _prepared(config, in_range, "file", path, name, notes)
    return replace(prepared, identity=f"{identity}:{source_timeframe.name}")


def _synthetic(config: BacktestConfig, note: str) -> PreparedData:
    frame = synthetic_bars(config.symbol, config.timeframe, config.start_date, config.end_date)
    _enough(frame, config, None)
    notes = [note]
    if config.adjust_prices:
        # Not an error: a random walk has no dividends or splits to adjust for, and `auto`
        # falling back to synthetic bars must not fail on the flag alone.
        notes.append(
            f"{ADJUST_FIELD} ignored for {config.symbol}: synthetic bars have no adjusted "
            "close; they are not adjusted"
        )
    prepared = _prepared(config, frame, "synthetic", None, None, notes)
    return replace(prepared, identity=SYNTHETIC_IDENTITY)


# Synthetic bars are a pure function of the config (symbol, timeframe, range): this names the
# generator's version; change it whenever synthetic.py would give other bars.
SYNTHETIC_IDENTITY = "synthetic:v1"


def _file_identity(path: Path) -> str:
    """A file's identity without reading it: replaced or rewritten, it changes."""
    try:
        info = path.stat()
    except OSError as e:
        raise DataError(f"{path.name}: {e.strerror or e}", rule="unreadable") from None
    return f"file:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def data_identity(config: BacktestConfig, data_dir: Path) -> str:
    """What `prepare` would read for `config`, named without reading or generating any bars.

    Cheap (a few directory entries and one stat per feed), so a submission can compute its
    cache key before any data work; `PreparedData.identity` is the same string for the bars a
    run actually used, so the result is cached under the data it came from. It names every
    feed's source: the symbol's, each extra symbol's and the benchmark's.

    Raises:
        DataError: the catalog is ambiguous (several directories for a symbol), or a file
            cannot be looked at.
    """
    parts = [_symbol_identity(config, data_dir)]
    for symbol in config.extra_symbols:
        parts.append(f"{symbol}={_symbol_identity(_as_symbol(config, symbol), data_dir)}")
    if config.benchmark is not None:
        located = locate(data_dir, config.benchmark, config.timeframe)
        identity = "none" if located is None else _located_identity(*located)
        parts.append(f"benchmark {config.benchmark}={identity}")
    return "|".join(parts)  # one symbol and no benchmark: its identity alone, as before


def _located_identity(path: Path, source_timeframe: Timeframe) -> str:
    return f"{_file_identity(path)}:{source_timeframe.name}"


def _symbol_identity(config: BacktestConfig, data_dir: Path) -> str:
    """`data_identity` of `config.symbol` alone."""
    if config.data_source == "synthetic":
        return SYNTHETIC_IDENTITY
    located = locate(data_dir, config.symbol, config.timeframe)
    if located is None:
        # `file` will fail with data_error; `auto` falls back to synthetic bars.
        return "none" if config.data_source == "file" else SYNTHETIC_IDENTITY
    return _located_identity(*located)


def _as_symbol(config: BacktestConfig, symbol: str) -> BacktestConfig:
    """`config` for another symbol: the same timeframe, range and data_source."""
    return config.model_copy(update={"symbol": symbol})


def prepare(config: BacktestConfig, data_dir: Path) -> PreparedData:
    """The bars for a run: the symbol's, with the extra symbols' and the benchmark's.

    Each feed is prepared as `prepare_symbol` says, with the config's timeframe, range and
    data_source; the feeds are then aligned on the timestamps they all have, and the
    benchmark's closes are taken at the run's bars (see alignment.py). The result is the
    symbol's `PreparedData`, carrying the others in `extras` and `benchmark`, and an
    `identity` that names every source (`data_identity`).

    Raises:
        DataError: as `prepare_symbol`, for any feed; a failure of an extra symbol or the
            benchmark names `config.extra_symbols` or `config.benchmark` (`details.field`);
            too few bars left after the alignment; a benchmark that has no file (it is
            never synthetic) or no bar at or before the run's first bar.
    """
    main = prepare_symbol(config, data_dir)
    if not config.extra_symbols and config.benchmark is None:
        return main
    extras = [
        _for_field(alignment.EXTRA_SYMBOLS_FIELD, symbol, prepare_symbol, config, data_dir)
        for symbol in config.extra_symbols
    ]
    notes = [note for feed in (main, *extras) for note in feed.warnings]
    if extras:
        main, extras, note = _aligned(config, main, extras)
        notes.extend(note)
    benchmark: PreparedData | None = None
    closes: list[float] = []
    if config.benchmark is not None:
        benchmark, closes, note = _benchmark(config, data_dir, pd.DatetimeIndex(main.frame.index))
        notes.extend([*benchmark.warnings, *note])
    # A fallback to synthetic bars is what a caller must not miss: it comes first
    # (interface section 8: "the status says so in its first warning").
    notes.sort(key=lambda note: not note.startswith("synthetic data"))
    return replace(
        main,
        extras=tuple(extras),
        benchmark=benchmark,
        benchmark_closes=tuple(closes),
        warnings=notes,
        identity=_run_identity(config, main, extras, benchmark),
    )


def _for_field(
    field_name: str,
    symbol: str,
    load: Callable[[BacktestConfig, Path], PreparedData],
    config: BacktestConfig,
    data_dir: Path,
) -> PreparedData:
    """`load` for `symbol`; a DataError names the config field the symbol came from."""
    try:
        return load(_as_symbol(config, symbol), data_dir)
    except DataError as e:
        details = {**e.details, "field": field_name, "symbol": symbol}
        raise DataError(f"{field_name}: {e}", **details) from None


def _aligned(
    config: BacktestConfig, main: PreparedData, extras: list[PreparedData]
) -> tuple[PreparedData, list[PreparedData], list[str]]:
    """The feeds on the timestamps they all have, and the warning when any lost bars.

    Raises:
        DataError: fewer than MIN_BARS bars are left (names config.extra_symbols).
    """
    feeds = [main, *extras]
    frames, lost = alignment.intersect([feed.frame for feed in feeds])
    if not any(lost):
        return main, extras, []
    bars = len(frames[0])
    if bars < MIN_BARS:
        field_name = alignment.EXTRA_SYMBOLS_FIELD
        counts = ", ".join(f"{feed.symbol} {feed.bars}" for feed in feeds)
        raise DataError(
            f"{field_name}: only {bars} bars of {config.timeframe.name} between "
            f"{config.start_date} and {config.end_date} are in every feed ({counts} on "
            f"their own); at least {MIN_BARS} common bars are needed",
            field=field_name,
            rule="min_bars",
            bars=bars,
        )
    note = alignment.lost_bars_warning([feed.symbol for feed in feeds], lost, bars)
    aligned = [
        feed if count == 0 else _with_frame(feed, frame)
        for feed, frame, count in zip(feeds, frames, lost, strict=True)
    ]
    return aligned[0], aligned[1:], [note]


def _benchmark(
    config: BacktestConfig, data_dir: Path, run_index: pd.DatetimeIndex
) -> tuple[PreparedData, list[float], list[str]]:
    """The benchmark's bars (from a file, never synthetic: those in the range and the last
    one before it), its close at each of the run's bars, and a warning when some were
    carried forward.

    Raises:
        DataError: naming config.benchmark: no file, a malformed one, too few bars in the
            range, or no bar at or before the run's first bar.
    """
    symbol = config.benchmark
    assert symbol is not None
    data = _for_field(alignment.BENCHMARK_FIELD, symbol, _benchmark_file, config, data_dir)
    closes, carried = alignment.as_of(run_index, data.frame["close"], symbol)
    note = [alignment.carried_warning(symbol, carried, len(run_index))] if carried else []
    return data, closes, note


def _benchmark_file(config: BacktestConfig, data_dir: Path) -> PreparedData:
    """The benchmark's bars: `prepare_symbol` with data_source `file`, whatever the run's."""
    located = locate(data_dir, config.symbol, config.timeframe)
    if located is None:
        what = f"{config.symbol} {config.timeframe.name}"
        raise DataError(
            f"no data for {what}: the catalog has no {config.symbol}/{config.timeframe.name}"
            ".csv or .parquet, nor a finer timeframe to resample it from (a benchmark is "
            "always read from a file, never made synthetic)",
            rule="no_data",
            symbol=config.symbol,
            timeframe=config.timeframe.name,
        )
    # The bar before the range too: its close is the last known one at the run's first bar.
    return _from_file(config, data_dir, *located, lead=1)


def _run_identity(
    config: BacktestConfig,
    main: PreparedData,
    extras: list[PreparedData],
    benchmark: PreparedData | None,
) -> str:
    """`data_identity`'s string for the feeds a run really read."""
    parts = [main.identity, *(f"{extra.symbol}={extra.identity}" for extra in extras)]
    if benchmark is not None:
        parts.append(f"benchmark {config.benchmark}={benchmark.identity}")
    return "|".join(parts)


def prepare_symbol(config: BacktestConfig, data_dir: Path) -> PreparedData:
    """The bars of `config.symbol` alone, by `config.data_source`.

    `file`: the catalog file for the symbol and timeframe, or one resampled from a finer
    file. `synthetic`: seeded synthetic bars. `auto`: as `file` when the catalog has a file
    (exact or finer), else synthetic. A file that exists but is malformed, or holds too few
    bars in the range, fails the run; it never falls back to synthetic data silently.

    Raises:
        DataError: no data for the symbol/timeframe/range (`file`), a malformed file, or
            fewer than MIN_BARS bars in the range.
    """
    what = f"{config.symbol} {config.timeframe.name}"
    if config.data_source == "synthetic":
        return _synthetic(
            config,
            f"synthetic data (data_source=synthetic): {what} bars are a seeded "
            "random walk, not market prices",
        )
    located = locate(data_dir, config.symbol, config.timeframe)
    if located is not None:
        return _from_file(config, data_dir, *located)
    if config.data_source == "file":
        raise DataError(
            f"no data for {what}: the catalog has no {config.symbol}/{config.timeframe.name}"
            f".csv or .parquet, nor a finer timeframe to resample it from",
            rule="no_data",
            symbol=config.symbol,
            timeframe=config.timeframe.name,
        )
    return _synthetic(
        config,
        f"synthetic data: the catalog has no file for {what}, so its bars are a "
        "seeded random walk, not market prices",
    )


def _write_atomic(target: Path, data: bytes) -> None:
    """Write `data` to `target` so that readers see the old file or the new, never a part."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.chmod(0o644)  # mkstemp makes 0600; catalog files are plain, readable data
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def import_file(src: Path, symbol: str, timeframe: Timeframe, data_dir: Path) -> Path:
    """Validate a whole bar file and add it to the catalog as `<SYMBOL>/<TF>.csv`.

    The file is written normalised (PROTOCOL.md's data.csv form, plus `adj_close` last when
    the source has an adjusted close), atomically, replacing any earlier CSV for the same
    symbol and timeframe. Warnings (e.g. no volume) are logged.

    Raises:
        InvalidRequest: the symbol is not letters, digits and _.
        DataError: the file is missing, unreadable, malformed, or has fewer than MIN_BARS
            bars.
        OSError: the catalog directory cannot be written.
    """
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidRequest("symbol", "must be non-empty and use only letters, digits and _")
    frame, notes = read_bars(src, name=str(src))
    for note in notes:
        log.warning("%s", note)
    if len(frame) < MIN_BARS:
        raise DataError(
            f"{src}: {len(frame)} bars; at least {MIN_BARS} are needed",
            file=str(src),
            rule="min_bars",
        )
    target = data_dir / symbol / f"{timeframe.name}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, catalog_csv(frame))
    return target

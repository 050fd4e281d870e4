"""Completed results on disk, written once when a run finishes and read in bounded pieces.

A result can hold hundreds of thousands of equity points and trades (tens of MB). Kept in the
job store, every status poll, chart and order page would parse all of it, and every cache hit
would copy it. Here each result is written once, outside any database transaction, into a
directory named by its content hash, in the shapes its readers need:

    <state dir>/results/<digest>/
        result.json      the whole BacktestResult, its backtest_id blank (set when read)
        summary.json     what a status answer carries (ResultView, a few KiB at most)
        equity.json      the equity curve reduced to at most SERIES_POINTS points
        drawdown.json    the drawdown curve, likewise
        trades.jsonl     one trade per line ...
        trades.idx       ... and where each line starts (little-endian uint64s): a page of
                         trades is two seeks, whatever the number of trades
        orders.jsonl, orders.idx   the order log, likewise (absent in results stored
                         before it existed: no orders)
        equity.csv, trades.csv   the whole series, as the resources serve them
        <name>.png       a chart, once it has been drawn (`chart_png`)

The job store only holds the digest, a reference count and the size: a cached run refers to
the same directory, and the directory goes when its last reference does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backtest_sandbox.domain.models import BacktestResult

from . import views

SERIES_POINTS = 2000  # more than the pixels of a chart, and what a non-full read returns
_OFFSET = struct.Struct("<Q")
STRAY_SECONDS = 3600.0  # an unreferenced directory this old was left by a crash


class ResultFiles:
    """The results directory. Thread-safe: files are written whole and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------------------------

    def write(self, result: BacktestResult) -> tuple[str, int]:
        """Store `result`; its (digest, size in bytes on disk). Idempotent for equal content.

        Raises:
            OSError: the state directory cannot be written.
        """
        anonymous = result.model_copy(update={"backtest_id": ""})
        document = anonymous.model_dump_json().encode()
        digest = hashlib.sha256(document).hexdigest()
        target = self.root / digest
        if target.is_dir():
            return digest, _size(target)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=self.root))
        try:
            (staging / "result.json").write_bytes(document)
            summary = views.result_view(anonymous, cached=False, full=False)
            (staging / "summary.json").write_text(summary.model_dump_json())
            for name in ("equity", "drawdown"):
                series = views.chart_series(anonymous, name, max_points=SERIES_POINTS)
                (staging / f"{name}.json").write_text(series.model_dump_json())
            _write_lines(staging, "trades", result.trade_log)
            _write_lines(staging, "orders", result.order_log)
            (staging / "equity.csv").write_text(equity_csv(result))
            (staging / "trades.csv").write_text(trades_csv(result.trade_log))
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # not "written meanwhile by another thread"
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return digest, _size(target)

    def remove(self, digest: str) -> None:
        shutil.rmtree(self.root / digest, ignore_errors=True)

    def remove_strays(self, referenced: set[str]) -> int:
        """Remove directories no row refers to (a crash between writing and recording), and
        half-written ones, older than STRAY_SECONDS; how many."""
        removed = 0
        cutoff = time.time() - STRAY_SECONDS
        for entry in self.root.iterdir():
            if entry.name in referenced or entry.stat().st_mtime > cutoff:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        return removed

    # -- reading ---------------------------------------------------------------------------

    def summary(self, digest: str, backtest_id: str, cached: bool) -> views.ResultView:
        view = views.ResultView.model_validate_json(self._read(digest, "summary.json"))
        return view.model_copy(update={"backtest_id": backtest_id, "cached": cached})

    def series(self, digest: str, backtest_id: str, name: views.ChartName) -> views.ChartSeries:
        series = views.ChartSeries.model_validate_json(self._read(digest, f"{name}.json"))
        return series.model_copy(update={"backtest_id": backtest_id})

    def result(self, digest: str, backtest_id: str) -> BacktestResult:
        """The whole result: its cost grows with its size (callers cap it with `size`)."""
        result = BacktestResult.model_validate_json(self._read(digest, "result.json"))
        return result.model_copy(update={"backtest_id": backtest_id})

    def size(self, digest: str) -> int:
        return (self.root / digest / "result.json").stat().st_size

    def trades(self, digest: str, start: int, stop: int) -> tuple[list[dict[str, Any]], int]:
        """Trades [start, stop) and how many there are, reading only those lines."""
        return self._page(digest, "trades", start, stop)

    def orders(self, digest: str, start: int, stop: int) -> tuple[list[dict[str, Any]], int]:
        """Orders [start, stop) of the order log and how many there are, likewise."""
        if not (self.root / digest / "orders.idx").exists():
            return [], 0  # stored before the order log existed
        return self._page(digest, "orders", start, stop)

    def _page(
        self, digest: str, name: str, start: int, stop: int
    ) -> tuple[list[dict[str, Any]], int]:
        directory = self.root / digest
        with (directory / f"{name}.idx").open("rb") as index:
            total = os.fstat(index.fileno()).st_size // _OFFSET.size - 1
            start, stop = min(start, total), min(stop, total)
            if start >= stop:
                return [], total
            index.seek(start * _OFFSET.size)
            offsets = index.read((stop - start + 1) * _OFFSET.size)
        first = _OFFSET.unpack_from(offsets, 0)[0]
        last = _OFFSET.unpack_from(offsets, (stop - start) * _OFFSET.size)[0]
        with (directory / f"{name}.jsonl").open("rb") as lines:
            lines.seek(first)
            chunk = lines.read(last - first)
        return [json.loads(line) for line in chunk.splitlines()], total

    def equity_csv(self, digest: str) -> str:
        return self._read(digest, "equity.csv").decode()

    def trades_csv(self, digest: str) -> str:
        return self._read(digest, "trades.csv").decode()

    def chart_png(
        self, digest: str, series: views.ChartSeries, draw: Callable[[views.ChartSeries], bytes]
    ) -> bytes:
        """The chart of `series` (one of this result's reduced curves), drawn once by `draw`
        and kept: drawing is CPU work no repeated read should pay for again."""
        path = self.root / digest / f"{series.name}.png"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        png = draw(series)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(png)
        temporary.replace(path)
        return png

    def _read(self, digest: str, name: str) -> bytes:
        return (self.root / digest / name).read_bytes()


def _write_lines(directory: Path, name: str, records: list[dict[str, Any]]) -> None:
    """`<name>.jsonl`, one record a line, and `<name>.idx`, where each line starts."""
    offsets = [0]
    with (directory / f"{name}.jsonl").open("wb") as lines:
        for record in records:
            line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
            lines.write(line)
            offsets.append(offsets[-1] + len(line))
    (directory / f"{name}.idx").write_bytes(b"".join(_OFFSET.pack(o) for o in offsets))


def equity_csv(result: BacktestResult) -> str:
    """`timestamp,value`, one row per bar; values as repr() (they read back exactly)."""
    rows = ["timestamp,value", *(f"{p.timestamp},{p.value!r}" for p in result.equity_curve)]
    return "\n".join(rows) + "\n"


def trades_csv(trades: list[dict[str, Any]]) -> str:
    """One row per closed trade, the columns of the first one; empty without trades."""
    out = io.StringIO()
    if trades:
        writer = csv.DictWriter(out, fieldnames=list(trades[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(trades)
    return out.getvalue()


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())

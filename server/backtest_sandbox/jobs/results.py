"""Completed results, written once when a run finishes and read in bounded pieces.

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

Where the files are kept is a `BlobStore`'s business (blobs.py): that directory by default, or,
when the job store is PostgreSQL, rows (digest, name, bytes) of its table `result_blobs`, which
every server and worker sharing the database reads: no shared file system is needed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest_sandbox.domain.models import BacktestResult

from . import views
from .store.blobs import BlobStore, DirectoryBlobs, open_blobs

if TYPE_CHECKING:
    from backtest_sandbox.domain.settings import Settings

SERIES_POINTS = 2000  # more than the pixels of a chart, and what a non-full read returns
_OFFSET = struct.Struct("<Q")
STRAY_SECONDS = 3600.0  # an unreferenced result this old was left by a crash


class ResultFiles:
    """A result's files, kept in a `BlobStore` (blobs.py): the results directory by default,
    PostgreSQL's `result_blobs` when the job store is PostgreSQL. Thread-safe: a result is
    stored whole, and a reader sees all of its files or none."""

    def __init__(self, storage: Path | BlobStore) -> None:
        """`storage`: a `BlobStore`, or a results directory (kept with `DirectoryBlobs`)."""
        self.blobs: BlobStore = DirectoryBlobs(storage) if isinstance(storage, Path) else storage

    def close(self) -> None:
        self.blobs.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, result: BacktestResult) -> tuple[str, int]:
        """Store `result`; its (digest, size in bytes stored). Idempotent for equal content.

        Raises:
            OSError | psycopg.Error: the storage cannot be written.
        """
        anonymous = result.model_copy(update={"backtest_id": ""})
        document = anonymous.model_dump_json().encode()
        digest = hashlib.sha256(document).hexdigest()
        if self.blobs.size(digest, "result.json") is None:
            files = {"result.json": document}
            summary = views.result_view(anonymous, cached=False, full=False)
            files["summary.json"] = summary.model_dump_json().encode()
            for name in ("equity", "drawdown"):
                series = views.chart_series(anonymous, name, max_points=SERIES_POINTS)
                files[f"{name}.json"] = series.model_dump_json().encode()
            files.update(_lines("trades", result.trade_log))
            files.update(_lines("orders", result.order_log))
            files["equity.csv"] = equity_csv(result).encode()
            files["trades.csv"] = trades_csv(result.trade_log).encode()
            self.blobs.put_new(digest, files)
        return digest, self.blobs.total_size(digest)

    def remove(self, digest: str) -> None:
        self.blobs.remove(digest)

    def remove_strays(self, referenced: set[str]) -> int:
        """Remove results no row refers to (a crash between writing and recording), and
        half-written ones, older than STRAY_SECONDS; how many."""
        removed = 0
        cutoff = time.time() - STRAY_SECONDS
        for digest, written_at in self.blobs.list():
            if digest in referenced or written_at > cutoff:
                continue
            self.blobs.remove(digest)
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
        """The whole result's size in bytes.

        Raises:
            FileNotFoundError: the result is not stored.
        """
        size = self.blobs.size(digest, "result.json")
        if size is None:
            raise FileNotFoundError(f"result {digest} is not stored")
        return size

    def trades(self, digest: str, start: int, stop: int) -> tuple[list[dict[str, Any]], int]:
        """Trades [start, stop) and how many there are, reading only those lines."""
        return self._page(digest, "trades", start, stop)

    def orders(self, digest: str, start: int, stop: int) -> tuple[list[dict[str, Any]], int]:
        """Orders [start, stop) of the order log and how many there are, likewise."""
        if self.blobs.size(digest, "orders.idx") is None:
            return [], 0  # stored before the order log existed
        return self._page(digest, "orders", start, stop)

    def _page(
        self, digest: str, name: str, start: int, stop: int
    ) -> tuple[list[dict[str, Any]], int]:
        index_size = self.blobs.size(digest, f"{name}.idx")
        if index_size is None:
            raise FileNotFoundError(f"result {digest} has no {name}.idx")
        total = index_size // _OFFSET.size - 1
        start, stop = min(start, total), min(stop, total)
        if start >= stop:
            return [], total
        offsets = self.blobs.get(
            digest, f"{name}.idx", start * _OFFSET.size, (stop + 1) * _OFFSET.size
        )
        first = _OFFSET.unpack_from(offsets, 0)[0]
        last = _OFFSET.unpack_from(offsets, (stop - start) * _OFFSET.size)[0]
        chunk = self.blobs.get(digest, f"{name}.jsonl", first, last)
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
        name = f"{series.name}.png"
        try:
            return self.blobs.get(digest, name)
        except FileNotFoundError:
            pass
        png = draw(series)
        self.blobs.put(digest, name, png)
        return png

    def _read(self, digest: str, name: str) -> bytes:
        return self.blobs.get(digest, name)


def open_results(settings: Settings) -> ResultFiles:
    """The result files where the settings keep them: beside the job store (`open_blobs`).

    Raises:
        OSError | psycopg.Error: the storage cannot be opened.
    """
    return ResultFiles(open_blobs(settings))


def _lines(name: str, records: list[dict[str, Any]]) -> dict[str, bytes]:
    """`<name>.jsonl`, one record a line, and `<name>.idx`, where each line starts."""
    lines = [json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records]
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    index = b"".join(_OFFSET.pack(o) for o in offsets)
    return {f"{name}.jsonl": b"".join(lines), f"{name}.idx": index}


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

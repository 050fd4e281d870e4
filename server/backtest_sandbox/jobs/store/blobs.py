"""Where results' files are kept: named blobs of bytes, grouped by the result's digest.

`ResultFiles` (results.py) decides what a result's files are; a `BlobStore` only keeps them.
Two implementations, chosen as the job store is (`open_blobs`, the same settings):

- `DirectoryBlobs`: a directory per digest under `<state dir>/results/`, a file per name. The
  default, next to the SQLite job store.
- `PostgresBlobs` (postgres_blobs.py): the table `result_blobs` in the database of
  `BACKTEST_DATABASE_URL`, so that every server and worker sharing the job store shares the
  results too, with no shared file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backtest_sandbox.domain.settings import Settings

RESULTS_DIR = "results"  # in the state directory


class BlobStore(Protocol):
    """Blobs by (digest, name). Thread-safe; several processes may share one.

    Reading a blob that is not there raises FileNotFoundError, whatever the storage.
    """

    def put_new(self, digest: str, blobs: Mapping[str, bytes]) -> None:
        """Store a result's blobs all at once: a reader sees all of them or none. If the
        digest is stored already (equal content, written by someone else) nothing changes."""
        ...

    def put(self, digest: str, name: str, data: bytes) -> None:
        """Add or replace one blob of a stored digest (a chart drawn later).

        Raises:
            FileNotFoundError: the digest is not stored (removed meanwhile).
        """
        ...

    def get(self, digest: str, name: str, start: int = 0, stop: int | None = None) -> bytes:
        """Bytes [start, stop) of the blob (to its end when `stop` is None), reading only those."""
        ...

    def size(self, digest: str, name: str) -> int | None:
        """The blob's length, or None when it is not there."""
        ...

    def total_size(self, digest: str) -> int:
        """The bytes all of the digest's blobs take."""
        ...

    def remove(self, digest: str) -> None:
        """Remove the digest's blobs; nothing when there are none."""
        ...

    def list(self) -> list[tuple[str, float]]:
        """(digest, when last written, seconds since the epoch) of everything stored, including
        what a crashed writer left half done."""
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...


class DirectoryBlobs:
    """A directory per digest, a file per name. Writes are whole files renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put_new(self, digest: str, blobs: Mapping[str, bytes]) -> None:
        target = self.root / digest
        if target.is_dir():
            return
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=self.root))
        try:
            for name, data in blobs.items():
                (staging / name).write_bytes(data)
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # not "written meanwhile by another thread"
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def put(self, digest: str, name: str, data: bytes) -> None:
        path = self.root / digest / name
        temporary = path.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)

    def get(self, digest: str, name: str, start: int = 0, stop: int | None = None) -> bytes:
        with (self.root / digest / name).open("rb") as file:
            if start:
                file.seek(start)
            return file.read() if stop is None else file.read(max(stop - start, 0))

    def size(self, digest: str, name: str) -> int | None:
        try:
            return (self.root / digest / name).stat().st_size
        except FileNotFoundError:
            return None

    def total_size(self, digest: str) -> int:
        return sum(path.stat().st_size for path in (self.root / digest).iterdir())

    def remove(self, digest: str) -> None:
        shutil.rmtree(self.root / digest, ignore_errors=True)

    def list(self) -> list[tuple[str, float]]:
        return [(entry.name, entry.stat().st_mtime) for entry in self.root.iterdir()]

    def close(self) -> None:
        pass


def open_blobs(settings: Settings) -> BlobStore:
    """Where the settings keep results: PostgreSQL when `database_url` is set (the job
    store's database), else the results directory in the state directory.

    Raises:
        OSError | psycopg.Error: the storage cannot be opened.
    """
    url = settings.database_url.get_secret_value()
    if url:
        from .postgres_blobs import PostgresBlobs

        return PostgresBlobs(url)
    return DirectoryBlobs(settings.state_dir / RESULTS_DIR)

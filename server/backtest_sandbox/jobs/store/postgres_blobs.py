"""Results' blobs in the job store's PostgreSQL database: the table `result_blobs`.

One row per (digest, name). The column is stored EXTERNAL (out of line, uncompressed), so that
`substring` reads only the TOAST chunks a page of trades needs, as a seek does in a file. A
result is written in one transaction, so a reader sees all of its blobs or none, and writers of
the same content meet on the primary key: the second one changes nothing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import psycopg
from psycopg.rows import TupleRow

from .postgres import CONNECT_TIMEOUT_SECONDS, LOCK_SPACE, POOL_WAIT_SECONDS

_SCHEMA_KEY = 4  # pg_advisory_xact_lock(LOCK_SPACE, 4): the job store's schema takes 3
POOL_SIZE = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS result_blobs (
    digest TEXT NOT NULL,  -- the result's content hash (results.py)
    name TEXT NOT NULL,  -- result.json, summary.json, trades.jsonl, equity.png, ...
    bytes BYTEA NOT NULL,
    written_at DOUBLE PRECISION NOT NULL,  -- seconds since the epoch: strays' age
    PRIMARY KEY (digest, name)
);
ALTER TABLE result_blobs ALTER COLUMN bytes SET STORAGE EXTERNAL;
"""


class PostgresBlobs:
    """The `result_blobs` table, through a small pool of connections of its own."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        """Connect and create the table if it is missing.

        Raises:
            psycopg.Error: the database cannot be reached.
        """
        self._url = url
        self._idle: queue.SimpleQueue[psycopg.Connection[TupleRow]] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[psycopg.Connection[TupleRow]] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._connection() as conn, conn.transaction():
            # One process at a time: CREATE TABLE IF NOT EXISTS races with itself.
            conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, {_SCHEMA_KEY})")
            conn.execute(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        if not self._slots.acquire(timeout=POOL_WAIT_SECONDS):
            raise psycopg.OperationalError(
                f"no result storage connection came free in {POOL_WAIT_SECONDS:.0f} s"
            )
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._open()
            try:
                yield conn
            finally:
                if conn.broken or conn.closed:  # dropped by the server: not handed out again
                    with self._lock:
                        if conn in self._all:
                            self._all.remove(conn)
                    conn.close()
                else:
                    self._idle.put(conn)
        finally:
            self._slots.release()

    def _open(self) -> psycopg.Connection[TupleRow]:
        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="backtest-sandbox-results",
        )
        with self._lock:
            if self._closed:
                conn.close()
                raise psycopg.OperationalError("the result storage is closed")
            self._all.append(conn)
        return conn

    def put_new(self, digest: str, blobs: Mapping[str, bytes]) -> None:
        now = time.time()
        with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO result_blobs (digest, name, bytes, written_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (digest, name) DO NOTHING",
                [(digest, name, data, now) for name, data in blobs.items()],
            )

    def put(self, digest: str, name: str, data: bytes) -> None:
        with self._connection() as conn:
            # Only beside a stored result: a chart of a result removed meanwhile is not kept.
            cursor = conn.execute(
                "INSERT INTO result_blobs (digest, name, bytes, written_at)"
                " SELECT %s, %s, %s, %s WHERE EXISTS"
                " (SELECT 1 FROM result_blobs WHERE digest = %s AND name = 'result.json')"
                " ON CONFLICT (digest, name) DO UPDATE"
                " SET bytes = excluded.bytes, written_at = excluded.written_at",
                (digest, name, data, time.time(), digest),
            )
            if cursor.rowcount == 0:
                raise FileNotFoundError(f"result {digest} is not stored")

    def get(self, digest: str, name: str, start: int = 0, stop: int | None = None) -> bytes:
        with self._connection() as conn:
            if stop is None:
                row = conn.execute(
                    "SELECT substring(bytes FROM %s) FROM result_blobs"
                    " WHERE digest = %s AND name = %s",
                    (start + 1, digest, name),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT substring(bytes FROM %s FOR %s) FROM result_blobs"
                    " WHERE digest = %s AND name = %s",
                    (start + 1, max(stop - start, 0), digest, name),
                ).fetchone()
        if row is None:
            raise FileNotFoundError(f"result {digest} has no {name}")
        return bytes(row[0])

    def size(self, digest: str, name: str) -> int | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT octet_length(bytes) FROM result_blobs WHERE digest = %s AND name = %s",
                (digest, name),
            ).fetchone()
        return None if row is None else int(row[0])

    def total_size(self, digest: str) -> int:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(octet_length(bytes)), 0) FROM result_blobs WHERE digest = %s",
                (digest,),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def remove(self, digest: str) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM result_blobs WHERE digest = %s", (digest,))

    def list(self) -> list[tuple[str, float]]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT digest, max(written_at) FROM result_blobs GROUP BY digest"
            ).fetchall()
        return [(str(digest), float(at)) for digest, at in rows]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

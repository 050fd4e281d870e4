"""The job store in one SQLite file in the state directory: the default, for one machine.

Every state change is one `BEGIN IMMEDIATE` transaction, so a job is never half written and
a process killed at any instant leaves rows that `recover` can account for. WAL lets status
reads (a primary-key lookup) run while a worker writes a large result.

Connections come from a small pool rather than thread-locals: anyio's worker threads come and
go, and a connection per short-lived thread would leak until shutdown.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import StoredResult
from .sql import SqlJobStore, Turn, adjust_refs

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000  # a writer holds the lock for milliseconds; waiting beats failing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: list order and cursors
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    language TEXT NOT NULL,
    code TEXT NOT NULL,
    config_json TEXT NOT NULL,
    cache_key TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress_done INTEGER,
    progress_total INTEGER,
    progress_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times a worker started it
    result_json TEXT,  -- version 1 only: results now live in files (results.py)
    view_json TEXT,  -- version 1 only
    error_json TEXT,
    result_digest TEXT,  -- the result's directory under <state dir>/results
    kind TEXT NOT NULL DEFAULT 'backtest',  -- 'backtest' (a worker runs it) or 'sweep'
    parent TEXT,  -- the sweep a combination (or its out-of-sample run) belongs to
    summary_json TEXT  -- a sweep's state, then its final answer (jobs/sweeps.py)
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_tenant_status ON jobs (tenant, status);  -- quotas
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, seq);
CREATE INDEX IF NOT EXISTS jobs_by_cache_key ON jobs (cache_key);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);  -- retention
CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent);
CREATE TABLE IF NOT EXISTS results (
    digest TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,  -- whose storage it counts against
    bytes INTEGER NOT NULL,
    refs INTEGER NOT NULL,  -- jobs and cache entries that point at it; 0: removed
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_tenant ON results (tenant);
CREATE TABLE IF NOT EXISTS outcomes (  -- the result cache: one row per cache key
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    result_digest TEXT,
    error_json TEXT,
    used_at REAL NOT NULL  -- the least recently used go first when the cache is full
);
CREATE INDEX IF NOT EXISTS outcomes_by_use ON outcomes (used_at);
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    last_claim INTEGER NOT NULL  -- order of the tenant's latest claim: least recently served first
);
CREATE TABLE IF NOT EXISTS counters (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
"""


class SqliteJobStore(SqlJobStore):
    """Jobs and cached results in `<state_dir>/jobs.sqlite3`. Thread-safe.

    `wait_for_change` wakes on writes through this object only (one process: the server or
    the CLI).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open (and create or migrate) the store.

        Raises:
            sqlite3.Error: the file cannot be opened or is not this store's database.
        """
        super().__init__(clock)
        self.path = path
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{path}: schema version {version} is newer than this server ({SCHEMA_VERSION})"
                )
            if version == 1:  # results move to files; the cache starts empty (it is a cache)
                conn.executescript(
                    "ALTER TABLE jobs ADD COLUMN result_digest TEXT; DROP TABLE IF EXISTS cache;"
                )
            if 1 <= version <= 2:  # sweeps
                conn.executescript(
                    "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backtest';"
                    " ALTER TABLE jobs ADD COLUMN parent TEXT;"
                    " ALTER TABLE jobs ADD COLUMN summary_json TEXT;"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections and transactions ------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: a pooled connection moves between threads, never shared
        # by two at once; close() may run on another thread than the one that opened it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # NORMAL in WAL mode: a commit survives the process being killed (only power loss
        # can drop the last transactions), at a fraction of FULL's fsync cost.
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("the job store is closed")
            self._all.append(conn)
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._open()
        try:
            yield conn
        finally:
            self._idle.put(conn)

    @contextmanager
    def _transaction(self, turn: Turn = "writes") -> Iterator[sqlite3.Connection]:
        """One write transaction, whatever the turn: IMMEDIATE takes the database's one write
        lock up front, so two writers never deadlock upgrading a read lock."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._changed()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    # -- results a version 1 store kept in its rows ----------------------------------------

    def legacy_results(self, limit: int = 50) -> list[tuple[str, str]]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, result_json FROM jobs WHERE result_json IS NOT NULL LIMIT ?", (limit,)
            ).fetchall()
        return [(row["id"], row["result_json"]) for row in rows]

    def adopt_legacy(self, job_id: str, result: StoredResult) -> None:
        with self._transaction() as conn:
            tenant = conn.execute("SELECT tenant FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            conn.execute(
                "INSERT INTO results (digest, tenant, bytes, refs, created_at)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (digest) DO NOTHING",
                (result.digest, tenant, result.bytes, self._clock()),
            )
            conn.execute(
                "UPDATE jobs SET result_digest = ?, result_json = NULL, view_json = NULL"
                " WHERE id = ?",
                (result.digest, job_id),
            )
            adjust_refs(conn, result.digest, +1)

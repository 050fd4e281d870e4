"""The job store in a PostgreSQL database (`BACKTEST_DATABASE_URL`), which several processes
may share.

Transactions run at READ COMMITTED and take turns (sql.py) as transaction-level advisory
locks: the multi-statement writes one at a time, as SQLite runs them, so a quota counted in a
transaction still holds at its commit; claims one at a time among themselves, so the fair
order and the per-tenant cap see every earlier claim, while `FOR UPDATE SKIP LOCKED` passes
over a row that another transaction is changing (a cancel) instead of waiting for it. While
holding a turn, a transaction waits at most for rows: `claim_next` for none, `claim(job_id)`
for its one, a write for rows that only turn holders or one-row writes (the writes that take
no turn: progress, requeue, a sweep's summary, a cache entry's last use) hold, and none of
those waits for a turn. So no two transactions can wait for each other: no deadlock to retry.

`wait_for_change` is LISTEN/NOTIFY: a transaction that changed rows sends a NOTIFY on
`CHANNEL`, delivered at its commit and never on rollback. A thread of each store listens on a
connection of its own and bumps the version for the writes of other connections (this store's
own bumped it at their commit), so a waiter in one process wakes on a write in another. If
the listening connection drops it reconnects, and bumps the version once back: a write may
have been missed meanwhile.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from . import StoredResult
from .sql import SqlJobStore, Turn

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHANNEL = "backtest_sandbox_jobs"
# pg_advisory_xact_lock(LOCK_SPACE, turn): the first key keeps clear of other users' locks.
LOCK_SPACE = 0x425453  # "BTS"
_TURN_KEYS = {"writes": 1, "claims": 2}
_SCHEMA_KEY = 3
LOCK_TIMEOUT = "10s"  # a turn is held for milliseconds; waiting longer means something is wrong
POOL_SIZE = 16  # connections per store; a caller past it waits for one to come back
POOL_WAIT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10
LISTEN_POLL_SECONDS = 1.0  # how often the listener looks whether the store was closed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- list order and cursors
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    language TEXT NOT NULL,
    code TEXT NOT NULL,
    config_json TEXT NOT NULL,
    cache_key TEXT,
    cached BOOLEAN NOT NULL DEFAULT FALSE,
    symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,  -- seconds since the epoch, as in SQLite
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    progress_done INTEGER,
    progress_total INTEGER,
    progress_at DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times a worker started it
    error_json TEXT,
    result_digest TEXT,  -- the result's directory under <state dir>/results
    kind TEXT NOT NULL DEFAULT 'backtest',  -- 'backtest' (a worker runs it) or 'sweep'
    parent TEXT,  -- the sweep a combination (or its out-of-sample run) belongs to
    summary_json TEXT  -- a sweep's state, then its final answer (jobs/sweeps.py)
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_tenant_status ON jobs (tenant, status);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, seq);
CREATE INDEX IF NOT EXISTS jobs_by_cache_key ON jobs (cache_key);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent);
CREATE TABLE IF NOT EXISTS results (
    digest TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    refs INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_tenant ON results (tenant);
CREATE TABLE IF NOT EXISTS outcomes (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    result_digest TEXT,
    error_json TEXT,
    used_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_by_use ON outcomes (used_at);
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    last_claim BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS store_schema (version INTEGER NOT NULL);
"""


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """The shared SQL's `?` placeholders as psycopg's `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A pooled psycopg connection that speaks the shared SQL, and notes whether it wrote."""

    def __init__(self, raw: psycopg.Connection[DictRow]) -> None:
        self.raw = raw
        self.pid = raw.info.backend_pid
        self.wrote = False

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[DictRow]:
        cursor = self.raw.execute(_pyformat(sql), parameters)
        if cursor.rowcount > 0 and sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.wrote = True
        return cursor


class PostgresJobStore(SqlJobStore):
    """Jobs and cached results in a PostgreSQL database. Thread-safe.

    `wait_for_change` wakes on every process's writes. `recover` treats every job found
    running as interrupted: with worker threads in the server (the local backend), one server
    per database.
    """

    _LOCK_ROWS = " FOR UPDATE"
    _CLAIM_LOCK = " FOR UPDATE OF j SKIP LOCKED"
    _ROWS_AFTER = "OFFSET ?"

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = POOL_SIZE,
    ) -> None:
        """Connect, create or check the schema, and start listening for changes.

        Raises:
            psycopg.Error: the database cannot be reached, or its schema is newer than ours.
        """
        super().__init__(clock)
        self._url = url
        self._idle: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._pool_size = pool_size
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: dict[int, _Connection] = {}  # by backend pid: whose notifications are ours
        self._lock = threading.Lock()
        self._closed = False
        self._stop_token = f"stop {uuid.uuid4()}"
        try:
            self._create_schema()
        except BaseException:
            self._close_connections()
            raise
        self._listening = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="job-store-listen", daemon=True)
        self._listener.start()
        self._listening.wait(CONNECT_TIMEOUT_SECONDS)

    def _create_schema(self) -> None:
        with self._connection() as conn, conn.raw.transaction():
            # One process at a time: CREATE TABLE IF NOT EXISTS races with itself.
            conn.raw.execute(f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, {_SCHEMA_KEY})")
            conn.raw.execute(_SCHEMA)
            row = conn.raw.execute("SELECT version FROM store_schema").fetchone()
            if row is None:
                conn.raw.execute(
                    "INSERT INTO store_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                )
            elif row["version"] > SCHEMA_VERSION:
                raise psycopg.DatabaseError(
                    f"the database's job store schema version {row['version']} is newer than"
                    f" this server's ({SCHEMA_VERSION})"
                )

    # -- connections and transactions ----------------------------------------------------------

    def _open(self) -> _Connection:
        raw = psycopg.connect(
            self._url,
            autocommit=True,  # reads are single statements; writes open `transaction()`
            row_factory=dict_row,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="backtest-sandbox",
        )
        raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        conn = _Connection(raw)
        with self._lock:
            if self._closed:
                raw.close()
                raise psycopg.OperationalError("the job store is closed")
            self._all[conn.pid] = conn
        return conn

    def _discard(self, conn: _Connection) -> None:
        with self._lock:
            self._all.pop(conn.pid, None)
        conn.raw.close()

    @contextmanager
    def _connection(self) -> Iterator[_Connection]:
        if not self._slots.acquire(timeout=POOL_WAIT_SECONDS):
            raise psycopg.OperationalError(
                f"no job store connection came free in {POOL_WAIT_SECONDS:.0f} s"
                f" ({self._pool_size} in use)"
            )
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._open()
            try:
                yield conn
            finally:
                # A connection the server dropped (a restart) is not handed out again.
                if conn.raw.broken or conn.raw.closed:
                    self._discard(conn)
                else:
                    self._idle.put(conn)
        finally:
            self._slots.release()

    @contextmanager
    def _transaction(self, turn: Turn = "writes") -> Iterator[_Connection]:
        with self._connection() as conn:
            conn.wrote = False
            with conn.raw.transaction():
                if turn != "none":
                    conn.raw.execute(
                        f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, {_TURN_KEYS[turn]})"
                    )
                yield conn
                if conn.wrote:
                    conn.raw.execute(f"NOTIFY {CHANNEL}")
        self._changed()

    def close(self) -> None:
        if not self._close_connections():
            return
        try:  # wake the listener now rather than at its next poll
            with psycopg.connect(self._url, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._stop_token))
        except psycopg.Error:
            pass
        self._listener.join(timeout=LISTEN_POLL_SECONDS * 2)

    def _close_connections(self) -> bool:
        """Close the pool for good; False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            conns, self._all = list(self._all.values()), {}
        for each in conns:
            each.raw.close()
        return True

    # -- other processes' writes ---------------------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.1
        missed = False
        while not self._closed:
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    backoff = 0.1
                    if missed:
                        self._changed()
                    while not self._closed:
                        for note in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                            if note.payload == self._stop_token:
                                return
                            with self._lock:
                                ours = note.pid in self._all
                            if not ours:
                                self._changed()
            except psycopg.Error as e:
                if self._closed:
                    return
                logger.warning("job store: listening for changes failed (%s); retrying", e)
                missed = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # -- results a version 1 SQLite store kept in its rows: never here -------------------------

    def legacy_results(self, limit: int = 50) -> list[tuple[str, str]]:
        return []

    def adopt_legacy(self, job_id: str, result: StoredResult) -> None:
        raise LookupError(f"{job_id}: a PostgreSQL job store keeps no result in its rows")

"""The durable job store and result cache: one SQLite file in the state directory.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest_sandbox.domain.errors import QuotaExceeded
from backtest_sandbox.domain.models import JobStatus

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

_SUMMARY_COLUMNS = (
    "seq, id, tenant, status, language, symbol, timeframe, cached, created_at, started_at, "
    "finished_at, progress_done, progress_total, progress_at, attempts, error_json, kind, parent"
)
_JOB_COLUMNS = f"{_SUMMARY_COLUMNS}, code, config_json, cache_key, result_digest"


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job without its code and result: what listings need."""

    seq: int
    id: str
    tenant: str
    status: JobStatus
    language: str
    symbol: str
    timeframe: str
    cached: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress_done: int | None
    progress_total: int | None
    progress_at: float | None
    attempts: int
    error_json: str | None
    kind: str  # "backtest" or "sweep"
    parent: str | None  # the sweep a combination belongs to


@dataclass(frozen=True, slots=True)
class Job(JobSummary):
    """A whole job row."""

    code: str
    config_json: str
    cache_key: str | None
    result_digest: str | None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert: queued, or already terminal (a cache hit, an unsupported language)."""

    id: str
    tenant: str
    language: str
    code: str
    config_json: str
    symbol: str
    timeframe: str
    cache_key: str | None = None
    status: JobStatus = JobStatus.QUEUED
    cached: bool = False
    result_digest: str | None = None  # a cache hit's stored result
    error_json: str | None = None
    kind: str = "backtest"
    parent: str | None = None
    summary_json: str | None = None


@dataclass(frozen=True, slots=True)
class Child:
    """A sweep's combination (or out-of-sample run) as the sweep reads it."""

    id: str
    status: JobStatus
    config_json: str
    result_digest: str | None
    error_json: str | None
    cached: bool


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A stored terminal outcome: completed with a result, or a deterministic failure."""

    status: JobStatus
    result_digest: str | None
    error_json: str | None


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result written to the results directory, to be referenced by a row."""

    digest: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Limits:
    """What one tenant may keep and the cache may hold (the settings' values)."""

    max_queued: int | None = None
    max_queued_combinations: int | None = None  # a tenant's sweep combinations waiting
    max_stored_jobs: int | None = None
    max_stored_bytes: int | None = None
    cache_max_entries: int | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `recover` found left by a previous process."""

    requeued: int  # were running; run again
    failed: int  # were running for the second time; given up
    queued: int  # waiting now, including the re-queued ones


@dataclass(frozen=True, slots=True)
class TenantCounts:
    by_status: dict[JobStatus, int]
    cache_hits: int
    avg_execution_seconds: float | None
    avg_wait_seconds: float | None


def _summary_fields(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "id": row["id"],
        "tenant": row["tenant"],
        "status": JobStatus(row["status"]),
        "language": row["language"],
        "symbol": row["symbol"],
        "timeframe": row["timeframe"],
        "cached": bool(row["cached"]),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "progress_done": row["progress_done"],
        "progress_total": row["progress_total"],
        "progress_at": row["progress_at"],
        "attempts": row["attempts"],
        "error_json": row["error_json"],
        "kind": row["kind"],
        "parent": row["parent"],
    }


def _summary(row: sqlite3.Row) -> JobSummary:
    return JobSummary(**_summary_fields(row))


def _job(row: sqlite3.Row) -> Job:
    return Job(
        **_summary_fields(row),
        code=row["code"],
        config_json=row["config_json"],
        cache_key=row["cache_key"],
        result_digest=row["result_digest"],
    )


class JobStore:
    """Jobs and cached results in `<state_dir>/jobs.sqlite3`. Thread-safe."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open (and create or migrate) the store.

        Raises:
            sqlite3.Error: the file cannot be opened or is not this store's database.
        """
        self.path = path
        self._clock = clock
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        # Bumped after every committed write: lets readers wait for a change, not poll.
        self._changes = threading.Condition()
        self._version = 0
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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front, so two writers
        never deadlock upgrading a read lock."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        with self._changes:
            self._version += 1
            self._changes.notify_all()

    def version(self) -> int:
        """How many write transactions this store object has committed."""
        with self._changes:
            return self._version

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until a write commits after `seen` (a `version()`), or `timeout` passes.

        Only writes through this object wake it (one process: the server or the CLI).
        """
        with self._changes:
            self._changes.wait_for(lambda: self._version != seen, timeout=max(timeout, 0.0))
            return self._version

    def close(self) -> None:
        """Close every connection. Safe to call twice."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    # -- jobs ------------------------------------------------------------------------------

    def insert(self, job: NewJob, limits: Limits | None = None) -> Job:
        """Insert one job; a cache hit refers to its stored result and counts as a hit.

        The tenant's quotas of `limits` are counted in the same transaction, so concurrent
        submissions cannot overshoot them: queued jobs (for a queued job), and stored jobs
        and bytes (for every job, cache hits included).

        Raises:
            QuotaExceeded: a quota is full; the rule names its setting.
            sqlite3.IntegrityError: the id is already taken.
        """
        limits = limits or Limits()
        with self._transaction() as conn:
            self._check_quotas(conn, job, limits)
            return self._insert_row(conn, job)

    def insert_sweep(self, sweep: NewJob, children: list[NewJob], limits: Limits) -> None:
        """Insert a sweep and its combinations in one transaction: all of them or none.

        The sweep counts as one job against the tenant's quotas; its queued combinations count
        against `max_queued_combinations`, and every row against the stored-jobs quota.

        Raises:
            QuotaExceeded: a quota would be exceeded; nothing is inserted.
        """
        with self._transaction() as conn:
            self._check_quotas(conn, sweep, limits, extra_jobs=len(children))
            waiting = sum(child.status is JobStatus.QUEUED for child in children)
            cap = limits.max_queued_combinations
            if cap is not None and waiting:
                (queued,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND status = 'queued'"
                    " AND parent IS NOT NULL",
                    (sweep.tenant,),
                ).fetchone()
                if queued + waiting > cap:
                    raise QuotaExceeded(
                        "tenant_max_queued_combinations",
                        f"{queued} of your sweep combinations are queued and this sweep adds "
                        f"{waiting}; a tenant may have at most {cap} waiting: cancel a sweep, "
                        "wait, or sweep a smaller grid",
                        limit=cap,
                        current=queued,
                    )
            self._insert_row(conn, sweep)
            for child in children:
                self._insert_row(conn, child)

    def _insert_row(self, conn: sqlite3.Connection, job: NewJob) -> Job:
        now = self._clock()
        finished = now if job.status.is_terminal else None
        conn.execute(
            "INSERT INTO jobs (id, tenant, status, language, code, config_json, cache_key,"
            " cached, symbol, timeframe, created_at, finished_at, result_digest,"
            " error_json, kind, parent, summary_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.tenant,
                job.status.value,
                job.language,
                job.code,
                job.config_json,
                job.cache_key,
                int(job.cached),
                job.symbol,
                job.timeframe,
                now,
                finished,
                job.result_digest,
                job.error_json,
                job.kind,
                job.parent,
                job.summary_json,
            ),
        )
        if job.result_digest is not None:
            conn.execute(
                "UPDATE results SET refs = refs + 1 WHERE digest = ?", (job.result_digest,)
            )
        if job.cached:
            self._bump(conn, job.tenant, "cache_hits")
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job.id,))
        return _job(row.fetchone())

    @staticmethod
    def _check_quotas(
        conn: sqlite3.Connection, job: NewJob, limits: Limits, extra_jobs: int = 0
    ) -> None:
        if limits.max_queued is not None and job.status is JobStatus.QUEUED:
            (queued,) = conn.execute(  # a sweep's combinations have their own quota
                "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND status = 'queued'"
                " AND parent IS NULL",
                (job.tenant,),
            ).fetchone()
            if queued >= limits.max_queued:
                raise QuotaExceeded(
                    "tenant_max_queued",
                    f"{queued} of your backtests are queued, the most a tenant may have"
                    " waiting; cancel some or wait until they start",
                    limit=limits.max_queued,
                    current=queued,
                )
        if limits.max_stored_jobs is not None:
            (stored,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ?", (job.tenant,)
            ).fetchone()
            if stored + extra_jobs >= limits.max_stored_jobs:
                raise QuotaExceeded(
                    "tenant_max_stored_jobs",
                    f"you keep {stored} backtests, the most a tenant may keep; delete some"
                    " (delete_backtest) or wait for the retention period to remove old ones",
                    limit=limits.max_stored_jobs,
                    current=stored,
                )
        if limits.max_stored_bytes is not None:
            (used,) = conn.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM results WHERE tenant = ?", (job.tenant,)
            ).fetchone()
            if used >= limits.max_stored_bytes:
                raise QuotaExceeded(
                    "tenant_max_stored_bytes",
                    f"your stored results take {used} bytes, the most a tenant may keep;"
                    " delete some backtests (delete_backtest)",
                    limit=limits.max_stored_bytes,
                    current=used,
                )

    def get(self, tenant: str, job_id: str) -> Job | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
        return None if row is None else _job(row)

    def get_summary(self, tenant: str, job_id: str) -> JobSummary | None:
        """Like `get`, without reading the code and the result (cheap for polling)."""
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?",
                (job_id, tenant),
            ).fetchone()
        return None if row is None else _summary(row)

    def code(self, tenant: str, job_id: str) -> str | None:
        """The job's code, or None when it is not the tenant's (for audit lines)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT code FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
        return None if row is None else str(row["code"])

    def list_jobs(
        self, tenant: str, *, status: JobStatus | None, limit: int, before_seq: int | None
    ) -> tuple[list[JobSummary], bool]:
        """The tenant's jobs, newest first, older than `before_seq`; and whether more remain."""
        # A sweep's combinations are listed by the sweep (get_sweep_status), not here.
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE tenant = ? AND parent IS NULL"
        args: list[object] = [tenant]
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_summary(row) for row in rows[:limit]], len(rows) > limit

    def claim_next(self, *, max_running_per_tenant: int | None = None) -> Job | None:
        """Mark the next queued job running and return it, or None when nothing is claimable.

        Fair across tenants: the tenant with the fewest running jobs goes first, then the one
        served least recently, then its oldest job. One tenant's flood of jobs thus never holds
        back another tenant's first job, even with one worker; alone, a tenant is served first
        in, first out. A tenant with `max_running_per_tenant` jobs running is skipped.
        """
        now = self._clock()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT j.id, j.tenant FROM jobs AS j"
                " LEFT JOIN (SELECT tenant, COUNT(*) AS n FROM jobs"
                "  WHERE status = 'running' AND kind = 'backtest'"
                "  GROUP BY tenant) AS r ON r.tenant = j.tenant"
                " LEFT JOIN tenants AS t ON t.tenant = j.tenant"
                " WHERE j.status = 'queued' AND j.kind = 'backtest'"
                " AND (:cap IS NULL OR COALESCE(r.n, 0) < :cap)"
                " ORDER BY COALESCE(r.n, 0), COALESCE(t.last_claim, 0), j.created_at, j.seq"
                " LIMIT 1",
                {"cap": max_running_per_tenant},
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1,"
                " progress_done = NULL, progress_total = NULL, progress_at = NULL WHERE id = ?",
                (now, row["id"]),
            )
            conn.execute(
                "INSERT INTO tenants (tenant, last_claim)"
                " VALUES (?, (SELECT COALESCE(MAX(last_claim), 0) + 1 FROM tenants))"
                " ON CONFLICT (tenant) DO UPDATE SET last_claim = excluded.last_claim",
                (row["tenant"],),
            )
            claimed = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (row["id"],))
            return _job(claimed.fetchone())

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        """Record bars done of total for a running job (ignored once it is not running)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress_done = ?, progress_total = ?, progress_at = ?"
                " WHERE id = ? AND status = 'running'",
                (done, total, self._clock(), job_id),
            )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: StoredResult | None = None,
        error_json: str | None = None,
        cache_key: str | None = None,
        cache_max_entries: int | None = None,
    ) -> tuple[bool, list[str]]:
        """Record a running job's terminal outcome, and cache it under `cache_key` if given.

        The result was written to its files before (outside this short transaction); here it
        only gains its references. Returns whether the outcome was recorded (not when the job
        is no longer running: cancelled or deleted meanwhile, and that decision stands), and
        the digests of results nothing refers to any more, for the caller to remove.
        """
        now = self._clock()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT tenant FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
            ).fetchone()
            if row is None:
                orphans = [] if result is None else self._unreferenced(conn, [result.digest])
                return False, orphans
            if result is not None:
                conn.execute(
                    "INSERT INTO results (digest, tenant, bytes, refs, created_at)"
                    " VALUES (?, ?, ?, 0, ?) ON CONFLICT (digest) DO NOTHING",
                    (result.digest, row["tenant"], result.bytes, now),
                )
            digest = None if result is None else result.digest
            conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result_digest = ?, error_json = ?"
                " WHERE id = ?",
                (status.value, now, digest, error_json, job_id),
            )
            self._ref(conn, digest, +1)
            evicted: list[str] = []
            if cache_key is not None:
                evicted = self._cache_put(
                    conn, cache_key, status, digest, error_json, now, cache_max_entries
                )
            return True, self._unreferenced(conn, evicted)

    def _cache_put(
        self,
        conn: sqlite3.Connection,
        key: str,
        status: JobStatus,
        digest: str | None,
        error_json: str | None,
        now: float,
        max_entries: int | None,
    ) -> list[str]:
        """Cache an outcome (a reference to its result); evict the least recently used
        beyond `max_entries`. The digests that lost a reference."""
        released = self._cache_drop(conn, "key = ?", (key,))
        conn.execute(
            "INSERT INTO outcomes (key, status, result_digest, error_json, used_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, status.value, digest, error_json, now),
        )
        self._ref(conn, digest, +1)
        if max_entries is not None:
            released += self._cache_drop(
                conn,
                "key IN (SELECT key FROM outcomes ORDER BY used_at DESC LIMIT -1 OFFSET ?)",
                (max_entries,),
            )
        return released

    def _cache_drop(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[str]:
        rows = conn.execute(f"SELECT result_digest FROM outcomes WHERE {where}", args).fetchall()
        conn.execute(f"DELETE FROM outcomes WHERE {where}", args)
        digests = [row["result_digest"] for row in rows if row["result_digest"] is not None]
        for digest in digests:
            self._ref(conn, digest, -1)
        return digests

    @staticmethod
    def _ref(conn: sqlite3.Connection, digest: str | None, delta: int) -> None:
        if digest is not None:
            conn.execute("UPDATE results SET refs = refs + ? WHERE digest = ?", (delta, digest))

    @staticmethod
    def _unreferenced(conn: sqlite3.Connection, digests: list[str]) -> list[str]:
        """Of `digests`, those no row refers to any more: their rows go, their files are the
        caller's to remove (after the commit)."""
        gone = []
        for digest in set(digests):
            row = conn.execute("SELECT refs FROM results WHERE digest = ?", (digest,)).fetchone()
            if row is None or row["refs"] <= 0:
                conn.execute("DELETE FROM results WHERE digest = ?", (digest,))
                gone.append(digest)
        return gone

    def requeue(self, job_id: str) -> bool:
        """Put a running job back in the queue without counting the attempt (a clean stop)."""
        with self._transaction() as conn:
            return bool(
                conn.execute(
                    "UPDATE jobs SET status = 'queued', started_at = NULL, attempts = attempts - 1,"
                    " progress_done = NULL, progress_total = NULL, progress_at = NULL"
                    " WHERE id = ? AND status = 'running'",
                    (job_id,),
                ).rowcount
            )

    def cancel(self, tenant: str, job_id: str) -> tuple[JobStatus, JobStatus] | None:
        """Cancel a queued or running job at once.

        Returns (status before, status now), or None when the job is not the tenant's. A job
        already terminal keeps its status.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            if row is None:
                return None
            before = JobStatus(row["status"])
            if before.is_terminal:
                return before, before
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                (self._clock(), job_id),
            )
            return before, JobStatus.CANCELLED

    def delete(self, tenant: str, job_id: str) -> tuple[JobStatus, list[str]] | None:
        """Delete the tenant's job; its status before and the result digests nothing refers
        to any more (the caller removes their files), or None when not found.

        Its cached outcome goes too: deleting a backtest forgets its result. A sweep's runs go
        with it.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                "SELECT id, cache_key, result_digest FROM jobs WHERE id = ? OR parent = ?",
                (job_id, job_id),
            ).fetchall()
            released: list[str] = []
            for each in rows:
                conn.execute("DELETE FROM jobs WHERE id = ?", (each["id"],))
                if each["result_digest"] is not None:
                    released.append(each["result_digest"])
                    self._ref(conn, each["result_digest"], -1)
                key = each["cache_key"]
                if key is not None:
                    released += self._cache_drop(
                        conn,
                        "key = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE cache_key = ?)",
                        (key, key),
                    )
            return JobStatus(row["status"]), self._unreferenced(conn, released)

    def purge(self, finished_before: float, batch: int = 500) -> tuple[int, list[str]]:
        """Delete up to `batch` terminal jobs that finished before `finished_before` (the
        retention period); how many, and the result digests nothing refers to any more."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, result_digest FROM jobs WHERE finished_at < ?"
                " AND status IN ('completed', 'failed', 'cancelled') LIMIT ?",
                (finished_before, batch),
            ).fetchall()
            released = []
            for row in rows:
                conn.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
                if row["result_digest"] is not None:
                    self._ref(conn, row["result_digest"], -1)
                    released.append(row["result_digest"])
            released += self._cache_drop(conn, "used_at < ?", (finished_before,))
            return len(rows), self._unreferenced(conn, released)

    def result_digests(self) -> set[str]:
        """Every result digest a row refers to."""
        with self._connection() as conn:
            rows = conn.execute("SELECT digest FROM results").fetchall()
        return {row["digest"] for row in rows}

    def legacy_results(self, limit: int = 50) -> list[tuple[str, str]]:
        """(job id, result JSON) of results a version 1 store kept in its rows."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, result_json FROM jobs WHERE result_json IS NOT NULL LIMIT ?", (limit,)
            ).fetchall()
        return [(row["id"], row["result_json"]) for row in rows]

    def adopt_legacy(self, job_id: str, result: StoredResult) -> None:
        """Point a version 1 job at its result's files, and drop the copy in its row."""
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
            self._ref(conn, result.digest, +1)

    def recover(self, *, max_attempts: int, give_up_error_json: str) -> Recovery:
        """Account for every job a killed process left behind, in one transaction.

        A job found running was interrupted: it is queued again, unless it had already been
        started `max_attempts` times, in which case it fails with `give_up_error_json`.
        """
        now = self._clock()
        with self._transaction() as conn:
            failed = conn.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error_json = ?"
                " WHERE status = 'running' AND kind = 'backtest' AND attempts >= ?",
                (now, give_up_error_json, max_attempts),
            ).rowcount
            requeued = conn.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, progress_done = NULL,"
                " progress_total = NULL, progress_at = NULL"
                " WHERE status = 'running' AND kind = 'backtest'"
            ).rowcount
            queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
        return Recovery(requeued=requeued, failed=failed, queued=queued[0])

    # -- sweeps ----------------------------------------------------------------------------

    def children(self, parent: str) -> list[Child]:
        """A sweep's combinations and out-of-sample run, in insertion (grid) order."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, status, config_json, result_digest, error_json, cached FROM jobs"
                " WHERE parent = ? ORDER BY seq",
                (parent,),
            ).fetchall()
        return [
            Child(
                id=row["id"],
                status=JobStatus(row["status"]),
                config_json=row["config_json"],
                result_digest=row["result_digest"],
                error_json=row["error_json"],
                cached=bool(row["cached"]),
            )
            for row in rows
        ]

    def job(self, job_id: str) -> Job | None:
        """Any tenant's job: for the server's own bookkeeping, never for a caller."""
        with self._connection() as conn:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            found = row.fetchone()
        return None if found is None else _job(found)

    def parent_of(self, job_id: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT parent FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row["parent"]

    def running_sweeps(self) -> list[str]:
        """Every sweep not yet terminal (to finish after a restart)."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE kind = 'sweep' AND status = 'running'"
            ).fetchall()
        return [row["id"] for row in rows]

    def sweep_summary(self, job_id: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT summary_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row["summary_json"]

    def update_sweep(
        self,
        job_id: str,
        summary_json: str,
        *,
        status: JobStatus = JobStatus.RUNNING,
        error_json: str | None = None,
        progress: tuple[int, int] | None = None,
    ) -> bool:
        """Record a running sweep's state, or finish it; False when it is no longer running
        (cancelled or deleted meanwhile)."""
        now = self._clock()
        done, total = progress or (None, None)
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET summary_json = ?, status = ?, error_json = ?,"
                " finished_at = CASE WHEN ? THEN ? ELSE NULL END,"
                " progress_done = COALESCE(?, progress_done),"
                " progress_total = COALESCE(?, progress_total), progress_at = ?"
                " WHERE id = ? AND kind = 'sweep' AND status = 'running'",
                (
                    summary_json,
                    status.value,
                    error_json,
                    status.is_terminal,
                    now,
                    done,
                    total,
                    now,
                    job_id,
                ),
            ).rowcount
        return bool(changed)

    def add_child(self, child: NewJob) -> bool:
        """Insert one more run of a sweep (its out-of-sample run) if the sweep still runs."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'running'", (child.parent,)
            ).fetchone()
            if row is None:
                return False
            self._insert_row(conn, child)
            return True

    def cancel_children(self, parent: str) -> list[str]:
        """Cancel a sweep's unfinished runs; the ids of those that were running."""
        with self._transaction() as conn:
            running = [
                row["id"]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE parent = ? AND status = 'running'", (parent,)
                ).fetchall()
            ]
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?"
                " WHERE parent = ? AND status IN ('queued', 'running')",
                (self._clock(), parent),
            )
        return running

    # -- cache and counters ------------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        """The cached outcome under `key`, marked as used now (it is evicted last)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status, result_digest, error_json FROM outcomes WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                conn.execute("UPDATE outcomes SET used_at = ? WHERE key = ?", (self._clock(), key))
        if row is None:
            return None
        return CacheEntry(JobStatus(row["status"]), row["result_digest"], row["error_json"])

    @staticmethod
    def _bump(conn: sqlite3.Connection, tenant: str, name: str) -> None:
        conn.execute(
            "INSERT INTO counters (tenant, name, value) VALUES (?, ?, 1)"
            " ON CONFLICT (tenant, name) DO UPDATE SET value = value + 1",
            (tenant, name),
        )

    def counts(self, tenant: str) -> TenantCounts:
        """The tenant's jobs by status, cache hits, and average run and queue-wait times."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE tenant = ? GROUP BY status",
                (tenant,),
            ).fetchall()
            hits = conn.execute(
                "SELECT value FROM counters WHERE tenant = ? AND name = 'cache_hits'", (tenant,)
            ).fetchone()
            # Cached jobs never ran: they would pull both averages towards zero.
            times = conn.execute(
                "SELECT AVG(finished_at - started_at) AS run, AVG(started_at - created_at) AS wait"
                " FROM jobs WHERE tenant = ? AND status = 'completed' AND cached = 0"
                " AND started_at IS NOT NULL",
                (tenant,),
            ).fetchone()
        by_status = dict.fromkeys(JobStatus, 0)
        for row in rows:
            by_status[JobStatus(row["status"])] = row["n"]
        return TenantCounts(
            by_status=by_status,
            cache_hits=0 if hits is None else hits["value"],
            avg_execution_seconds=times["run"],
            avg_wait_seconds=times["wait"],
        )

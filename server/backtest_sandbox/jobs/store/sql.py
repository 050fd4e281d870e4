"""The job store's logic, once, in the SQL that SQLite and PostgreSQL both speak.

A subclass brings connections, transactions and the schema (sqlite.py, postgres.py).
Statements are written with `?` placeholders; the PostgreSQL connection translates them.

Concurrency: SQLite runs one write transaction at a time (BEGIN IMMEDIATE), so every check
made in a transaction still holds at its commit. PostgreSQL keeps that guarantee where it
matters by taking turns (`Turn`): every write transaction of more than one statement waits for
the "writes" turn, claims for the "claims" turn, and the few single-statement writes need none.
Where a claim or a single-statement write could change a row between a transaction's read and
its write, the read locks the row (`_LOCK_ROWS`, FOR UPDATE), and a claim skips the rows others
hold (`_CLAIM_LOCK`, FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from backtest_sandbox.domain.errors import QuotaExceeded
from backtest_sandbox.domain.models import JobStatus

from . import (
    CacheEntry,
    Child,
    Job,
    JobSummary,
    Limits,
    NewJob,
    Recovery,
    StoredResult,
    TenantCounts,
)

# Who waits for whom (PostgreSQL; SQLite's one write lock covers all three).
Turn = Literal["writes", "claims", "none"]

_SUMMARY_COLUMNS = (
    "seq, id, tenant, status, language, symbol, timeframe, cached, created_at, started_at, "
    "finished_at, progress_done, progress_total, progress_at, attempts, error_json, kind, parent"
)
_JOB_COLUMNS = f"{_SUMMARY_COLUMNS}, code, config_json, cache_key, result_digest"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the shared logic needs of a connection: rows read by column name."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


def _summary_fields(row: Any) -> dict[str, Any]:
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


def _summary(row: Any) -> JobSummary:
    return JobSummary(**_summary_fields(row))


def _job(row: Any) -> Job:
    return Job(
        **_summary_fields(row),
        code=row["code"],
        config_json=row["config_json"],
        cache_key=row["cache_key"],
        result_digest=row["result_digest"],
    )


class SqlJobStore(ABC):
    """Every `JobStore` method over the subclass's connections. Thread-safe."""

    # Appended to a read whose rows the transaction then changes (see the module docstring).
    _LOCK_ROWS = ""
    _CLAIM_LOCK = ""
    # Every row after the first N: `LIMIT -1 OFFSET ?` in SQLite, `OFFSET ?` in PostgreSQL.
    _ROWS_AFTER = "LIMIT -1 OFFSET ?"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # Bumped after every committed write: lets readers wait for a change, not poll.
        self._changes = threading.Condition()
        self._version = 0

    @abstractmethod
    def _connection(self) -> AbstractContextManager[Connection]:
        """A connection for reads, each statement on its own."""

    @abstractmethod
    def _transaction(self, turn: Turn = "writes") -> AbstractContextManager[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises.
        A commit calls `_changed`."""

    @abstractmethod
    def close(self) -> None: ...

    # -- changes -------------------------------------------------------------------------------

    def _changed(self) -> None:
        with self._changes:
            self._version += 1
            self._changes.notify_all()

    def version(self) -> int:
        with self._changes:
            return self._version

    def wait_for_change(self, seen: int, timeout: float) -> int:
        with self._changes:
            self._changes.wait_for(lambda: self._version != seen, timeout=max(timeout, 0.0))
            return self._version

    # -- jobs ----------------------------------------------------------------------------------

    def insert(self, job: NewJob, limits: Limits | None = None) -> Job:
        limits = limits or Limits()
        with self._transaction() as conn:
            _check_quotas(conn, job, limits)
            return self._insert_row(conn, job)

    def insert_sweep(self, sweep: NewJob, children: list[NewJob], limits: Limits) -> None:
        with self._transaction() as conn:
            _check_quotas(conn, sweep, limits, extra_jobs=len(children))
            waiting = sum(child.status is JobStatus.QUEUED for child in children)
            cap = limits.max_queued_combinations
            if cap is not None and waiting:
                queued = conn.execute(
                    "SELECT COUNT(*) AS n FROM jobs WHERE tenant = ? AND status = 'queued'"
                    " AND parent IS NOT NULL",
                    (sweep.tenant,),
                ).fetchone()["n"]
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

    def _insert_row(self, conn: Connection, job: NewJob) -> Job:
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
                job.cached,
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
        adjust_refs(conn, job.result_digest, +1)
        if job.cached:
            _bump(conn, job.tenant, "cache_hits")
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job.id,))
        return _job(row.fetchone())

    def get(self, tenant: str, job_id: str) -> Job | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
        return None if row is None else _job(row)

    def get_summary(self, tenant: str, job_id: str) -> JobSummary | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?",
                (job_id, tenant),
            ).fetchone()
        return None if row is None else _summary(row)

    def code(self, tenant: str, job_id: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT code FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
        return None if row is None else str(row["code"])

    def list_jobs(
        self, tenant: str, *, status: JobStatus | None, limit: int, before_seq: int | None
    ) -> tuple[list[JobSummary], bool]:
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
        now = self._clock()
        under_cap = "" if max_running_per_tenant is None else " AND COALESCE(r.n, 0) < ?"
        args = () if max_running_per_tenant is None else (max_running_per_tenant,)
        with self._transaction("claims") as conn:
            row = conn.execute(
                "SELECT j.id, j.tenant FROM jobs AS j"
                " LEFT JOIN (SELECT tenant, COUNT(*) AS n FROM jobs"
                "  WHERE status = 'running' AND kind = 'backtest'"
                "  GROUP BY tenant) AS r ON r.tenant = j.tenant"
                " LEFT JOIN tenants AS t ON t.tenant = j.tenant"
                f" WHERE j.status = 'queued' AND j.kind = 'backtest'{under_cap}"
                " ORDER BY COALESCE(r.n, 0), COALESCE(t.last_claim, 0), j.created_at, j.seq"
                f" LIMIT 1{self._CLAIM_LOCK}",
                args,
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

    def claim(self, job_id: str) -> Job | None:
        now = self._clock()
        with self._transaction("claims") as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND kind = 'backtest'" + self._LOCK_ROWS,
                (job_id,),
            ).fetchone()
            if row is None or JobStatus(row["status"]).is_terminal:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1,"
                " progress_done = NULL, progress_total = NULL, progress_at = NULL WHERE id = ?",
                (now, job_id),
            )
            claimed = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            return _job(claimed.fetchone())

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        with self._transaction("none") as conn:
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
        now = self._clock()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT tenant FROM jobs WHERE id = ? AND status = 'running'" + self._LOCK_ROWS,
                (job_id,),
            ).fetchone()
            if row is None:
                orphans = [] if result is None else _unreferenced(conn, [result.digest])
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
            adjust_refs(conn, digest, +1)
            evicted: list[str] = []
            if cache_key is not None:
                evicted = self._cache_put(
                    conn, cache_key, status, digest, error_json, now, cache_max_entries
                )
            return True, _unreferenced(conn, evicted)

    def _cache_put(
        self,
        conn: Connection,
        key: str,
        status: JobStatus,
        digest: str | None,
        error_json: str | None,
        now: float,
        max_entries: int | None,
    ) -> list[str]:
        """Cache an outcome (a reference to its result); evict the least recently used
        beyond `max_entries`. The digests that lost a reference."""
        released = _cache_drop(conn, "key = ?", (key,))
        conn.execute(
            "INSERT INTO outcomes (key, status, result_digest, error_json, used_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, status.value, digest, error_json, now),
        )
        adjust_refs(conn, digest, +1)
        if max_entries is not None:
            released += _cache_drop(
                conn,
                f"key IN (SELECT key FROM outcomes ORDER BY used_at DESC {self._ROWS_AFTER})",
                (max_entries,),
            )
        return released

    def requeue(self, job_id: str) -> bool:
        with self._transaction("none") as conn:
            return bool(
                conn.execute(
                    "UPDATE jobs SET status = 'queued', started_at = NULL, attempts = attempts - 1,"
                    " progress_done = NULL, progress_total = NULL, progress_at = NULL"
                    " WHERE id = ? AND status = 'running'",
                    (job_id,),
                ).rowcount
            )

    def cancel(self, tenant: str, job_id: str) -> tuple[JobStatus, JobStatus] | None:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND tenant = ?" + self._LOCK_ROWS,
                (job_id, tenant),
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
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND tenant = ?" + self._LOCK_ROWS,
                (job_id, tenant),
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                "SELECT id, cache_key, result_digest FROM jobs WHERE id = ? OR parent = ?"
                + self._LOCK_ROWS,
                (job_id, job_id),
            ).fetchall()
            released: list[str] = []
            for each in rows:
                conn.execute("DELETE FROM jobs WHERE id = ?", (each["id"],))
                if each["result_digest"] is not None:
                    released.append(each["result_digest"])
                    adjust_refs(conn, each["result_digest"], -1)
                key = each["cache_key"]
                if key is not None:
                    released += _cache_drop(
                        conn,
                        "key = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE cache_key = ?)",
                        (key, key),
                    )
            return JobStatus(row["status"]), _unreferenced(conn, released)

    def purge(self, finished_before: float, batch: int = 500) -> tuple[int, list[str]]:
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
                    adjust_refs(conn, row["result_digest"], -1)
                    released.append(row["result_digest"])
            released += _cache_drop(conn, "used_at < ?", (finished_before,))
            return len(rows), _unreferenced(conn, released)

    def result_digests(self) -> set[str]:
        with self._connection() as conn:
            rows = conn.execute("SELECT digest FROM results").fetchall()
        return {row["digest"] for row in rows}

    def recover(self, *, max_attempts: int, give_up_error_json: str) -> Recovery:
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
            queued = conn.execute(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'"
            ).fetchone()["n"]
        return Recovery(requeued=requeued, failed=failed, queued=queued)

    # -- sweeps --------------------------------------------------------------------------------

    def children(self, parent: str) -> list[Child]:
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
        with self._connection() as conn:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            found = row.fetchone()
        return None if found is None else _job(found)

    def parent_of(self, job_id: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT parent FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row["parent"]

    def running_sweeps(self) -> list[str]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE kind = 'sweep' AND status = 'running'"
            ).fetchall()
        return [row["id"] for row in rows]

    def queued_runs(self, created_before: float) -> list[Job]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'queued' AND kind = 'backtest'"
                " AND created_at < ? ORDER BY created_at, seq",
                (created_before,),
            ).fetchall()
        return [_job(row) for row in rows]

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
        expected_summary: str | None = None,
    ) -> bool:
        now = self._clock()
        done, total = progress or (None, None)
        finished = now if status.is_terminal else None
        same = "" if expected_summary is None else " AND summary_json = ?"
        with self._transaction("none") as conn:
            changed = conn.execute(
                "UPDATE jobs SET summary_json = ?, status = ?, error_json = ?, finished_at = ?,"
                " progress_done = COALESCE(?, progress_done),"
                " progress_total = COALESCE(?, progress_total), progress_at = ?"
                " WHERE id = ? AND kind = 'sweep' AND status = 'running'" + same,
                (summary_json, status.value, error_json, finished, done, total, now, job_id)
                + (() if expected_summary is None else (expected_summary,)),
            ).rowcount
        return bool(changed)

    def add_child(
        self,
        child: NewJob,
        *,
        summary_json: str | None = None,
        expected_summary: str | None = None,
    ) -> bool:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT summary_json FROM jobs WHERE id = ? AND status = 'running'"
                + self._LOCK_ROWS,
                (child.parent,),
            ).fetchone()
            if row is None:
                return False
            if summary_json is not None:
                if row["summary_json"] != expected_summary:
                    return False  # another process moved the sweep on first
                conn.execute(
                    "UPDATE jobs SET summary_json = ? WHERE id = ?", (summary_json, child.parent)
                )
            self._insert_row(conn, child)
            return True

    def cancel_children(self, parent: str) -> list[str]:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, status FROM jobs WHERE parent = ? AND status IN ('queued', 'running')"
                + self._LOCK_ROWS,
                (parent,),
            ).fetchall()
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?"
                " WHERE parent = ? AND status IN ('queued', 'running')",
                (self._clock(), parent),
            )
        return [row["id"] for row in rows if row["status"] == JobStatus.RUNNING.value]

    # -- cache and counters --------------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        with self._transaction("none") as conn:
            row = conn.execute(
                "SELECT status, result_digest, error_json FROM outcomes WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                conn.execute("UPDATE outcomes SET used_at = ? WHERE key = ?", (self._clock(), key))
        if row is None:
            return None
        return CacheEntry(JobStatus(row["status"]), row["result_digest"], row["error_json"])

    def counts(self, tenant: str) -> TenantCounts:
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
                " FROM jobs WHERE tenant = ? AND status = 'completed' AND NOT cached"
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


# -- statements shared by the methods above ------------------------------------------------------


def _check_quotas(conn: Connection, job: NewJob, limits: Limits, extra_jobs: int = 0) -> None:
    if limits.max_queued is not None and job.status is JobStatus.QUEUED:
        queued = conn.execute(  # a sweep's combinations have their own quota
            "SELECT COUNT(*) AS n FROM jobs WHERE tenant = ? AND status = 'queued'"
            " AND parent IS NULL",
            (job.tenant,),
        ).fetchone()["n"]
        if queued >= limits.max_queued:
            raise QuotaExceeded(
                "tenant_max_queued",
                f"{queued} of your backtests are queued, the most a tenant may have"
                " waiting; cancel some or wait until they start",
                limit=limits.max_queued,
                current=queued,
            )
    if limits.max_stored_jobs is not None:
        stored = conn.execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE tenant = ?", (job.tenant,)
        ).fetchone()["n"]
        if stored + extra_jobs >= limits.max_stored_jobs:
            raise QuotaExceeded(
                "tenant_max_stored_jobs",
                f"you keep {stored} backtests, the most a tenant may keep; delete some"
                " (delete_backtest) or wait for the retention period to remove old ones",
                limit=limits.max_stored_jobs,
                current=stored,
            )
    if limits.max_stored_bytes is not None:
        # PostgreSQL's SUM of a BIGINT is a NUMERIC (a Decimal): cast back to an integer.
        used = conn.execute(
            "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS n FROM results WHERE tenant = ?",
            (job.tenant,),
        ).fetchone()["n"]
        if used >= limits.max_stored_bytes:
            raise QuotaExceeded(
                "tenant_max_stored_bytes",
                f"your stored results take {used} bytes, the most a tenant may keep;"
                " delete some backtests (delete_backtest)",
                limit=limits.max_stored_bytes,
                current=used,
            )


def _cache_drop(conn: Connection, where: str, args: tuple[Any, ...]) -> list[str]:
    """Delete the cache entries `where` holds; the digests that lost a reference. DELETE ...
    RETURNING: an entry two transactions drop at once loses its reference once."""
    rows = conn.execute(
        f"DELETE FROM outcomes WHERE {where} RETURNING result_digest", args
    ).fetchall()
    digests = sorted(row["result_digest"] for row in rows if row["result_digest"] is not None)
    for digest in digests:
        adjust_refs(conn, digest, -1)
    return digests


def adjust_refs(conn: Connection, digest: str | None, delta: int) -> None:
    if digest is not None:
        conn.execute("UPDATE results SET refs = refs + ? WHERE digest = ?", (delta, digest))


def _unreferenced(conn: Connection, digests: list[str]) -> list[str]:
    """Of `digests`, those no row refers to any more: their rows go, their files are the
    caller's to remove (after the commit)."""
    gone = []
    for digest in sorted(set(digests)):
        conn.execute("DELETE FROM results WHERE digest = ? AND refs <= 0", (digest,))
        if conn.execute("SELECT 1 AS kept FROM results WHERE digest = ?", (digest,)).fetchone():
            continue
        gone.append(digest)
    return gone


def _bump(conn: Connection, tenant: str, name: str) -> None:
    conn.execute(
        "INSERT INTO counters (tenant, name, value) VALUES (?, ?, 1)"
        " ON CONFLICT (tenant, name) DO UPDATE SET value = counters.value + 1",
        (tenant, name),
    )

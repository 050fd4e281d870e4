"""The job store: jobs, the references to their results, the result cache, the tenants'
fair-claim order and counters, and sweeps (rows of kind 'sweep' whose runs name it `parent`).

`JobStore` is what the service, the scheduler and the sweeps use; two implementations pass one
test suite (tests/unit/test_store.py):

- `SqliteJobStore` (sqlite.py): one file in the state directory. The default: one
  machine, nothing to set up.
- `PostgresJobStore` (postgres.py): a PostgreSQL database that several processes share,
  chosen by `BACKTEST_DATABASE_URL`.

Both keep their logic in `SqlJobStore` (sql.py): one transaction per state change, quotas
counted in the transaction that inserts. Results themselves are files (results.py); the store
keeps their digests, sizes and reference counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from backtest_sandbox.domain.models import JobStatus

if TYPE_CHECKING:
    from backtest_sandbox.domain.settings import Settings

SQLITE_FILE = "jobs.sqlite3"  # in the state directory


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

    def queued_again(self) -> NewJob:
        """The row as it was submitted: what a workflow needs to be started (again)."""
        return NewJob(
            id=self.id,
            tenant=self.tenant,
            language=self.language,
            code=self.code,
            config_json=self.config_json,
            symbol=self.symbol,
            timeframe=self.timeframe,
            parent=self.parent,
        )


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


class JobStore(Protocol):
    """The durable job store. Thread-safe: any thread may call any method.

    A write that breaks a database constraint (an id already taken) raises the driver's
    IntegrityError (sqlite3's or psycopg's) and changes nothing.
    """

    # -- life and changes ------------------------------------------------------------------

    def version(self) -> int:
        """A number that changes after every committed write this store sees."""
        ...

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until `version()` differs from `seen` (a write committed), or `timeout`
        passes; the version then. Which writes wake it is the implementation's to say."""
        ...

    def close(self) -> None:
        """Close every connection. Safe to call twice."""
        ...

    # -- jobs ------------------------------------------------------------------------------

    def insert(self, job: NewJob, limits: Limits | None = None) -> Job:
        """Insert one job; a cache hit refers to its stored result and counts as a hit.

        The tenant's quotas of `limits` are counted in the same transaction, so concurrent
        submissions cannot overshoot them: queued jobs (for a queued job), and stored jobs
        and bytes (for every job, cache hits included).

        Raises:
            QuotaExceeded: a quota is full; the rule names its setting.
        """
        ...

    def insert_sweep(self, sweep: NewJob, children: list[NewJob], limits: Limits) -> None:
        """Insert a sweep and its combinations in one transaction: all of them or none.

        The sweep counts as one job against the tenant's quotas; its queued combinations count
        against `max_queued_combinations`, and every row against the stored-jobs quota.

        Raises:
            QuotaExceeded: a quota would be exceeded; nothing is inserted.
        """
        ...

    def get(self, tenant: str, job_id: str) -> Job | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        ...

    def get_summary(self, tenant: str, job_id: str) -> JobSummary | None:
        """Like `get`, without reading the code and the result (cheap for polling)."""
        ...

    def code(self, tenant: str, job_id: str) -> str | None:
        """The job's code, or None when it is not the tenant's (for audit lines)."""
        ...

    def list_jobs(
        self, tenant: str, *, status: JobStatus | None, limit: int, before_seq: int | None
    ) -> tuple[list[JobSummary], bool]:
        """The tenant's jobs, newest first, older than `before_seq`; and whether more remain.
        A sweep's runs are listed by the sweep, not here."""
        ...

    def claim_next(self, *, max_running_per_tenant: int | None = None) -> Job | None:
        """Mark the next queued job running and return it, or None when nothing is claimable.

        Fair across tenants: the tenant with the fewest running jobs goes first, then the one
        served least recently, then its oldest job. One tenant's flood of jobs thus never holds
        back another tenant's first job, even with one worker; alone, a tenant is served first
        in, first out. A tenant with `max_running_per_tenant` jobs running is skipped. Two
        claimers never get the same job.
        """
        ...

    def claim(self, job_id: str) -> Job | None:
        """Mark this job running for one more attempt and return it; None when it is not to
        run (cancelled, deleted, finished, or a sweep). A job found running was a lost
        worker's: this attempt takes it over. For dispatchers that choose the job themselves
        (Temporal); the local scheduler uses `claim_next`."""
        ...

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        """Record bars done of total for a running job (ignored once it is not running)."""
        ...

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
        ...

    def requeue(self, job_id: str) -> bool:
        """Put a running job back in the queue without counting the attempt (a clean stop)."""
        ...

    def cancel(self, tenant: str, job_id: str) -> tuple[JobStatus, JobStatus] | None:
        """Cancel a queued or running job at once.

        Returns (status before, status now), or None when the job is not the tenant's. A job
        already terminal keeps its status.
        """
        ...

    def delete(self, tenant: str, job_id: str) -> tuple[JobStatus, list[str]] | None:
        """Delete the tenant's job; its status before and the result digests nothing refers
        to any more (the caller removes their files), or None when not found.

        Its cached outcome goes too: deleting a backtest forgets its result. A sweep's runs go
        with it.
        """
        ...

    def purge(self, finished_before: float, batch: int = 500) -> tuple[int, list[str]]:
        """Delete up to `batch` terminal jobs that finished before `finished_before` (the
        retention period); how many, and the result digests nothing refers to any more."""
        ...

    def result_digests(self) -> set[str]:
        """Every result digest a row refers to."""
        ...

    def legacy_results(self, limit: int = 50) -> list[tuple[str, str]]:
        """(job id, result JSON) of results a version 1 store kept in its rows (SQLite only:
        results have been files since version 2)."""
        ...

    def adopt_legacy(self, job_id: str, result: StoredResult) -> None:
        """Point a version 1 job at its result's files, and drop the copy in its row."""
        ...

    def recover(self, *, max_attempts: int, give_up_error_json: str) -> Recovery:
        """Account for every job a killed process left behind, in one transaction.

        A job found running was interrupted: it is queued again, unless it had already been
        started `max_attempts` times, in which case it fails with `give_up_error_json`.
        """
        ...

    # -- sweeps ----------------------------------------------------------------------------

    def children(self, parent: str) -> list[Child]:
        """A sweep's combinations and out-of-sample run, in insertion (grid) order."""
        ...

    def job(self, job_id: str) -> Job | None:
        """Any tenant's job: for the server's own bookkeeping, never for a caller."""
        ...

    def parent_of(self, job_id: str) -> str | None:
        """The sweep a job belongs to, or None."""
        ...

    def running_sweeps(self) -> list[str]:
        """Every sweep not yet terminal (to finish after a restart)."""
        ...

    def queued_runs(self, created_before: float) -> list[Job]:
        """Every backtest (not a sweep) still queued that was submitted before the time."""
        ...

    def sweep_summary(self, job_id: str) -> str | None:
        """A sweep's stored state (jobs/sweeps.py), or None."""
        ...

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
        """Record a running sweep's state, or finish it; False when it is no longer running
        (cancelled or deleted meanwhile), or, given `expected_summary`, when its state is no
        longer that one (another process following the sweep changed it first)."""
        ...

    def add_child(
        self,
        child: NewJob,
        *,
        summary_json: str | None = None,
        expected_summary: str | None = None,
    ) -> bool:
        """Insert one more run of a sweep (its out-of-sample run) if the sweep still runs.

        With `summary_json`, the sweep's state becomes it in the same transaction, and only if
        the state is still `expected_summary`: of several processes following one sweep that
        all decide to add the run, exactly one does; the others get False.
        """
        ...

    def cancel_children(self, parent: str) -> list[str]:
        """Cancel a sweep's unfinished runs; the ids of those that were running."""
        ...

    # -- cache and counters ----------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        """The cached outcome under `key`, marked as used now (it is evicted last)."""
        ...

    def counts(self, tenant: str) -> TenantCounts:
        """The tenant's jobs by status, cache hits, and average run and queue-wait times."""
        ...


def open_store(settings: Settings) -> JobStore:
    """The store the settings name: PostgreSQL when `database_url` is set, else the SQLite
    file in the state directory.

    Raises:
        sqlite3.Error | psycopg.Error: the store cannot be opened.
    """
    # Imported here: the implementations import this module's records, and psycopg is loaded
    # only by those who use PostgreSQL.
    url = settings.database_url.get_secret_value()
    if url:
        from .postgres import PostgresJobStore

        return PostgresJobStore(url)
    from .sqlite import SqliteJobStore

    return SqliteJobStore(settings.state_dir / SQLITE_FILE)

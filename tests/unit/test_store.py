"""The job store: transactions, tenancy, fair claiming, cache, and restart recovery.

Every test runs against both implementations: SQLite (a file in a temporary directory) and
PostgreSQL (a database of its own on a real server the session starts: tests/postgres.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from backtest_sandbox.domain.errors import QuotaExceeded
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.store import (
    CacheEntry,
    JobStore,
    Limits,
    NewJob,
    Recovery,
    StoredResult,
    open_store,
)
from backtest_sandbox.jobs.store.postgres import PostgresJobStore
from backtest_sandbox.jobs.store.sqlite import SqliteJobStore

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite3"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def reopen(
    backend: str, path: Path, clock: Clock, request: pytest.FixtureRequest
) -> Iterator[Callable[[], JobStore]]:
    """Opens another store object on the test's one database: as another process would, or
    the same process after a restart. Every store it opened is closed at the end."""
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    opened: list[JobStore] = []

    def make() -> JobStore:
        store: JobStore
        if backend == "postgres":
            store = PostgresJobStore(url, clock=clock)
        else:
            store = SqliteJobStore(path, clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(reopen: Callable[[], JobStore]) -> JobStore:
    return reopen()


@pytest.fixture
def integrity_error(backend: str) -> type[Exception]:
    """What each driver raises when a constraint (a job id taken) refuses a write."""
    return sqlite3.IntegrityError if backend == "sqlite" else psycopg.IntegrityError


def new_job(n: int, tenant: str = "a", **changes: object) -> NewJob:
    job = NewJob(
        id=f"bt_{n:032x}",
        tenant=tenant,
        language="python",
        code=f"code {n}",
        config_json="{}",
        symbol="SPY",
        timeframe="D1",
    )
    return replace(job, **changes)  # type: ignore[arg-type]


def stored(n: int) -> StoredResult:
    return StoredResult(f"{n:064d}", 100)


RESULT = stored(0)


def test_insert_then_get_returns_the_whole_row(store: JobStore, clock: Clock) -> None:
    inserted = store.insert(new_job(1, cache_key="k1"))
    assert store.get("a", inserted.id) == inserted
    assert inserted.status is JobStatus.QUEUED
    assert inserted.created_at == clock.now
    assert (inserted.started_at, inserted.finished_at, inserted.attempts) == (None, None, 0)
    assert (inserted.code, inserted.cache_key, inserted.cached) == ("code 1", "k1", False)


def test_another_tenants_job_is_not_found(store: JobStore) -> None:
    store.insert(new_job(1, tenant="a"))
    assert store.get("b", new_job(1).id) is None
    assert store.get_summary("b", new_job(1).id) is None
    assert store.cancel("b", new_job(1).id) is None
    assert store.delete("b", new_job(1).id) is None
    assert store.get("a", new_job(1).id) is not None


def test_a_failed_insert_changes_nothing(store: JobStore, integrity_error: type[Exception]) -> None:
    store.insert(new_job(1))
    with pytest.raises(integrity_error):
        store.insert(new_job(1, cached=True, status=JobStatus.COMPLETED))
    # The cache-hit counter is bumped in the same transaction, so it rolled back too.
    assert store.counts("a").cache_hits == 0
    assert store.counts("a").by_status[JobStatus.QUEUED] == 1


def test_a_terminal_insert_is_finished_at_once(store: JobStore, clock: Clock) -> None:
    job = store.insert(new_job(1, status=JobStatus.FAILED, error_json='{"x": 1}', cached=True))
    assert (job.status, job.finished_at, job.error_json) == (
        JobStatus.FAILED,
        clock.now,
        '{"x": 1}',
    )
    assert store.counts("a").cache_hits == 1


def test_claim_is_fifo_for_one_tenant(store: JobStore, clock: Clock) -> None:
    for n in range(3):
        store.insert(new_job(n))
        clock.advance(1)
    claimed = [store.claim_next() for _ in range(4)]
    assert [job.id if job else None for job in claimed] == [
        new_job(0).id,
        new_job(1).id,
        new_job(2).id,
        None,
    ]
    first = claimed[0]
    assert first is not None
    assert (first.status, first.attempts, first.started_at) == (JobStatus.RUNNING, 1, clock.now)


def test_claim_is_fair_across_tenants(store: JobStore, clock: Clock) -> None:
    for n in range(5):  # tenant a floods the queue first
        store.insert(new_job(n, tenant="a"))
        clock.advance(1)
    store.insert(new_job(99, tenant="b"))
    first, second, third = (store.claim_next() for _ in range(3))
    assert first is not None and second is not None and third is not None
    assert first.id == new_job(0).id
    # a has one running, b none: b's only job goes next although it is the newest.
    assert second.id == new_job(99).id
    assert third.id == new_job(1).id


def test_claim_serves_the_least_recently_served_tenant_first(store: JobStore, clock: Clock) -> None:
    """With one worker nobody has a job running at claim time: round robin decides."""
    for n in range(3):
        store.insert(new_job(n, tenant="a"))
        clock.advance(1)
    store.insert(new_job(50, tenant="b"))
    store.insert(new_job(51, tenant="b"))
    order = []
    while (job := store.claim_next()) is not None:
        order.append(job.id)
        store.finish(job.id, JobStatus.COMPLETED, result=RESULT)
    assert order == [new_job(n).id for n in (0, 50, 1, 51, 2)]


def test_a_job_claimed_by_id_runs_again_when_its_worker_was_lost(
    store: JobStore, clock: Clock
) -> None:
    store.insert(new_job(1))
    first = store.claim(new_job(1).id)
    assert first is not None and (first.status, first.attempts) == (JobStatus.RUNNING, 1)
    clock.advance(5)
    again = store.claim(new_job(1).id)  # its worker was lost: another one takes it over
    assert again is not None and (again.attempts, again.started_at) == (2, clock.now)
    assert store.claim_next() is None  # never handed out twice by the local scheduler
    store.cancel("a", new_job(1).id)
    assert store.claim(new_job(1).id) is None  # cancelled: not to run
    assert store.claim("bt_" + "f" * 32) is None  # deleted, or never there
    store.insert(new_job(2, kind="sweep"))
    assert store.claim(new_job(2).id) is None  # a sweep is followed, not run


def test_of_two_processes_following_a_sweep_one_adds_its_run(
    reopen: Callable[[], JobStore],
) -> None:
    one, other = reopen(), reopen()  # two servers following the same sweep
    sweep = new_job(1, kind="sweep", status=JobStatus.RUNNING, summary_json='{"oos_id":null}')
    one.insert_sweep(sweep, [new_job(2, parent=sweep.id)], Limits())
    read = one.sweep_summary(sweep.id)
    assert read == other.sweep_summary(sweep.id) == '{"oos_id":null}'
    mine = new_job(3, parent=sweep.id)
    theirs = new_job(4, parent=sweep.id)
    wins = []
    barrier = threading.Barrier(2)

    def add(store: JobStore, child: NewJob) -> None:
        barrier.wait()
        state = f'{{"oos_id":"{child.id}"}}'
        wins.append(store.add_child(child, summary_json=state, expected_summary=read))

    threads = [
        threading.Thread(target=add, args=(one, mine)),
        threading.Thread(target=add, args=(other, theirs)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False, True]
    children = [c.id for c in one.children(sweep.id)]
    assert len(children) == 2 and children[0] == new_job(2).id
    assert one.sweep_summary(sweep.id) == f'{{"oos_id":"{children[1]}"}}'
    # A stale state no longer writes: the loser's progress would have forgotten the run.
    assert not other.update_sweep(sweep.id, str(read), expected_summary=read)
    assert one.sweep_summary(sweep.id) == f'{{"oos_id":"{children[1]}"}}'
    now = one.sweep_summary(sweep.id)
    assert other.update_sweep(sweep.id, str(now), progress=(1, 2), expected_summary=now)


def test_progress_is_recorded_only_while_running(store: JobStore, clock: Clock) -> None:
    store.insert(new_job(1))
    store.set_progress(new_job(1).id, 1, 10)
    assert store.get("a", new_job(1).id).progress_done is None  # type: ignore[union-attr]
    store.claim_next()
    clock.advance(2)
    store.set_progress(new_job(1).id, 5, 10)
    job = store.get_summary("a", new_job(1).id)
    assert job is not None
    assert (job.progress_done, job.progress_total, job.progress_at) == (5, 10, clock.now)


def test_finish_records_and_caches_in_one_step(store: JobStore) -> None:
    store.insert(new_job(1, cache_key="k"))
    store.claim_next()
    assert store.finish(new_job(1).id, JobStatus.COMPLETED, result=RESULT, cache_key="k") == (
        True,
        [],
    )
    job = store.get("a", new_job(1).id)
    assert job is not None
    assert (job.status, job.result_digest) == (JobStatus.COMPLETED, RESULT.digest)
    assert store.cache_get("k") == CacheEntry(JobStatus.COMPLETED, RESULT.digest, None)
    assert store.result_digests() == {RESULT.digest}


def test_finish_after_cancel_changes_nothing(store: JobStore) -> None:
    store.insert(new_job(1, cache_key="k"))
    store.claim_next()
    assert store.cancel("a", new_job(1).id) == (JobStatus.RUNNING, JobStatus.CANCELLED)
    # Not recorded, and the result written for it is nobody's: the caller removes it.
    assert store.finish(new_job(1).id, JobStatus.COMPLETED, result=RESULT, cache_key="k") == (
        False,
        [RESULT.digest],
    )
    job = store.get("a", new_job(1).id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.result_digest is None
    assert store.cache_get("k") is None


def test_cancel_keeps_a_terminal_status(store: JobStore) -> None:
    store.insert(new_job(1, status=JobStatus.FAILED, error_json="{}"))
    assert store.cancel("a", new_job(1).id) == (JobStatus.FAILED, JobStatus.FAILED)


def test_cancel_queued_is_never_claimed(store: JobStore) -> None:
    store.insert(new_job(1))
    assert store.cancel("a", new_job(1).id) == (JobStatus.QUEUED, JobStatus.CANCELLED)
    assert store.claim_next() is None


def test_delete_forgets_the_cached_result_unless_shared(store: JobStore) -> None:
    store.insert(new_job(1, cache_key="k"))
    store.insert(new_job(2, cache_key="k"))
    store.claim_next()
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=RESULT, cache_key="k")
    # The job's reference goes; the cache's stays while job 2 shares the key.
    assert store.delete("a", new_job(1).id) == (JobStatus.COMPLETED, [])
    assert store.cache_get("k") is not None
    assert store.delete("a", new_job(2).id) == (JobStatus.QUEUED, [RESULT.digest])
    assert store.cache_get("k") is None
    assert store.get("a", new_job(1).id) is None
    assert store.result_digests() == set()


def test_a_cache_hit_shares_the_result_and_counts_against_the_quota(store: JobStore) -> None:
    store.insert(new_job(1, cache_key="k"))
    store.claim_next()
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=RESULT, cache_key="k")
    limits = Limits(max_stored_jobs=2)
    hit = new_job(2, status=JobStatus.COMPLETED, cached=True, result_digest=RESULT.digest)
    assert store.insert(hit, limits).result_digest == RESULT.digest
    with pytest.raises(QuotaExceeded) as refused:
        store.insert(replace(hit, id="bt_" + "9" * 32), limits)
    assert (refused.value.rule, refused.value.limit, refused.value.current) == (
        "tenant_max_stored_jobs",
        2,
        2,
    )
    # One stored result, three references (two jobs, the cache): freed with the last one.
    assert store.delete("a", new_job(1).id) == (JobStatus.COMPLETED, [])
    assert store.delete("a", new_job(2).id) == (JobStatus.COMPLETED, [RESULT.digest])


def test_the_stored_bytes_quota(store: JobStore) -> None:
    store.insert(new_job(1))
    store.claim_next()
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=StoredResult("d" * 64, 5000))
    with pytest.raises(QuotaExceeded, match="^tenant_max_stored_bytes: your stored results"):
        store.insert(new_job(2), Limits(max_stored_bytes=5000))
    store.insert(new_job(3, tenant="b"), Limits(max_stored_bytes=5000))  # b stores nothing


def test_the_cache_keeps_its_most_recently_used_entries(store: JobStore, clock: Clock) -> None:
    for n in range(3):
        store.insert(new_job(n, cache_key=f"k{n}"))
        store.claim_next()
        clock.advance(1)
        store.finish(
            new_job(n).id,
            JobStatus.COMPLETED,
            result=stored(n),
            cache_key=f"k{n}",
            cache_max_entries=2,
        )
    assert store.cache_get("k0") is None  # evicted: the oldest
    assert store.cache_get("k1") is not None and store.cache_get("k2") is not None


def test_retention_purges_old_finished_jobs(store: JobStore, clock: Clock) -> None:
    store.insert(new_job(1, cache_key="k"))
    store.claim_next()
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=RESULT, cache_key="k")
    store.insert(new_job(2))  # queued: never purged
    clock.advance(100)
    assert store.purge(finished_before=clock.now - 50) == (1, [RESULT.digest])
    assert store.get("a", new_job(1).id) is None and store.cache_get("k") is None
    assert store.get("a", new_job(2).id) is not None


def test_requeue_does_not_count_the_attempt(store: JobStore) -> None:
    store.insert(new_job(1))
    store.claim_next()
    assert store.requeue(new_job(1).id)
    job = store.get("a", new_job(1).id)
    assert job is not None
    assert (job.status, job.attempts, job.started_at) == (JobStatus.QUEUED, 0, None)


def test_list_pages_newest_first_per_tenant(store: JobStore) -> None:
    for n in range(5):
        store.insert(new_job(n))
    store.insert(new_job(50, tenant="b"))
    store.claim_next()  # job 0 runs
    page, more = store.list_jobs("a", status=None, limit=2, before_seq=None)
    assert [j.id for j in page] == [new_job(4).id, new_job(3).id] and more
    page, more = store.list_jobs("a", status=None, limit=2, before_seq=page[-1].seq)
    assert [j.id for j in page] == [new_job(2).id, new_job(1).id] and more
    page, more = store.list_jobs("a", status=None, limit=2, before_seq=page[-1].seq)
    assert [j.id for j in page] == [new_job(0).id] and not more
    running, more = store.list_jobs("a", status=JobStatus.RUNNING, limit=10, before_seq=None)
    assert [j.id for j in running] == [new_job(0).id] and not more


def test_counts_and_average_times(store: JobStore, clock: Clock) -> None:
    store.insert(new_job(1))
    store.insert(new_job(2))
    store.insert(new_job(3, tenant="b"))
    clock.advance(4)  # job 1 waits 4 s
    store.claim_next()
    clock.advance(2)  # and runs 2 s
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=stored(1))
    counts = store.counts("a")
    assert counts.by_status == {
        JobStatus.QUEUED: 1,
        JobStatus.RUNNING: 0,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 0,
    }
    assert (counts.avg_execution_seconds, counts.avg_wait_seconds) == (2.0, 4.0)
    assert store.counts("nobody").avg_execution_seconds is None


def test_recover_accounts_for_every_job(reopen: Callable[[], JobStore]) -> None:
    store = reopen()
    store.insert(new_job(1))  # will be completed
    store.insert(new_job(2))  # running once, interrupted
    store.insert(new_job(3))  # running a second time, interrupted again
    store.insert(new_job(4))  # still queued
    store.claim_next()
    store.finish(new_job(1).id, JobStatus.COMPLETED, result=stored(1))
    store.claim_next()
    store.claim_next()
    store.requeue(new_job(3).id)  # rewind job 3 to simulate its earlier interrupted run:
    with store._transaction() as conn:  # type: ignore[attr-defined]  # what a restart sees
        conn.execute(
            "UPDATE jobs SET status = 'running', attempts = 2 WHERE id = ?", (new_job(3).id,)
        )
    store.close()  # the "process" dies here; nothing in memory survives

    reopened = reopen()
    recovery = reopened.recover(max_attempts=2, give_up_error_json='{"type": "sandbox_error"}')
    assert recovery == Recovery(requeued=1, failed=1, queued=2)
    statuses = {n: reopened.get("a", new_job(n).id).status for n in (1, 2, 3, 4)}  # type: ignore[union-attr]
    assert statuses == {
        1: JobStatus.COMPLETED,
        2: JobStatus.QUEUED,
        3: JobStatus.FAILED,
        4: JobStatus.QUEUED,
    }
    third = reopened.get("a", new_job(3).id)
    assert third is not None and third.error_json == '{"type": "sandbox_error"}'
    again = reopened.claim_next()
    assert again is not None and (again.id, again.attempts) == (new_job(2).id, 2)


def test_a_newer_sqlite_schema_is_refused(path: Path) -> None:
    SqliteJobStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        SqliteJobStore(path)


@pytest.mark.postgres
def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    PostgresJobStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE store_schema SET version = 99")
    with pytest.raises(psycopg.DatabaseError, match="schema version 99 is newer"):
        PostgresJobStore(postgres_url)


def test_the_sqlite_database_is_in_wal_mode(path: Path) -> None:
    SqliteJobStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_a_write_wakes_a_waiting_reader(store: JobStore, integrity_error: type[Exception]) -> None:
    seen = store.version()
    assert store.wait_for_change(seen, timeout=0.01) == seen  # nothing written: times out
    writer = threading.Timer(0.05, lambda: store.insert(new_job(1)))
    writer.start()
    try:
        assert store.wait_for_change(seen, timeout=10) == seen + 1
    finally:
        writer.join()
    failed = store.version()
    with pytest.raises(integrity_error):
        store.insert(new_job(1))  # the same id again: rolled back, so no change to wake on
    assert store.version() == failed


# -- several processes on one database ---------------------------------------------------------

THREADS = 8


def at_once(work: Callable[[int], None], threads: int = THREADS) -> None:
    """Run `work(n)` on `threads` threads released together, and re-raise the first failure."""
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            work(n)
        except BaseException as e:  # handed to the test's thread below
            failures.append(e)

    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    if failures:
        raise failures[0]


def test_concurrent_submissions_never_overshoot_a_quota(reopen: Callable[[], JobStore]) -> None:
    """Two store objects (two servers) on one database, eight threads submitting at once."""
    servers = [reopen(), reopen()]
    accepted: list[str] = []
    refused: list[QuotaExceeded] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        for k in range(10):
            job = new_job(100 * n + k)
            try:
                servers[n % 2].insert(job, Limits(max_queued=25))
            except QuotaExceeded as e:
                with lock:
                    refused.append(e)
            else:
                with lock:
                    accepted.append(job.id)

    at_once(submit)
    assert (len(accepted), len(refused)) == (25, 55)
    assert {e.rule for e in refused} == {"tenant_max_queued"}
    assert servers[0].counts("a").by_status[JobStatus.QUEUED] == 25


def test_concurrent_claimers_never_take_the_same_job(reopen: Callable[[], JobStore]) -> None:
    servers = [reopen(), reopen()]
    for n in range(60):
        servers[0].insert(new_job(n, tenant="abc"[n % 3]))
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        while (job := servers[n % 2].claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    at_once(claim)
    assert len(claimed) == 60 and len(set(claimed)) == 60


def test_concurrent_claimers_respect_the_per_tenant_cap(reopen: Callable[[], JobStore]) -> None:
    servers = [reopen(), reopen()]
    for n in range(10):
        servers[0].insert(new_job(n, tenant="a"))
    servers[0].insert(new_job(99, tenant="b"))
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(n: int) -> None:  # nothing finishes: a's cap stays reached
        for _ in range(3):
            job = servers[n % 2].claim_next(max_running_per_tenant=2)
            if job is not None:
                with lock:
                    claimed.append(job.tenant)

    at_once(claim)
    assert sorted(claimed) == ["a", "a", "b"]


def test_a_claim_and_a_cancel_at_once_agree(reopen: Callable[[], JobStore]) -> None:
    """Whichever goes first, the canceller learns whether the job had started (to kill its
    container), and a cancelled job is never handed to a worker."""
    servers = [reopen(), reopen()]
    for round_ in range(20):
        job = new_job(round_)
        servers[0].insert(job)
        outcome: dict[str, object] = {}

        def race(n: int, job_id: str = job.id, outcome: dict[str, object] = outcome) -> None:
            if n == 0:
                outcome["claimed"] = servers[0].claim_next()
            else:
                outcome["cancel"] = servers[1].cancel("a", job_id)

        at_once(race, threads=2)
        claimed, cancel = outcome["claimed"], outcome["cancel"]
        if claimed is None:
            assert cancel == (JobStatus.QUEUED, JobStatus.CANCELLED)
        else:
            assert cancel == (JobStatus.RUNNING, JobStatus.CANCELLED)


@pytest.mark.postgres
def test_a_write_of_another_process_wakes_a_waiting_reader(postgres_url: str) -> None:
    """LISTEN/NOTIFY: a status wait in one server wakes on a job finished by another."""
    reader, writer = PostgresJobStore(postgres_url), PostgresJobStore(postgres_url)
    try:
        seen = reader.version()
        assert reader.wait_for_change(seen, timeout=0.05) == seen  # nothing written
        later = threading.Timer(0.05, lambda: writer.insert(new_job(1)))
        later.start()
        try:
            assert reader.wait_for_change(seen, timeout=10) == seen + 1
        finally:
            later.join()
        assert reader.get("a", new_job(1).id) is not None
        quiet = reader.version()
        assert writer.claim_next() is not None and writer.claim_next() is None
        reader.wait_for_change(quiet, timeout=10)
        # One claim changed a row and one changed nothing: only the first is told.
        assert reader.wait_for_change(quiet + 1, timeout=0.2) == quiet + 1
    finally:
        reader.close()
        writer.close()


# -- which store the settings open -------------------------------------------------------------


def test_the_default_store_is_the_sqlite_file_in_the_state_dir(tmp_path: Path) -> None:
    store = open_store(Settings(state_dir=tmp_path))
    try:
        assert isinstance(store, SqliteJobStore) and store.path == tmp_path / "jobs.sqlite3"
    finally:
        store.close()


@pytest.mark.postgres
def test_a_database_url_opens_postgres(tmp_path: Path, postgres_url: str) -> None:
    store = open_store(Settings(state_dir=tmp_path, database_url=postgres_url))
    try:
        assert isinstance(store, PostgresJobStore)
        assert store.insert(new_job(1)).status is JobStatus.QUEUED
    finally:
        store.close()
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_a_database_url_must_be_postgresql_and_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(database_url="mysql://user:hunter2@db/jobs")
    (error,) = refused.value.errors()
    assert error["loc"] == ("database_url",)
    # What the CLI prints (the location and the message) holds the rule, not the password.
    assert "must be empty (SQLite) or a postgresql:// URL" in error["msg"]
    assert "hunter2" not in error["msg"]
    assert "hunter2" not in repr(Settings(database_url="postgresql://u:hunter2@db/jobs"))

"""Worker slots: `max_workers` threads, each running one job at a time through the engine.

The queue itself lives in the job store (durable); the threads only claim from it. A thread
runs at most one job, so at most `max_workers` containers run at once whatever the queue holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from pydantic import ValidationError

from backtest_sandbox.domain.code import check_language
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import ErrorType, InvalidRequest
from backtest_sandbox.domain.models import JobStatus, RunError, RunOutcome
from backtest_sandbox.sandbox.runner import ProgressCallback

from . import audit
from .engine import RunRequest
from .results import ResultFiles
from .store import Job, JobStore, NewJob, StoredResult

logger = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL = 0.2  # seconds: at most ~5 progress writes per second per job
IDLE_POLL_SECONDS = 5.0  # a missed wake-up costs at most this; wake-ups are not relied on alone

# Failures that the same code, config and data always reproduce: worth caching. Timeouts,
# memory kills, crashes and infrastructure faults may not repeat, so they never are.
CACHEABLE_ERRORS = frozenset(
    {
        ErrorType.SYNTAX_ERROR,
        ErrorType.RUNTIME_ERROR,
        ErrorType.DATA_ERROR,
        ErrorType.UNSUPPORTED_LANGUAGE,
    }
)


class EngineLike(Protocol):
    """What the service needs of `engine.Engine` (a fake in unit tests)."""

    def cache_key(self, request: RunRequest) -> str | None: ...

    def run(
        self,
        request: RunRequest,
        *,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RunOutcome: ...

    def remove_orphans(self) -> int: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


class Dispatcher(Protocol):
    """What the service needs of whatever runs its queued jobs: the `Scheduler`'s threads
    here (BACKTEST_BACKEND=local), or Temporal's workers (temporal/dispatch.py)."""

    @property
    def workers(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self) -> None: ...

    def submitted(self, job: NewJob) -> None: ...

    def cancel(self, job_id: str) -> bool: ...


def outcome_is_cacheable(outcome: RunOutcome) -> bool:
    if outcome.status is JobStatus.COMPLETED:
        return outcome.result is not None
    return (
        outcome.status is JobStatus.FAILED
        and outcome.error is not None
        and outcome.error.type in CACHEABLE_ERRORS
    )


def internal_failure(message: str) -> RunOutcome:
    return RunOutcome(
        status=JobStatus.FAILED, error=RunError(type=ErrorType.SANDBOX_ERROR, message=message)
    )


class ProgressWriter:
    """Stores a job's progress, throttled: Backtrader reports far more often than anyone polls."""

    def __init__(self, store: JobStore, job_id: str, clock: Callable[[], float]) -> None:
        self._store = store
        self._job_id = job_id
        self._clock = clock
        self._last = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if done < total and now - self._last < PROGRESS_WRITE_INTERVAL:
            return
        self._last = now
        self._store.set_progress(self._job_id, done, total)


class Scheduler:
    """Runs queued jobs on `workers` threads; cancels running ones on request.

    A tenant with `tenant_max_running` jobs running is skipped when the next job is picked:
    its other jobs wait, and a free worker takes another tenant's job or stays idle.
    """

    def __init__(
        self,
        store: JobStore,
        engine: EngineLike,
        results: ResultFiles,
        *,
        workers: int,
        tenant_max_running: int | None = None,
        cache_max_entries: int | None = None,
        on_change: Callable[[str], None] = lambda job_id: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._engine = engine
        self._results = results
        self._cache_max_entries = cache_max_entries
        self._on_change = on_change  # told the id of a job whose status changed
        self._workers = workers
        self._tenant_max_running = tenant_max_running  # None: a tenant may use every worker
        self._clock = clock
        self._cond = threading.Condition()
        self._signals = 0  # bumped by every wake(); lets a worker see a wake it raced with
        self._stopping = False
        self._running: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def busy(self) -> int:
        """Worker slots running a job right now (including one being killed)."""
        with self._cond:
            return len(self._running)

    def start(self) -> None:
        """Start the worker threads."""
        with self._cond:
            if self._threads:
                return
            self._threads = [
                threading.Thread(target=self._work, name=f"backtest-worker-{n}", daemon=True)
                for n in range(self._workers)
            ]
        for thread in self._threads:
            thread.start()

    def submitted(self, job: NewJob) -> None:
        """A job was queued: the workers claim it from the store."""
        self.wake()

    def wake(self) -> None:
        """Tell idle workers that a job was queued."""
        with self._cond:
            self._signals += 1
            self._cond.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Kill the job's container if a worker runs it here; True if it did."""
        with self._cond:
            event = self._running.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, kill running containers, and put their jobs back in the queue.

        The jobs are re-queued without counting the attempt: a clean stop is not a crash,
        and the next start runs them from the beginning.
        """
        with self._cond:
            self._stopping = True
            events = list(self._running.values())
            self._cond.notify_all()
        for event in events:
            event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            logger.warning("workers still busy after %.0f s: %s", timeout, ", ".join(alive))

    # -- worker threads ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
            try:
                self._step()
            except Exception:
                # Top of a worker thread: a fault (the store's disk full or locked too long)
                # must not silently cost a worker slot for the life of the process.
                logger.exception("a backtest worker failed; it carries on")
                with self._cond:
                    self._cond.wait(1.0)

    def _step(self) -> None:
        with self._cond:
            seen = self._signals
        job = self._claim()
        if job is None:
            with self._cond:
                if self._signals == seen and not self._stopping:
                    self._cond.wait(IDLE_POLL_SECONDS)
            return
        try:
            self._run(job)
        finally:
            with self._cond:
                self._running.pop(job.id, None)

    def _claim(self) -> Job | None:
        # Claim and register under one lock: a cancel that sees the job running in the store
        # then always finds its event here.
        with self._cond:
            if self._stopping:
                return None
            job = self._store.claim_next(max_running_per_tenant=self._tenant_max_running)
            if job is not None:
                self._running[job.id] = threading.Event()
        if job is not None:
            self._on_change(job.id)
        return job

    def _run(self, job: Job) -> None:
        with self._cond:
            cancel = self._running[job.id]
        try:
            request = RunRequest(
                backtest_id=job.id,
                code=job.code,
                config=BacktestConfig.model_validate_json(job.config_json),
                language=check_language(job.language),
                tenant=job.tenant,
                session=job.parent,
            )
        except (ValidationError, InvalidRequest) as e:
            # Written by an older server whose config rules have since changed.
            self._record(job, internal_failure(f"the stored config is no longer valid: {e}"))
            return
        progress = ProgressWriter(self._store, job.id, self._clock)
        try:
            outcome = self._engine.run(request, cancel=cancel, on_progress=progress)
        except Exception as e:
            # Top of a worker thread: the engine promises not to raise, but if a bug makes it,
            # the job must still end and the worker must live on.
            logger.exception("the engine raised on %s", job.id)
            outcome = internal_failure(f"internal error: {type(e).__name__}")
        with self._cond:
            stopping = self._stopping
        if stopping and outcome.status is JobStatus.CANCELLED and self._store.requeue(job.id):
            # Killed by stop(), not by a user: run it again at the next start. A job the user
            # cancelled is no longer running in the store, so requeue leaves it alone, and
            # recording it below changes nothing but its audit line.
            return
        self._record(job, outcome)

    def _record(self, job: Job, outcome: RunOutcome) -> None:
        if record_outcome(self._store, self._results, job, outcome, self._cache_max_entries):
            self._on_change(job.id)


def record_outcome(
    store: JobStore,
    results: ResultFiles,
    job: Job,
    outcome: RunOutcome,
    cache_max_entries: int | None,
) -> bool:
    """Store a run's outcome (and its result) and leave its audit line; whether it was
    recorded (not when the job was cancelled or deleted while it ran).

    Shared by the scheduler's threads and the Temporal workers (temporal/worker.py).
    """
    # The result's files first, outside any transaction; then one short transaction
    # that flips the status and takes the references.
    stored = None
    if outcome.result is not None:
        stored = StoredResult(*results.write(outcome.result))
    error_json = outcome.error.model_dump_json() if outcome.error is not None else None
    cache_key = outcome.cache_key if outcome_is_cacheable(outcome) else None
    recorded, unreferenced = store.finish(
        job.id,
        outcome.status,
        result=stored,
        error_json=error_json,
        cache_key=cache_key,
        cache_max_entries=cache_max_entries,
    )
    for digest in unreferenced:
        results.remove(digest)
    audit.record(
        "finish",
        job.tenant,
        job.id,
        audit.code_sha256(job.code),
        # Not recorded: cancelled or deleted while it ran, and that decision stands.
        status=outcome.status.value if recorded else "discarded",
        error_type=None if outcome.error is None else outcome.error.type.value,
        seconds=round(outcome.execution_time_seconds, 3),
    )
    return recorded

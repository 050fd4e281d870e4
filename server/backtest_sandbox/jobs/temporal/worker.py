"""`backtest-sandbox worker`: runs backtests on this Docker host for Temporal's workflows.

One activity is one run, with today's engine (sandbox, supervisor, warm pool), one per slot.
The job's row in the shared store is the truth: the activity marks it running, writes its
progress and its outcome there (results never travel through Temporal), and Temporal only
says which worker runs which backtest.

While a run goes on, the activity heartbeats to Temporal itself (one RPC every third of the
heartbeat timeout, progress in its details) so that it knows whether the heartbeats arrive:

- a cancel requested (the user cancelled through any server) kills the container at once;
- no heartbeat delivered for longer than the heartbeat timeout means Temporal has given the
  run to another worker: this one, alive but cut off, kills its container and records
  nothing, so that the run is not run twice at once and is recorded once.

A run that ended is recorded and returned whatever its status (a strategy's fault is never
retried). Only a lost worker's run is started again, by Temporal, on another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import activity
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from backtest_sandbox.domain.code import check_language
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import BacktestSandboxError, ErrorType, InvalidRequest
from backtest_sandbox.domain.models import JobStatus, RunError, RunOutcome
from backtest_sandbox.domain.settings import Settings

from ..engine import Engine, RunRequest
from ..results import ResultFiles, open_results
from ..scheduler import EngineLike, ProgressWriter, internal_failure, record_outcome
from ..store import Job, JobStore, open_store
from .dispatch import connect
from .workflow import (
    GIVE_UP_ACTIVITY,
    RUN_ACTIVITY,
    BacktestRun,
    BacktestWorkflow,
    GiveUp,
    RunReport,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Progress:
    """The engine's progress callback: throttled into the store, and the latest kept for the
    next heartbeat."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._writer = ProgressWriter(store, job_id, time.monotonic)
        self.latest: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        self.latest = (done, total)
        self._writer(done, total)


def _request(job: Job) -> RunRequest:
    """Raises:
    ValidationError | InvalidRequest: the stored config no longer validates.
    """
    return RunRequest(
        backtest_id=job.id,
        code=job.code,
        config=BacktestConfig.model_validate_json(job.config_json),
        language=check_language(job.language),
        tenant=job.tenant,
        session=job.parent,
    )


class BacktestActivities:
    """The activities of one worker process: `run_backtest` and `give_up_backtest`."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineLike,
        store: JobStore,
        results: ResultFiles,
        client: Client,
        *,
        slots: int,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._results = results
        self._client = client
        # One thread per slot for the runs, plus room for the store's short calls.
        self._threads = ThreadPoolExecutor(slots + 4, thread_name_prefix="backtest-run")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    @activity.defn(name=RUN_ACTIVITY)
    async def run_backtest(self, run: BacktestRun) -> RunReport:
        info = activity.info()
        job = await self._off_loop(self._store.claim, run.backtest_id)
        if job is None:  # cancelled or deleted before it started here
            return RunReport(backtest_id=run.backtest_id, status="gone", recorded=False)
        if info.attempt > 1:
            # A lost worker's run: its container may be on this host, owned by a dead process.
            await self._off_loop(self._remove_orphans)
        cancel = threading.Event()
        progress = _Progress(self._store, job.id)
        running = asyncio.ensure_future(self._off_loop(self._execute, job, cancel, progress))
        try:
            lost = await self._heartbeat_until_done(running, cancel, progress, run, job.tenant)
        except asyncio.CancelledError:
            # This worker is stopping: kill the run, hand it back, let another worker run it.
            cancel.set()
            await running
            await self._off_loop(self._store.requeue, job.id)
            raise ApplicationError("the worker stopped; the run is started again") from None
        outcome = await running
        if lost:
            raise ApplicationError(
                f"this worker could not heartbeat for {run.heartbeat_seconds:.0f} s and killed "
                "its run: Temporal has given it to another worker"
            )
        recorded = await self._off_loop(
            record_outcome,
            self._store,
            self._results,
            job,
            outcome,
            self._settings.cache_max_entries,
        )
        return RunReport(backtest_id=job.id, status=outcome.status.value, recorded=recorded)

    async def _heartbeat_until_done(
        self,
        running: asyncio.Future[RunOutcome],
        cancel: threading.Event,
        progress: _Progress,
        run: BacktestRun,
        tenant: str,
    ) -> bool:
        """Heartbeat until the run ends; whether this worker lost Temporal meanwhile (and so
        killed the run). A cancel requested kills the run too, and so does a row no longer
        running in the store (cancelled or deleted while Temporal could not be told)."""
        handle = self._client.get_async_activity_handle(task_token=activity.info().task_token)
        every = run.heartbeat_seconds / 3
        delivered = time.monotonic()
        lost = False
        while True:
            done, _ = await asyncio.wait({running}, timeout=every)
            if done:
                return lost
            if cancel.is_set():
                continue  # killed: waiting for the engine to come back
            try:
                await handle.heartbeat(progress.latest, rpc_timeout=timedelta(seconds=every))
                delivered = time.monotonic()
            except AsyncActivityCancelledError:
                logger.info("%s: cancelled; killing its container", run.backtest_id)
                cancel.set()
                continue
            except Exception as e:  # the RPC failed: Temporal unreachable, or it timed out
                silent = time.monotonic() - delivered
                logger.warning("%s: heartbeat failed after %.1f s: %s", run.backtest_id, silent, e)
                if silent >= run.heartbeat_seconds:
                    logger.error(
                        "%s: no heartbeat delivered for %.1f s; killing its container",
                        run.backtest_id,
                        silent,
                    )
                    lost = True
                    cancel.set()
                    continue
            if not await self._off_loop(self._still_running, tenant, run.backtest_id):
                logger.info("%s: no longer running in the store; killing it", run.backtest_id)
                cancel.set()

    def _still_running(self, tenant: str, job_id: str) -> bool:
        try:
            job = self._store.get_summary(tenant, job_id)
        except Exception as e:  # the store unreachable: Temporal's word is enough for now
            logger.warning("%s: could not read its status: %s", job_id, e)
            return True
        return job is not None and job.status is JobStatus.RUNNING

    def _execute(self, job: Job, cancel: threading.Event, progress: _Progress) -> RunOutcome:
        try:
            request = _request(job)
        except (ValidationError, InvalidRequest) as e:
            return internal_failure(f"the stored config is no longer valid: {e}")
        try:
            return self._engine.run(request, cancel=cancel, on_progress=progress)
        except Exception as e:  # the engine promises not to raise; a bug must still end the run
            logger.exception("the engine raised on %s", job.id)
            return internal_failure(f"internal error: {type(e).__name__}")

    def _remove_orphans(self) -> None:
        try:
            removed = self._engine.remove_orphans()
        except BacktestSandboxError as e:
            logger.warning("could not look for orphaned containers: %s", e)
        else:
            if removed:
                logger.info("removed %d container(s) of dead processes", removed)

    @activity.defn(name=GIVE_UP_ACTIVITY)
    async def give_up_backtest(self, give_up: GiveUp) -> None:
        """Fail a run whose every attempt was lost, so that it does not stay running."""
        error = RunError(
            type=ErrorType.SANDBOX_ERROR,
            message=f"the run was lost {give_up.attempts} time(s) and not retried again: "
            f"{give_up.reason}",
            details={"attempts": give_up.attempts},
        )

        def fail() -> None:
            job = self._store.claim(give_up.backtest_id)
            if job is not None:
                self._store.finish(job.id, JobStatus.FAILED, error_json=error.model_dump_json())

        await self._off_loop(fail)


def workflow_runner() -> SandboxedWorkflowRunner:
    """Temporal's workflow sandbox, taking this package's modules as they are (the workflow
    module imports only temporalio; the package's __init__ imports pydantic models)."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules("backtest_sandbox")
    return SandboxedWorkflowRunner(restrictions=restrictions)


async def run_worker(
    settings: Settings,
    *,
    slots: int,
    engine: EngineLike | None = None,
    store: JobStore | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the task queue until SIGTERM or SIGINT (or `stop`): at most `slots` runs at once.

    Containers left by dead processes on this host are removed first.

    Raises:
        RuntimeError: Temporal cannot be reached (temporalio's error).
    """
    engine = engine or Engine(settings.model_copy(update={"max_workers": slots}))
    store = store or open_store(settings)
    results = open_results(settings)
    activities: BacktestActivities | None = None
    try:
        try:
            removed = engine.remove_orphans()
        except BacktestSandboxError as e:
            logger.warning("could not look for orphaned containers: %s", e)
        else:
            logger.info("removed %d container(s) left by a previous process", removed)
        engine.warm_up()
        client = await connect(settings)
        activities = BacktestActivities(settings, engine, store, results, client, slots=slots)
        stop = stop or _stop_on_signals()
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[BacktestWorkflow],
            activities=[activities.run_backtest, activities.give_up_backtest],
            max_concurrent_activities=slots,
            workflow_runner=workflow_runner(),
            # On SIGTERM the runs are killed and handed back at once, not waited for.
            graceful_shutdown_timeout=timedelta(0),
        )
        async with worker:
            logger.info(
                "worker: %d slot(s) on task queue %r of %s",
                slots,
                settings.temporal_task_queue,
                settings.temporal_address,
            )
            await stop.wait()
    finally:
        if activities is not None:
            activities.close()
        engine.close()
        results.close()
        store.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop

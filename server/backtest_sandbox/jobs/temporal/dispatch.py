"""The server's side of BACKTEST_BACKEND=temporal: start one workflow per queued backtest,
cancel it on request. What the local `Scheduler` does with threads, done by Temporal.

A `serve` process holds no state of its own: the job row is in the shared store (inserted
before the workflow starts, quotas counted there), and status, progress and results are read
from it. The Temporal client is asyncio; the service is called from threads, so the client
lives on an event loop of its own, in a thread, and calls wait on it with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.settings import Settings

from ..store import NewJob
from .workflow import WORKFLOW, BacktestRun

logger = logging.getLogger(__name__)

CALL_SECONDS = 15.0  # the longest a submit or a cancel waits for Temporal
T = TypeVar("T")


async def connect(settings: Settings) -> Client:
    """A client of the settings' Temporal service and namespace.

    Raises:
        RuntimeError: the service cannot be reached (temporalio's own error).
    """
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


def workflow_input(settings: Settings, job: NewJob) -> BacktestRun:
    config = BacktestConfig.model_validate_json(job.config_json)
    return BacktestRun(
        backtest_id=job.id,
        tenant=job.tenant,
        timeout_seconds=config.timeout_seconds,
        heartbeat_seconds=settings.temporal_heartbeat_seconds,
        max_attempts=settings.temporal_max_attempts,
    )


class TemporalDispatcher:
    """Starts and cancels backtests' workflows. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="temporal-client", daemon=True
        )
        self._client: Client | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """What `get_queue_stats` reports as workers: this server runs none; the slots are
        the workers' (`backtest-sandbox worker --slots`)."""
        return self._settings.max_workers

    def start(self) -> None:
        """Start the client's loop and connect (a failure is logged: the next call retries)."""
        self._thread.start()
        try:
            self._connected()
        except SandboxError as e:
            logger.warning("%s; the first submission will try again", e)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the client's loop. Workflows go on: they are Temporal's, not this server's."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def wake(self) -> None:
        """Nothing to wake: every job is started as it is submitted (`submitted`)."""

    def submitted(self, job: NewJob) -> None:
        """Start the job's workflow; a second start of the same id does nothing new.

        Raises:
            SandboxError: Temporal cannot be reached or refused the start.
        """
        run = workflow_input(self._settings, job)

        async def start(client: Client) -> None:
            # Already started: it ran, or runs; the job's row says how it goes.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await client.start_workflow(
                    WORKFLOW,
                    run,
                    id=job.id,
                    task_queue=self._settings.temporal_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    priority=Priority(fairness_key=job.tenant),
                )

        self._call(start)

    def cancel(self, job_id: str) -> bool:
        """Cancel the job's workflow: its worker kills the container. False when there is no
        workflow running under that id (it ended, or never started).

        Raises:
            SandboxError: Temporal cannot be reached.
        """

        async def cancel(client: Client) -> bool:
            handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(job_id)
            try:
                await handle.cancel()
            except RPCError as e:
                if e.status is RPCStatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return bool(self._call(cancel))

    # -- the loop ----------------------------------------------------------------------------

    def _connected(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = self._wait(connect(self._settings), "connect to")
            return self._client

    def _call(self, action: Any) -> Any:
        client = self._connected()
        return self._wait(action(client), "call")

    def _wait(self, coroutine: Coroutine[Any, Any, T], what: str) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(CALL_SECONDS)
        except TimeoutError:
            future.cancel()
            raise SandboxError(
                f"could not {what} Temporal at {self._settings.temporal_address} within "
                f"{CALL_SECONDS:.0f} s"
            ) from None
        except (RPCError, RuntimeError) as e:
            raise SandboxError(
                f"could not {what} Temporal at {self._settings.temporal_address}: {e}"
            ) from e

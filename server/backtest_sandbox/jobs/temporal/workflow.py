"""The Temporal side of a backtest (BACKTEST_BACKEND=temporal): one workflow per backtest.

The workflow's id is the backtest id, so a retried start does nothing new. It runs one
activity, `run_backtest`, on whichever worker has a free slot; the tenant is the fairness key,
so one tenant's flood does not hold back another's first run. The activity heartbeats; a
worker lost for longer than the heartbeat timeout has its run started again on another
worker, up to `max_attempts` starts in all. A run that ended, whatever its status (a
strategy's fault included), is never retried: the activity returns it. When every attempt was
lost, `give_up` records the failure in the job store.

This module is loaded in Temporal's workflow sandbox: it imports nothing but the standard
library and temporalio. Results never travel through Temporal (its payloads are capped at
2 MiB): the worker stores them through the job store, and the workflow only carries ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityCancellationType

WORKFLOW = "backtest"
RUN_ACTIVITY = "run_backtest"
GIVE_UP_ACTIVITY = "give_up_backtest"
# Beyond the run's own timeout: a cold container, the data, the referee's last bars.
START_TO_CLOSE_SLACK_SECONDS = 180.0


@dataclass(frozen=True)
class BacktestRun:
    """What a workflow carries: ids and timings, never code or results."""

    backtest_id: str
    tenant: str
    timeout_seconds: float
    heartbeat_seconds: float
    max_attempts: int


@dataclass(frozen=True)
class RunReport:
    """How an attempt ended: the job's status as the worker recorded it."""

    backtest_id: str
    status: str
    recorded: bool  # False: the job was cancelled or deleted meanwhile, nothing was written


@dataclass(frozen=True)
class GiveUp:
    backtest_id: str
    attempts: int
    reason: str


@workflow.defn(name=WORKFLOW)
class BacktestWorkflow:
    @workflow.run
    async def run(self, run: BacktestRun) -> RunReport:
        try:
            report: RunReport = await workflow.execute_activity(
                RUN_ACTIVITY,
                run,
                result_type=RunReport,
                start_to_close_timeout=timedelta(
                    seconds=run.timeout_seconds + START_TO_CLOSE_SLACK_SECONDS
                ),
                heartbeat_timeout=timedelta(seconds=run.heartbeat_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    backoff_coefficient=1.0,
                    maximum_attempts=run.max_attempts,
                ),
                # A cancel waits for the worker to have killed the container.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                priority=Priority(fairness_key=run.tenant),
            )
            return report
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):
                raise
            # Every attempt was lost (or the store could not be written): the job must still
            # end, with a reason, rather than stay running for ever.
            reason = str(e.cause or e)
            await workflow.execute_activity(
                GIVE_UP_ACTIVITY,
                GiveUp(run.backtest_id, run.max_attempts, reason),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=20),
                priority=Priority(fairness_key=run.tenant),
            )
            return RunReport(backtest_id=run.backtest_id, status="failed", recorded=True)

"""One sandboxed run, watched from the host: the deadline, the kill, the logs, the verdict.

The verdict is decided from what the host observed itself (its own clock, Docker's record of
the exit code and the OOM kill, whether a valid result came back) in a fixed order, so that
nothing the strategy prints or writes can claim a timeout, an OOM kill, or a clean exit.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from docker.models.containers import Container

from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.models import JobStatus, RunError

from .claim import CompletedClaim, FailedClaim, InvalidClaim, UnsupportedClaim, parse_claim
from .containers import ExitState, Sandbox
from .rundir import OversizeError, RunDir

POLL_SECONDS = 0.25  # how often the loop checks cancel and progress while it waits
STOP_WAIT_SECONDS = 15.0  # how long a SIGKILLed container may take to be reported stopped
OOM_SETTLE_SECONDS = 1.0  # how long a SIGKILL exit waits for Docker's OOM flag to arrive
SIGKILL_EXIT = 128 + signal.SIGKILL  # docker-init's exit code when its child was SIGKILLed


@dataclass(frozen=True)
class Observation:
    """What the host saw of one run; the input of `decide`."""

    timed_out: bool
    cancelled: bool
    exit_code: int
    oom_killed: bool
    elapsed_seconds: float
    result: bytes | None  # None when the result file could not be read
    result_problem: str | None  # why it could not be read (oversize, not a regular file)


@dataclass(frozen=True)
class Verdict:
    """The sandbox's decided end of a run: a status, and the error or the validated claim.

    `decide` sets the first three fields; `SandboxRunner.run` adds what it saw of the
    container (its logs, image, runtime, id, and whether it was a warm one).
    """

    status: JobStatus
    error: RunError | None = None
    claim: CompletedClaim | None = None
    logs: str = ""
    logs_cut: bool = False
    image: str | None = None
    runtime: str | None = None
    container_id: str | None = None
    warm: bool = False


def watch(
    sandbox: Sandbox,
    container: Container,
    run_dir: RunDir,
    *,
    timeout_seconds: float,
    result_cap_bytes: int,
    kill_grace_seconds: float,
    cancel: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Observation:
    """Wait for the container to stop, or stop it: at the deadline, or when cancelled.

    Raises:
        SandboxError: Docker failed while the run was watched.
    """
    started = time.monotonic()
    deadline = started + timeout_seconds
    timed_out = cancelled = False
    last_progress: tuple[int, int] | None = None
    while True:
        if cancel is not None and cancel.is_set():
            cancelled = True
            sandbox.kill(container)
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            _terminate(sandbox, container, kill_grace_seconds)
            break
        exit_code = sandbox.wait(container, min(remaining, POLL_SECONDS))
        progress = run_dir.read_progress()
        if on_progress is not None and progress is not None and progress != last_progress:
            on_progress(*progress)
            last_progress = progress
        if exit_code is not None:
            break
    elapsed = time.monotonic() - started
    state = stopped_state(sandbox, container, settle=not (timed_out or cancelled))
    return observe(run_dir, result_cap_bytes, state, timed_out, cancelled, elapsed)


def stopped_state(sandbox: Sandbox, container: Container, *, settle: bool) -> ExitState:
    """Docker's record of a container that was stopped or is stopping: its exit code, and
    its OOM flag once settled when `settle` (an exit the host did not cause).

    Raises:
        SandboxError: Docker failed.
    """
    if sandbox.wait(container, STOP_WAIT_SECONDS) is None:
        sandbox.kill(container)  # should never be needed: SIGKILL is not refusable
    state = sandbox.exit_state(container)
    return _settle_oom_flag(sandbox, container, state) if settle else state


def observe(
    run_dir: RunDir,
    result_cap_bytes: int,
    state: ExitState,
    timed_out: bool,
    cancelled: bool,
    elapsed_seconds: float,
) -> Observation:
    """The observation of a run that has ended: what the host saw, and its result file."""
    result: bytes | None = None
    problem: str | None = None
    try:
        result = run_dir.read_result(result_cap_bytes)
    except (OversizeError, OSError) as e:
        problem = str(e)
    return Observation(
        timed_out=timed_out,
        cancelled=cancelled,
        exit_code=state.exit_code,
        oom_killed=state.oom_killed,
        elapsed_seconds=elapsed_seconds,
        result=result,
        result_problem=problem,
    )


def _settle_oom_flag(sandbox: Sandbox, container: Container, state: ExitState) -> ExitState:
    """Docker's OOM flag, once it has settled.

    containerd reports the OOM event and the exit separately; under load dockerd may record
    the exit first and set OOMKilled a moment later. A SIGKILL exit we did not send is the
    only case where that matters, so only that one waits for the flag.
    """
    deadline = time.monotonic() + OOM_SETTLE_SECONDS
    while state.exit_code == SIGKILL_EXIT and not state.oom_killed:
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
        state = sandbox.exit_state(container)
    return state


def _terminate(sandbox: Sandbox, container: Container, grace_seconds: float) -> None:
    """SIGTERM (docker-init forwards it), then SIGKILL if it still runs after the grace."""
    sandbox.kill(container, "SIGTERM")
    if sandbox.wait(container, grace_seconds) is None:
        sandbox.kill(container, "SIGKILL")


def decide(
    observation: Observation,
    *,
    timeout_seconds: float,
    expected_bars: int,
    problem: RunError | None = None,
) -> Verdict:
    """The verdict, in a fixed order: what the host saw first, what the sandbox said last.

    `problem` is what the host's side of a verified run's bar pipe saw end the run early (a
    bar unanswered past its bound, a message that breaks the protocol); the container was
    killed for it, so it comes before anything the exit could say.
    """
    o = observation
    if o.cancelled:
        return Verdict(JobStatus.CANCELLED)
    if o.timed_out:
        return _failed(
            ErrorType.TIMEOUT,
            f"the run passed its wall-clock limit of {timeout_seconds:g} s and was killed",
            limit_seconds=timeout_seconds,
            elapsed_seconds=round(o.elapsed_seconds, 3),
        )
    if problem is not None:
        return Verdict(JobStatus.FAILED, problem)
    if o.oom_killed:
        return _failed(
            ErrorType.MEMORY_LIMIT,
            "the container ran out of memory and was killed by the kernel",
            exit_code=o.exit_code,
        )
    if o.exit_code != 0:
        return _failed(ErrorType.CRASHED, _describe_exit(o.exit_code), exit_code=o.exit_code)
    if o.result is None:
        return _failed(
            ErrorType.RESULT_INVALID, f"the result could not be read: {o.result_problem}"
        )
    if not o.result:
        return _failed(
            ErrorType.CRASHED,
            "the process exited with code 0 without writing a result",
            exit_code=0,
        )
    try:
        claim = parse_claim(o.result, expected_bars=expected_bars)
    except InvalidClaim as e:
        return _failed(ErrorType.RESULT_INVALID, f"the result breaks the protocol: {e}")
    if isinstance(claim, UnsupportedClaim):
        return _failed(
            ErrorType.UNSUPPORTED_FEATURE,
            claim.error.message,
            feature=claim.feature,
        )
    if isinstance(claim, FailedClaim):
        failure = claim.error
        return _failed(
            ErrorType.RUNTIME_ERROR,
            f"{failure.exc_type}: {failure.message}",
            exception_type=failure.exc_type,
            traceback=failure.traceback,
        )
    return Verdict(JobStatus.COMPLETED, claim=claim)


def _failed(error_type: ErrorType, message: str, **details: object) -> Verdict:
    return Verdict(JobStatus.FAILED, RunError(type=error_type, message=message, details=details))


def _describe_exit(code: int) -> str:
    if code > 128:  # the shell convention docker-init follows: 128 + signal number
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"the process died with exit code {code} ({name}) without a result"
    return f"the process exited with code {code} without a result"

"""PID 1 of a strategy's container: starts the harness, reaps, forwards signals, and ends the
container at its own deadline, whether or not the host is still there to do it.

The host's supervisor owns the clock and normally kills a run at its timeout. This is the
second line, for when the host process is gone (SIGKILLed, its machine lost): nothing else
would ever stop the container. As PID 1 of the container's PID namespace it cannot be killed
or stopped from inside (Linux drops SIGKILL and SIGSTOP sent to a namespace's init by its own
processes), so the strategy, which runs as the same uid, cannot disarm it. Killing it from
inside where a runtime allows it (gVisor) ends the container: the same outcome.

The deadline: an idle container (a warm one waiting for its job) lives at most
`--idle-seconds`; once the job spec is in /job, the run lives at most the spec's
`deadline_seconds` (the config's timeout plus a grace the host chose) from then on. A session
(session.py: several jobs, /job/runs/1/spec.json, 2, ...) lives at most its own
`deadline_seconds` past its start, and past the arrival of each job's spec at most that
spec's `deadline_seconds` plus the session's `idle_seconds`.

Standard library only and no imports of the harness: it starts in milliseconds, and nothing
the strategy does to its own process's modules reaches it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

POLL_SECONDS = 0.2
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
DEADLINE_EXIT = 128 + signal.SIGKILL  # what docker-init would report for a SIGKILLed child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PID 1 of a strategy's container")
    parser.add_argument("--idle-seconds", type=float, required=True)
    parser.add_argument("--spec", default="/job/spec.json")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.getpid() != 1:
        # It ends by killing every process it may signal: only ever as a container's init.
        parser.error("runs only as PID 1 of a container")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required")

    started = time.monotonic()
    # SIGCHLD is blocked and waited for: a child's exit wakes the loop at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    child = os.fork()
    if child == 0:  # the harness, with the signal mask it would have had without us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.execvp(command[0], command)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)

    clock = Deadline(args.spec, started + args.idle_seconds)
    while True:
        status = _reap(child)
        if status is not None:
            _kill_everything()  # a daemon the strategy left behind dies with the run
            return status
        if time.monotonic() >= clock.update():
            print(
                "backtest-sandbox init: the container passed its own deadline; ending it",
                file=sys.stderr,
                flush=True,
            )
            _kill_everything()
            return DEADLINE_EXIT
        signal.sigtimedwait({signal.SIGCHLD}, POLL_SECONDS)


def _reap(child: int) -> int | None:
    """Reap every exited process; the child's exit status once it has exited, else None."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 1  # no children at all: nothing to wait for
        if pid == 0:
            return None
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


class Deadline:
    """When the container must end, moved on as the job spec (or a session's specs) arrive."""

    def __init__(self, spec_path: str, idle_deadline: float) -> None:
        self._spec_path = spec_path
        self._runs_dir = os.path.join(os.path.dirname(spec_path), "runs")
        self.at = idle_deadline
        self._spec_seen = False
        self._session_idle: float | None = None  # set once the spec is a session's
        self._next_run = 1

    def update(self) -> float:
        if not self._spec_seen:
            spec = _read_spec(self._spec_path)
            if spec is not None:
                self._spec_seen = True
                self.at = time.monotonic() + float(spec["deadline_seconds"])
                if "session" in spec:
                    self._session_idle = float(spec["session"]["idle_seconds"])
        elif self._session_idle is not None:
            # The newest run's spec: a run shorter than a poll may be over, and its directory
            # removed, before this looks, so no run number is waited for.
            newest = _newest_run(self._runs_dir)
            spec = None
            if newest is not None and newest >= self._next_run:
                spec = _read_spec(os.path.join(self._runs_dir, str(newest), "spec.json"))
            if newest is not None and spec is not None:
                self._next_run = newest + 1
                run_end = time.monotonic() + float(spec["deadline_seconds"]) + self._session_idle
                self.at = max(self.at, run_end)
        return self.at


def _newest_run(runs_dir: str) -> int | None:
    try:
        numbers = [int(name) for name in os.listdir(runs_dir) if name.isdigit()]
    except OSError:
        return None
    return max(numbers, default=None)


def _read_spec(path: str) -> dict[str, object] | None:
    """The spec with its `deadline_seconds`, once it is there (the host renames it in whole)."""
    try:
        with open(path, encoding="utf-8") as stream:
            spec = json.load(stream)
        float(spec["deadline_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return spec if isinstance(spec, dict) else None


def _kill_everything() -> None:
    """SIGKILL every other process of the container (PID 1 itself is spared by the kernel)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:  # reap them, so the exit is clean
        try:
            if os.waitpid(-1, 0)[0] == 0:
                break
        except ChildProcessError:
            break


if __name__ == "__main__":
    sys.exit(main())

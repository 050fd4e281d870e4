"""A session: one container runs several jobs of one sweep, each in a fresh forked process.

A sweep's combinations are the same tenant's same code with other parameters. Starting a
container and importing Backtrader for each cost more than most backtests themselves, so the
host may hand a container a session instead of a job (PROTOCOL.md "Sessions"). The harness,
imports done, then becomes this loop, the parent of each run:

    wait for /job/runs/<n>/spec.json       (n = 1, 2, ...; gives up after `idle_seconds`)
    fork: the child runs that job as a harness would, with its own /job/runs/<n> and
          /out/runs/<n>, stdout and stderr on /out/runs/<n>/logs.pipe, and exits
    reap it, kill every process it left, empty /tmp, /dev/shm and /dev/mqueue, remove the
          System V IPC objects it made
    report "<n> <exit status>" on the control FIFO

The strategy runs as the same uid as this parent, so the parent is made non-dumpable first:
no child can ptrace it, read its memory or open its file descriptors through /proc. The
control FIFO, the only way the host hears a run's exit status, is unlinked by the host once
the parent has opened it, and each child closes its copy before any user code runs. A child
can still kill or stop the parent; the container then ends or times out, which is the same
verdict it could get by itself. Nothing of one run reaches the next: its processes are dead,
its files, message queues and shared memory gone, and the next child is forked from the
parent, whose memory it never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

SPEC_POLL_SECONDS = 0.005
SCRATCH_DIRS = ("/tmp", "/dev/shm", "/dev/mqueue")  # what a run can write that outlives it
# System V IPC objects outlive their maker too (the container's IPC namespace is private):
# each /proc/sysvipc table, and the call that removes one of its entries by id.
_IPC_RMID = 0
_SYSV_REMOVE = {
    "shm": lambda libc, ipc_id: libc.shmctl(ipc_id, _IPC_RMID, None),
    "msg": lambda libc, ipc_id: libc.msgctl(ipc_id, _IPC_RMID, None),
    "sem": lambda libc, ipc_id: libc.semctl(ipc_id, 0, _IPC_RMID),
}
LEFTOVER_WAIT_SECONDS = 5.0  # how long the processes a run left may take to die
CONTROL_NAME = "control.pipe"
LOGS_NAME = "logs.pipe"
_PR_SET_DUMPABLE = 4

RunOne = Callable[[dict[str, Any], str, str], None]  # (spec, job dir, out dir): result written


def serve(session: dict[str, Any], job_dir: str, out_dir: str, run_one: RunOne) -> None:
    """Run the session's jobs one after another until none comes for `idle_seconds`."""
    _set_dumpable(False)
    control = os.open(os.path.join(out_dir, CONTROL_NAME), os.O_WRONLY)
    os.write(control, b"ready\n")
    idle_seconds = float(session["idle_seconds"])
    number = 1
    while True:
        run_job_dir = os.path.join(job_dir, "runs", str(number))
        run_out_dir = os.path.join(out_dir, "runs", str(number))
        spec = wait_for_spec(os.path.join(run_job_dir, "spec.json"), idle_seconds)
        if spec is None:
            return
        status = _run_forked(spec, run_job_dir, run_out_dir, run_one, control)
        _kill_leftovers()
        _empty_scratch()
        _remove_sysv_ipc()
        os.write(control, f"{number} {status}\n".encode())
        number += 1


def _run_forked(
    spec: dict[str, Any], job_dir: str, out_dir: str, run_one: RunOne, control: int
) -> int:
    """The run's exit status as a shell reports it: its code, or 128 + the killing signal."""
    logs = os.open(os.path.join(out_dir, LOGS_NAME), os.O_WRONLY)  # the host reads it already
    child = os.fork()
    if child == 0:
        os.close(control)
        _become_run(logs)
        code = 1
        try:
            run_one(spec, job_dir, out_dir)
            code = 0
        except BaseException:  # a harness fault: reported like a crashed harness process
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
    os.close(logs)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _become_run(logs: int) -> None:
    """In the child, before any of the job: what a fresh harness process would have."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(logs, 1)
    os.dup2(logs, 2)
    os.close(logs)
    _set_dumpable(True)  # its own process, as in a container of its own
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # `random` reseeds itself after a fork; numpy's global state does not
        numpy.random.seed()


def wait_for_spec(path: str, timeout_seconds: float | None = None) -> dict[str, Any] | None:
    """The job spec at `path` once it exists (the host renames it into place, so it is then
    whole); None if none came within `timeout_seconds`. A warm container's harness waits here
    for its job, or its session, imports done; a session's parent for each run."""
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while deadline is None or time.monotonic() < deadline:
        try:
            with open(path, "rb") as stream:
                spec: dict[str, Any] = json.loads(stream.read())
                return spec
        except FileNotFoundError:
            time.sleep(SPEC_POLL_SECONDS)
    return None


def _kill_leftovers() -> None:
    """SIGKILL every process but this one and the container's init, and wait until they are
    gone (init reaps them: they were reparented to it)."""
    me = os.getpid()
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        others = [pid for pid in _pids() if pid not in (1, me)]
        if not others:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"processes {others[:5]} outlived their run")
        time.sleep(0.005)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _empty_scratch() -> None:
    for scratch in SCRATCH_DIRS:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(scratch):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def _remove_sysv_ipc() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for table, remove in _SYSV_REMOVE.items():
        with open(f"/proc/sysvipc/{table}") as listing:
            ids = [int(line.split()[1]) for line in listing.readlines()[1:]]
        for ipc_id in ids:
            remove(libc, ipc_id)


def _set_dumpable(dumpable: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")

"""Sessions: one container runs a sweep's combinations one after another, a fork per run.

A combination of a sweep is the same tenant's same code as the others, with other parameters.
Paying a container start, its network namespace's teardown and the imports for each cost more
than the backtest itself, so a worker running a sweep keeps its container between runs: the
harness in it becomes the parent of each run (runner_image/session.py, PROTOCOL.md
"Sessions"), and forks a fresh process per run, whose processes it kills and whose scratch it
empties afterwards. Only runs with the same session key (the sweep, the tenant, the code and
the memory limit) ever share a container; any other run gets a single-use one as before.

The host still owns the verdict. Its clock times each run and kills the whole container at
the timeout or on cancel (the session ends with that run). A run's exit status comes on the
control FIFO, which the harness's parent opened before any user code ran and whose name the
host then unlinked, so no run can open it. An OOM kill is read from the container's memory
cgroup on the host (the kernel's own count), never from inside.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from docker.models.containers import Container

from backtest_sandbox.domain.errors import SandboxError

from .containers import ExitState, Sandbox
from .fifo import hang_up
from .logs import LogCollector
from .rundir import RunDir
from .supervisor import POLL_SECONDS, Observation, observe, stopped_state

log = logging.getLogger(__name__)

CONTROL_PIPE = "control.pipe"  # out/: the harness's parent -> host, run exit statuses
LOGS_PIPE = "logs.pipe"  # out/runs/<n>/: the run's stdout and stderr
READY_SECONDS = 60.0  # how long a session's harness may take to answer (a cold one imports)
READ_BYTES = 64 * 1024
REAP_EVERY_SECONDS = 1.0

# Where the kernel counts a container's OOM kills, by cgroup layout (cgroup v2 under the
# systemd or the cgroupfs driver, then v1): the first that exists is read.
_OOM_COUNTERS = (
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.events", b"oom_kill "),
    ("/sys/fs/cgroup/docker/{id}/memory.events", b"oom_kill "),
    ("/sys/fs/cgroup/memory/docker/{id}/memory.oom_control", b"oom_kill "),
    ("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.oom_control", b"oom_kill "),
)


def oom_counter(container_id: str) -> Callable[[], int] | None:
    """A reader of the container's OOM kill count on the host, or None if no cgroup file
    that holds it is found (then no session: its runs' OOM kills could not be told)."""
    for pattern, key in _OOM_COUNTERS:
        path = Path(pattern.format(id=container_id))
        if path.exists():
            return lambda: _count(path, key)
    return None


def _count(path: Path, key: bytes) -> int:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:  # the container is gone, and its cgroup with it
        raise SandboxError(f"reading the container's OOM kills: {e}") from e
    for line in lines:
        if line.startswith(key):
            return int(line.split()[1])
    raise SandboxError(f"{path} has no {key!r} line")


class FifoReader:
    """The host's read end of a FIFO the sandbox writes, polled with a timeout.

    Linux reports the end of a FIFO only once a writer has come and gone, so until the
    sandbox opens it, it simply has nothing yet. `hang_up` makes a writer come and go, for a
    reader that must end although the sandbox never opened its end.

    A reader thread reads while another hangs up or closes, so those two go under a lock and
    do nothing once closed: the descriptor's number, once closed, may already be another
    FIFO's (another worker's run), and a hang-up through it would end that run's reader.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._lock = threading.Lock()
        self._closed = False

    def read(self, timeout: float | None) -> bytes | None:
        """What came, b"" at the end (or once closed), or None when nothing came within
        `timeout`."""
        ready = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        with self._lock:  # closed meanwhile: the number may be another file's now
            if self._closed:
                return b""
            if not ready:
                return None
            try:
                return os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                return None

    def hang_up(self) -> None:
        with self._lock:
            if not self._closed:
                hang_up(self._fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


class FifoLogStream:
    """A run's logs FIFO as a `LogStream` (logs.py): chunks until every writer is gone."""

    def __init__(self, path: Path) -> None:
        self._reader = FifoReader(path)

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self._reader.read(None)) != b"":
            if chunk is not None:  # None: a wake-up with nothing to read
                yield chunk

    def end(self) -> None:
        """The run is over: wake the reader even if no writer ever came."""
        self._reader.hang_up()

    def close(self) -> None:
        self._reader.close()


class Session:
    """One container serving the runs of one session key, one at a time."""

    def __init__(
        self,
        sandbox: Sandbox,
        container: Container,
        run_dir: RunDir,
        key: str,
        warm: bool,
        oom_kills: Callable[[], int],
    ) -> None:
        self.sandbox = sandbox
        self.container = container
        self.run_dir = run_dir
        self.key = key
        self.warm = warm  # whether the container came from the warm pool
        self.runs = 0
        self.alive = True  # False once a run ended the container (or broke the protocol)
        self.idle_since = time.monotonic()
        self._control: FifoReader | None = None
        self._buffer = bytearray()
        self._oom_kills = oom_kills  # the container's OOM kills so far (`oom_counter`)

    def open(self, idle_seconds: float) -> None:
        """Turn the container's harness into the session's parent and wait until it is.

        Raises:
            SandboxError: it did not answer within READY_SECONDS.
        """
        control_path = self.run_dir.make_output_fifo(CONTROL_PIPE)
        self._control = FifoReader(control_path)
        self.run_dir.write_spec(
            {
                "protocol": 1,
                "session": {"idle_seconds": idle_seconds},
                "deadline_seconds": idle_seconds,  # for init.py: until the first run comes
            }
        )
        if self._next_line(time.monotonic() + READY_SECONDS) != b"ready":
            raise SandboxError("the session's harness did not start")
        control_path.unlink()  # opened on both ends: no run can ever open it now

    def next_run(self) -> RunDir:
        self.runs += 1
        run_dir = RunDir.nested(self.run_dir, self.runs)
        run_dir.make_output_fifo(LOGS_PIPE)
        return run_dir

    def collect_logs(self, run_dir: RunDir, cap: int) -> tuple[LogCollector, FifoLogStream]:
        stream = FifoLogStream(run_dir.output_dir / LOGS_PIPE)
        return LogCollector(stream, cap), stream

    def watch(
        self,
        run_dir: RunDir,
        *,
        timeout_seconds: float,
        result_cap_bytes: int,
        cancel: threading.Event | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> Observation:
        """Wait for the run's exit status on the control FIFO, or end the container: at the
        deadline, when cancelled, or when the harness's parent is gone.

        Raises:
            SandboxError: Docker failed while the run was watched.
        """
        started = time.monotonic()
        deadline = started + timeout_seconds
        oom_before = self._oom_kills()
        timed_out = cancelled = False
        status: int | None = None
        last_progress: tuple[int, int] | None = None
        while True:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            line = self._next_line(min(deadline, now + POLL_SECONDS))
            progress = run_dir.read_progress()
            if on_progress is not None and progress is not None and progress != last_progress:
                on_progress(*progress)
                last_progress = progress
            if line is None:
                continue
            status = self._status(line)
            break
        elapsed = time.monotonic() - started
        if status is None:  # the container ends with this run
            self.alive = False
            self.sandbox.kill(self.container)
            settle = not (timed_out or cancelled)
            state = stopped_state(self.sandbox, self.container, settle=settle)
        else:
            state = ExitState(status, oom_killed=self._oom_kills() > oom_before)
        return observe(run_dir, result_cap_bytes, state, timed_out, cancelled, elapsed)

    def _status(self, line: bytes) -> int | None:
        """The exit status in the report `<run> <status>`, or None (the parent is gone, or
        the report is not this run's: the session cannot be trusted further)."""
        number, _, status = line.decode("ascii", "replace").partition(" ")
        if line == b"" or number != str(self.runs) or not status.isdigit():
            return None
        return int(status)

    def _next_line(self, deadline: float) -> bytes | None:
        """The control FIFO's next line without its newline, b"" at its end, None at the
        deadline."""
        assert self._control is not None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            chunk = self._control.read(max(0.0, deadline - time.monotonic()))
            if chunk == b"":
                return b""
            if chunk is None:
                if time.monotonic() >= deadline:
                    return None
                continue
            self._buffer += chunk

    def close(self) -> None:
        """Remove the container and the session's directory."""
        self.alive = False
        try:
            self.sandbox.remove(self.container)
        except SandboxError as e:
            log.warning("could not remove session container %s: %s", self.container.short_id, e)
        if self._control is not None:
            self._control.close()
        self.run_dir.remove()


class Sessions:
    """Idle sessions by key, each kept `keep_seconds` after its last run, at most `max_idle`."""

    def __init__(self, keep_seconds: float, max_idle: int) -> None:
        self.keep_seconds = keep_seconds
        self.max_idle = max_idle
        self._idle: list[Session] = []
        self._lock = threading.Condition()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_forever, name="sessions", daemon=True)
        self._reaper.start()

    def take(self, key: str) -> Session | None:
        with self._lock:
            for session in self._idle:
                if session.key == key:
                    self._idle.remove(session)
                    return session
        return None

    def give_back(self, session: Session) -> None:
        """Keep a session for its key's next run, or close it if it cannot serve one."""
        evicted = [session]
        if session.alive:
            with self._lock:
                if not self._closed:
                    session.idle_since = time.monotonic()
                    self._idle.append(session)
                    evicted = self._idle[: max(0, len(self._idle) - self.max_idle)]
                    del self._idle[: len(evicted)]
        for old in evicted:
            old.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        self._reaper.join(timeout=10)
        for session in idle:
            session.close()

    def _reap_forever(self) -> None:
        while True:
            with self._lock:
                self._lock.wait(REAP_EVERY_SECONDS)
                if self._closed:
                    return
                now = time.monotonic()
                expired = [s for s in self._idle if now - s.idle_since > self.keep_seconds]
                for session in expired:
                    self._idle.remove(session)
            for session in expired:
                session.close()

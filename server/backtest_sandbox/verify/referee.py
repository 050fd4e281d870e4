"""The referee: a trusted process per verified run that replays the accepted events.

It runs runner_image/referee.py (our code, never a strategy's) with the host's own Python, so
that it shares the harness's result code (runner_image/backtest.py and recorder.py) and the
two sides can only differ by what happened in the run. It is a separate process, not a thread
of the server: a replay of many bars holds no lock the MCP server's event loop needs, and a
fault in it ends one run, not the server. Each run's is forked by one long-lived fork server
(runner_image/referee_server.py) that has Backtrader imported: a fresh process per run, without
the ~0.5 s of CPU a fresh one spends on its imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.image import build as image

ERROR_TAIL_BYTES = 2000  # of the referee's stderr, in the error when it fails
FORK_SECONDS = 60.0  # for the server to fork a referee, its imports included if just started
END_SECONDS = 5.0  # for the server to end once our end of its socket is closed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateLimits:
    """What a verified run's strategy side may send on the bar pipe (domain/settings.py)."""

    max_message_bytes: int
    max_events_per_bar: int
    bar_seconds: float  # how long the strategy may take over one bar


def referee_command() -> list[str]:
    """A referee as a plain process of its own: what each child of the fork server is."""
    script = image.runner_root() / image.RUNNER_DIR / "referee.py"
    return [sys.executable, "-I", str(script)]


class RefereeProcess(Protocol):
    """What a RefereeRun needs of its referee: a subprocess.Popen, or a child of the server."""

    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self) -> int: ...


class RefereeRun:
    """One referee process, for one run: the job header, the events, then the answer."""

    def __init__(self, process: RefereeProcess) -> None:
        self._process = process
        self._broken = False
        self._answer: tuple[bytes, bytes] | None = None  # (stdout, stderr) once it ended
        self._reader: threading.Thread | None = None  # collects the answer, once started
        self._reader_lock = threading.Lock()  # the gate's thread ends, the engine's aborts

    def begin(self, header: dict[str, Any]) -> None:
        """Hand the referee its job: the bars, the timeframe and the broker of the config."""
        self._write(json.dumps(header, allow_nan=False).encode() + b"\n")

    def send(self, stamp: int, events: list[dict[str, Any]]) -> None:
        """Events the gate accepted and stamped with bar index `stamp` (increasing)."""
        self._write(json.dumps([stamp, events], allow_nan=False).encode() + b"\n")

    def serve(
        self,
        bars: Path,
        commits: Path,
        steps: Sequence[bytes],
        limits: GateLimits,
        spin: bool = True,
    ) -> None:
        """Hand the referee the bar pipe's two FIFOs (runc): it serves the steps itself from
        now on, and tells of each commit, and of the end, through `message`. `spin`: whether
        it may poll for a commit before it sleeps (not for a sweep's runs)."""
        serve = {
            "bars": str(bars),
            "commits": str(commits),
            "steps": b"".join(steps).decode("ascii"),
            "max_message_bytes": limits.max_message_bytes,
            "bar_seconds": limits.bar_seconds,
            "spin": spin,
        }
        self._write(b"S " + json.dumps(serve).encode() + b"\n")

    def message(self) -> bytes | None:
        """The referee's next line while it serves the pipe, without its newline; None if it
        ended instead (it failed: `finish` says why)."""
        stdout = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        return line[:-1] if line.endswith(b"\n") else None

    def end(self, bars: int) -> None:
        """End the events at `bars` bars released; the referee then finishes its replay and
        answers while the caller goes on (the gate calls this as the conversation ends, so
        the replay's last bars and the result overlap the strategy side's own exit).
        Idempotent."""
        with self._reader_lock:
            if self._reader is not None:
                return
            self._write(f"E {bars}\n".encode())
            self._start_reader()

    def finish(self, bars: int, timeout_seconds: float) -> tuple[int, bytes]:
        """End the events at `bars` bars released (unless `end` did) and wait for the
        referee's answer: (events it refused, its result as raw bytes for the caller to
        validate).

        Raises:
            SandboxError: the referee failed, or took longer than `timeout_seconds`.
        """
        self.end(bars)
        assert self._reader is not None
        self._reader.join(timeout_seconds)  # the answer is in once the reader has ended
        if self._answer is None:
            self.abort()
            raise SandboxError(f"the referee did not finish within {timeout_seconds:g} s")
        out, err = self._answer
        if self._process.returncode != 0 or self._broken:
            tail = err.decode(errors="replace")[-ERROR_TAIL_BYTES:]
            raise SandboxError(f"the referee failed (exit {self._process.returncode}): {tail}")
        counts, _, result = out.partition(b"\n")
        try:
            rejected = int(json.loads(counts)["rejected_events"])
        except (ValueError, KeyError, TypeError) as e:
            raise SandboxError(f"the referee's answer breaks its protocol: {e}") from None
        return rejected, result

    def abort(self) -> None:
        """Stop the referee (the run ended without a result to check). Idempotent."""
        with self._reader_lock:
            if self._process.poll() is None:
                self._process.kill()
            if self._reader is None:
                self._start_reader()
        assert self._reader is not None
        self._reader.join()

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._collect, name="referee-answer", daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        """Read the rest of the referee's stdout (after the messages `message` read), then its
        stderr: it has ended then. (It writes to stderr only as it fails, a traceback: that
        never fills the pipe while stdout is still open.)"""
        stdout, stderr = self._process.stdout, self._process.stderr
        assert stdout is not None and stderr is not None
        with stdout, stderr:
            self._answer = (stdout.read(), stderr.read())
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):  # it has ended: a flush may find no reader
                self._process.stdin.close()
        self._process.wait()

    def _write(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError):  # it died: finish() reports why
            self._broken = True


class RefereePool:
    """The fork server that starts every run's referee, started again if it ends."""

    def __init__(self) -> None:
        self._server: _ForkServer | None = None
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> RefereeRun:
        """A referee for one run, forked by the server (started now if none is running).

        Raises:
            SandboxError: the server could not be started, or ended before it forked one.
        """
        for _ in range(2):  # a server found dead only now: once more with a new one
            server = self._running()
            try:
                return RefereeRun(server.fork())
            except _Gone:
                pass
        raise SandboxError(f"the referee's fork server failed: {server.why}")

    def warm(self) -> None:
        """Start the server, so that the first run finds Backtrader imported."""
        with contextlib.suppress(SandboxError):  # take() will say why
            self._running()

    def close(self) -> None:
        """Stop the server and the referees it forked. Final."""
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.close()

    def _running(self) -> _ForkServer:
        with self._lock:
            if self._closed:
                raise SandboxError("the referee pool is closed")
            if self._server is None or self._server.gone:
                if self._server is not None:
                    why = self._server.why
                    log.warning("the referee's fork server ended, starting a new one: %s", why)
                self._server = _ForkServer()
            return self._server


class _Gone(Exception):
    """The fork server ended."""


class _ForkServer:
    """runner_image/referee_server.py: forks a referee per run, Backtrader already imported.

    Runs with the host's Python, `-I`, and only our code, like referee.py itself. Its one
    socket carries our fork requests (three pipe ends each) and its answers: each child's pid
    and pidfd, then its exit code; a thread here routes them.
    """

    def __init__(self) -> None:
        script = image.runner_root() / image.RUNNER_DIR / "referee_server.py"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - its stderr; closed by _read
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", str(script), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            ours.close()
            self._errors.close()
            raise SandboxError(f"the referee's fork server could not be started: {e}") from e
        finally:
            theirs.close()
        self.gone = False
        self.why = ""  # how it ended, once gone
        self._socket = ours
        self._lock = threading.Lock()  # one request at a time: its answer is the next fork
        self._forked: queue.Queue[_Child | None] = queue.Queue()  # None once it is gone
        self._children: dict[int, _Child] = {}  # by pid, until it ends; the reader's alone
        self._reader = threading.Thread(target=self._read, name="referee-server", daemon=True)
        self._reader.start()

    def fork(self) -> _Child:
        """A new referee waiting for its job on stdin.

        Raises:
            _Gone: the server has ended, or ended before it forked one.
        """
        pipes = [os.pipe() for _ in range(3)]  # its stdin, stdout and stderr: (read, write)
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
        child: _Child | None = None
        try:
            with self._lock:
                socket.send_fds(self._socket, [b"R"], theirs)
                child = self._forked.get(timeout=FORK_SECONDS)
        except OSError:
            pass  # its end is closed: it is gone
        except queue.Empty:
            self._process.kill()  # it cannot answer: ended, the next take() starts a new one
        finally:
            for fd in theirs:
                os.close(fd)  # in the child's hands now (or no one's)
        if child is None:
            self._forked.put(None)  # for the next one that asks
            for fd in ours:
                os.close(fd)
            # The reader is ending it (the socket is closed or about to be): wait until it
            # has, so `gone` and `why` are set when the pool looks again. Without this a
            # take() just after the server died could find it not yet gone, twice.
            self._reader.join()
            raise _Gone
        child.stdin = open(ours[0], "wb")  # noqa: SIM115 - RefereeRun closes them
        child.stdout = open(ours[1], "rb")  # noqa: SIM115
        child.stderr = open(ours[2], "rb")  # noqa: SIM115
        return child

    def close(self) -> None:
        """End the server and its children (its end sees ours close)."""
        with contextlib.suppress(OSError):  # the reader may have closed it: gone already
            self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join()

    def _read(self) -> None:
        """Hand each fork to `fork`, each exit code to its child; at the end, end them all."""
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._socket, 64, 1)
            except OSError:
                break
            if not message:
                break
            kind, pid, *code = message.split()
            if kind == b"F":
                os.set_inheritable(fds[0], False)
                self._children[int(pid)] = child = _Child(fds[0])
                self._forked.put(child)
            else:
                self._children.pop(int(pid)).ended(int(code[0]))
        for child in self._children.values():  # it killed them, or died before: make sure
            child.kill()
            child.ended(-signal.SIGKILL)
        self._socket.close()
        try:
            self._process.wait(timeout=END_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        with self._errors:
            self._errors.seek(0)
            tail = self._errors.read().decode(errors="replace")[-ERROR_TAIL_BYTES:]
        self.why = f"exit {self._process.returncode}" + (f": {tail}" if tail else "")
        self.gone = True
        self._forked.put(None)


class _Child:
    """A referee the server forked, as a RefereeRun uses a Popen: pipes, kill, exit code."""

    def __init__(self, pidfd: int) -> None:
        self.stdin: IO[bytes] | None = None  # set by fork()
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.returncode: int | None = None
        self._pidfd = pidfd  # -1 once it ended: then its pid may be another process's
        self._lock = threading.Lock()
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        with self._lock:
            if self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):  # ended, not yet reported
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def ended(self, code: int) -> None:
        with self._lock:
            if self._pidfd < 0:
                return
            os.close(self._pidfd)
            self._pidfd = -1
            self.returncode = code
        self._ended.set()

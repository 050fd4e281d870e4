"""The referee: a trusted process per verified run that replays the accepted events.

It runs runner_image/referee.py (our code, never a strategy's) with the host's own Python, so
that it shares the harness's result code (runner_image/backtest.py and recorder.py) and the
two sides can only differ by what happened in the run. It is a separate process, not a thread
of the server: a replay of many bars holds no lock the MCP server's event loop needs, and a
fault in it ends one run, not the server. A few are kept started, Backtrader imported, so a
run does not wait for the imports; each is used once.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.image import build as image

ERROR_TAIL_BYTES = 2000  # of the referee's stderr, in the error when it fails


@dataclass(frozen=True)
class GateLimits:
    """What a verified run's strategy side may send on the bar pipe (domain/settings.py)."""

    max_message_bytes: int
    max_events_per_bar: int
    bar_seconds: float  # how long the strategy may take over one bar


def referee_command() -> list[str]:
    script = image.runner_root() / image.RUNNER_DIR / "referee.py"
    return [sys.executable, "-I", str(script)]


class RefereeRun:
    """One referee process, for one run: the job header, the events, then the answer."""

    def __init__(
        self, process: subprocess.Popen[bytes], on_done: Callable[[], None] = lambda: None
    ) -> None:
        self._process = process
        self._broken = False
        self._on_done = on_done  # called once the process has ended
        self._answer: tuple[bytes, bytes] | None = None  # (stdout, stderr) once it ended
        self._reader: threading.Thread | None = None  # collects the answer, once started
        self._reader_lock = threading.Lock()  # the gate's thread ends, the engine's aborts

    def begin(self, header: dict[str, Any]) -> None:
        """Hand the referee its job: the bars, the timeframe and the broker of the config."""
        self._write(json.dumps(header, allow_nan=False).encode() + b"\n")

    def send(self, stamp: int, events: list[dict[str, Any]]) -> None:
        """Events the gate accepted and stamped with bar index `stamp` (increasing)."""
        self._write(json.dumps([stamp, events], allow_nan=False).encode() + b"\n")

    def serve(self, bars: Path, commits: Path, steps: Sequence[bytes], limits: GateLimits) -> None:
        """Hand the referee the bar pipe's two FIFOs (runc): it serves the steps itself from
        now on, and tells of each commit, and of the end, through `message`."""
        serve = {
            "bars": str(bars),
            "commits": str(commits),
            "steps": b"".join(steps).decode("ascii"),
            "max_message_bytes": limits.max_message_bytes,
            "bar_seconds": limits.bar_seconds,
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
        self._on_done()

    def _write(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError):  # it died: finish() reports why
            self._broken = True


class RefereePool:
    """Started referee processes, Backtrader imported, each waiting for one job."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._refilling = False  # `warm` fills it; then each run's end refills

    def take(self) -> RefereeRun:
        """A referee for one run: a warm one if there is one, else one started now.

        Raises:
            SandboxError: the referee could not be started.
        """
        with self._lock:
            if self._closed:
                raise SandboxError("the referee pool is closed")
            process = self._idle.pop() if self._idle else None
        if process is None or process.poll() is not None:
            process = _start()
        # Refilled once this run's referee is done: starting one (imports, ~0.5 s of CPU)
        # while the run goes on would take a core from it.
        return RefereeRun(process, on_done=self._refill_soon)

    def warm(self) -> None:
        """Start filling the pool in the background, so that the first run finds one ready."""
        self._refill_soon()

    def close(self) -> None:
        """Stop the idle referees. Final."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for process in idle:
            process.kill()
            process.communicate()

    def _refill_soon(self) -> None:
        with self._lock:
            if self._refilling or self._closed:
                return
            self._refilling = True
        threading.Thread(target=self._refill, name="referee-refill", daemon=True).start()

    def _refill(self) -> None:
        try:
            while self._fill_one():
                pass
        finally:
            with self._lock:
                self._refilling = False

    def _fill_one(self) -> bool:
        with self._lock:
            if self._closed or len(self._idle) >= self._size:
                return False
        try:
            process = _start()
        except SandboxError:
            return False  # take() will start one itself, and say why it cannot
        with self._lock:
            if not self._closed:
                self._idle.append(process)
                return True
        process.kill()
        process.communicate()
        return False


def _start() -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            referee_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as e:
        raise SandboxError(f"the referee could not be started: {e}") from e

"""The trusted end of a verified run's bar pipe under runc, held by the referee.

The host hands the referee the two FIFOs of the run (PROTOCOL.md "The referee", `S`). The
referee then releases the steps one at a time, reads each commit line, stamps it with the
newest step it had released, and passes every commit that is not `[]` to the host, which checks
it (server/backtest_sandbox/verify/gate.py) while the replay goes on. Nothing the strategy sends
is parsed here: the newline is found within the size cap, and that is all.

Why the referee and not a thread of the server: the strategy side waits for an answer on every
bar. A server thread sleeps in poll between bars and pays a wake-up each time (~30 us here, 40%
of a simple strategy's own work per bar), and it cannot poll without sleeping: it would take the
GIL from the MCP server. The referee is a process with nothing else to do between its bars, so
it polls for up to SPIN_SECONDS before it sleeps, as the harness does (runner_image/pipefeed.py).
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Sequence

END = b"E\n"
# The strategy's work on a bar is usually well under this; past it, sleep instead of burning
# the core a busy host's other runs need.
SPIN_SECONDS = 0.0003
# Polling pays only while the commit comes within it: a spin that misses costs a core for
# nothing, and on a busy host (another run, the kernel tearing down the last container's
# network namespace, ~1 CPU second here) that core is taken from the strategy side. So the
# referee judges its spins in windows, and pauses them for a while after a window that
# missed too often.
SPIN_WINDOW = 32
SPIN_MAX_MISSES = 4
SPIN_PAUSE = 2048  # commits waited for without polling before it tries again
READ_BYTES = 64 * 1024


class PipeProblem(Exception):
    """The strategy side broke a limit of the pipe: `kind` is `timeout` or `too_long`, `bar`
    the index of the step the referee was about to release."""

    def __init__(self, kind: str, bar: int) -> None:
        super().__init__(f"{kind} at bar {bar}")
        self.kind = kind
        self.bar = bar


class BarServer:
    """Serves the steps over the run's FIFOs; one `exchange` per commit the strategy makes."""

    def __init__(
        self,
        bars_path: str,
        commits_path: str,
        steps: Sequence[bytes],
        max_message_bytes: int,
        bar_seconds: float,
        spin: bool = True,
    ) -> None:
        # The host holds both open already (bars.pipe read-write), so neither open waits.
        self._bars = _open_fifo(bars_path, os.O_WRONLY)
        self._commits = _open_fifo(commits_path, os.O_RDONLY | os.O_NONBLOCK)
        self._names = (bars_path, commits_path)
        self._poller = select.poll()
        self._poller.register(self._commits, select.POLLIN)
        self._steps = steps
        self._cap = max_message_bytes
        self._bar_seconds = bar_seconds
        self._buffer = bytearray()
        self._spins = self._misses = self._paused = 0  # this window's spins and misses
        self._spin_enabled = spin  # off for a sweep's runs, as in the harness (pipefeed.py)
        self.index = 0  # commits read so far: the index of the next step to release
        self.released = 0  # steps handed to the strategy side
        self.over = False  # the end was sent, or the strategy side closed its end

    def exchange(self) -> tuple[int, bytes] | None:
        """Read the next commit and release the next step (or the end): (the commit's stamp,
        its line without the newline); None once the strategy side has closed its end.

        Raises:
            PipeProblem: the line is over the size cap, or did not come within the per-bar
                bound (there is none before bar 0: the strategy is being set up).
        """
        index = self.index
        line = self._read_line(None if index == 0 else self._bar_seconds, index)
        if line is None:
            self.over = True
            return None
        if index == 0:
            # The harness holds both open by now and has not loaded the strategy: it never
            # finds them (a read of bars.pipe would block it).
            for name in self._names:
                os.unlink(name)
        total = len(self._steps)
        _write_all(self._bars, self._steps[index] if index < total else END)
        self.released = min(index + 1, total)
        self.index = index + 1
        self.over = index == total
        return index - 1, line

    def close(self) -> None:
        os.close(self._bars)
        os.close(self._commits)

    def _read_line(self, timeout: float | None, index: int) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", 0, self._cap + 1)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            if len(buffer) > self._cap:
                raise PipeProblem("too_long", index)
            chunk = self._receive(deadline, index)
            if chunk is None:
                return None
            buffer += chunk

    def _receive(self, deadline: float | None, index: int) -> bytes | None:
        """What has come next, polling first while that pays; None once the writer's end
        has closed."""
        if self._paused:
            self._paused -= 1
        elif self._spin_enabled:
            chunk = self._spin()
            if chunk:
                return chunk
        while True:
            wait_ms = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PipeProblem("timeout", index)
                wait_ms = max(1, int(remaining * 1000))
            # Linux reports a FIFO's end only once a writer has come and gone: a harness that
            # has not opened it yet is simply not ready.
            if not self._poller.poll(wait_ms):
                continue
            try:
                chunk = os.read(self._commits, READ_BYTES)
            except BlockingIOError:
                continue
            return chunk or None

    def _spin(self) -> bytes:
        """Poll for up to SPIN_SECONDS: what came, or b"" (nothing yet, or no writer)."""
        spin_until = time.perf_counter() + SPIN_SECONDS
        chunk = b""
        while time.perf_counter() < spin_until:
            try:
                chunk = os.read(self._commits, READ_BYTES)
            except BlockingIOError:
                continue
            break  # data; or b"": no writer, not opened yet or gone (poll tells which)
        self._spins += 1
        self._misses += not chunk
        if self._spins == SPIN_WINDOW:
            if self._misses > SPIN_MAX_MISSES:
                self._paused = SPIN_PAUSE
            self._spins = self._misses = 0
        return chunk


def _open_fifo(path: str, flags: int) -> int:
    """Open one of the host's FIFOs: never through a symlink, and only a FIFO."""
    fd = os.open(path, flags | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a FIFO")
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""The verified run's bar pipe as two FIFOs in the run directory (runc).

A FIFO on the run directory's bind mount joins the host and the harness with nothing between
them: a round trip costs ~60 us here, where the attach connection (stdio.py), which passes
through dockerd and containerd-shim each way, costs ~330 us, on every bar. gVisor's 2022
build (Debian's runsc) cannot open a FIFO on a host mount, so under runsc the bar pipe stays on
the attach connection.

    <run dir>/in/bars.pipe     (root, 0644; /job/bars.pipe)     host -> harness: bar rows, E
    <run dir>/out/commits.pipe (sandbox uid, 0600; /out/...)    harness -> host: commit lines

The host holds `bars.pipe` read-write, so a write never blocks on a missing reader and never
raises SIGPIPE; it holds `commits.pipe` read-only and non-blocking, and polls it. Linux reports
the end of a FIFO only once a writer has come and gone, so a harness that has not opened it yet
is simply not ready; `close()` wakes the poll when the run ends without it ever opening.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import threading
import time
from pathlib import Path

from .logs import HeadTail
from .stdio import take_line

READ_BYTES = 64 * 1024


class FifoChannel:
    """Lines from `commits`, bytes to `bars`; the same interface as StdioChannel, no logs (the
    container's output stays on the log collector)."""

    logs: HeadTail | None = None
    # The harness's end closes when its process exits, so the reader has ended by then; the
    # grace covers a harness that never opened it (then `close` wakes the reader).
    end_grace_seconds = 0.5

    def __init__(self, bars: Path, commits: Path) -> None:
        self._bars = _open_fifo(bars, os.O_RDWR)
        self._commits = _open_fifo(commits, os.O_RDONLY | os.O_NONBLOCK)
        # Unlinked on the first line: the harness has opened both by then, and has not yet
        # loaded the strategy, which so never finds them (a read of bars.pipe would hang it).
        self._names: tuple[Path, ...] = (bars, commits)
        self.pipe_paths: tuple[Path, Path] | None = (bars, commits)  # the referee serves them
        self._wake_read, self._wake_write = os.pipe()
        self._buffer = bytearray()
        self._ended = False
        self._lock = threading.Lock()  # close() and release() come from different threads
        self._released = False
        self._poller = select.poll()
        self._poller.register(self._commits, select.POLLIN)
        self._poller.register(self._wake_read, select.POLLIN)

    def send(self, data: bytes) -> bool:
        """Write to the bars FIFO; False once the channel is closed."""
        if self._ended:
            return False
        view = memoryview(data)
        while view:
            view = view[os.write(self._bars, view) :]
        return True

    def read_line(self, cap: int, timeout: float | None = None) -> bytes | None:
        """The next commit line without its newline; None at the end.

        Raises:
            LineTooLong: more than `cap` bytes came without a newline.
            TimeoutError: no whole line within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            line = take_line(self._buffer, cap)
            if line is not None:
                for name in self._names:
                    name.unlink(missing_ok=True)
                self._names = ()
                return line
            if self._ended or not self._receive(deadline):
                return None

    def drain(self) -> None:
        """Read to the end (the container stops), dropping what comes."""
        while not self._ended and self._receive(None):
            self._buffer.clear()

    def close(self) -> None:
        """End the channel; wakes a reader blocked in `read_line` or `drain`, or in the
        referee when it serves the pipe. Idempotent."""
        with self._lock:
            self._ended = True
            if not self._released:
                os.write(self._wake_write, b"x")
                # A harness that never opened commits.pipe (the run stopped before) would
                # otherwise leave the referee waiting for it.
                hang_up(self._commits)

    def release(self) -> None:
        """Close the file descriptors, once no thread reads the channel any more."""
        with self._lock:
            if self._released:
                return
            self._ended = self._released = True
            for fd in (self._bars, self._commits, self._wake_read, self._wake_write):
                os.close(fd)

    def _receive(self, deadline: float | None) -> bool:
        """Read what has come; False at the end (or once closed)."""
        while True:
            wait_ms = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                wait_ms = max(1, int(remaining * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._wake_read in ready or self._ended:
                return False
            if self._commits in ready:
                try:
                    chunk = os.read(self._commits, READ_BYTES)
                except BlockingIOError:
                    continue
                if not chunk:  # the harness's end closed: it exited
                    self._ended = True
                    return False
                self._buffer += chunk
                return True


def hang_up(fd: int) -> None:
    """Make a writer come and go on the FIFO we read through `fd`: every reader of it then
    sees its end once the sandbox's writers are gone too, as when a harness exits, even if the
    harness never opened it. Opened through our own descriptor, since the name may be gone;
    the caller makes sure `fd` is still open (a closed number may be another FIFO's now)."""
    with contextlib.suppress(OSError):
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK))


def _open_fifo(path: Path, flags: int) -> int:
    """Open one of the host's FIFOs: never through a symlink, and only a FIFO."""
    fd = os.open(path, flags | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a FIFO")
    return fd

"""A container's stdin and stdout as a line channel, its stderr as the logs (verified mode).

In a verified run the harness keeps its process's stdin and stdout for the bar pipe and sends
the strategy's own output to stderr (runner_image/PROTOCOL.md "Verified mode"). The host holds
one attach connection, which carries all three: what the host writes goes to stdin as it is,
and what comes back is Docker's multiplexed stream (8-byte frame headers naming stdout or
stderr). Every byte from the container is hostile: lines are capped, nothing is parsed here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from backtest_sandbox.domain.models import RunError

from .logs import JOIN_SECONDS, HeadTail

FRAME_HEADER_BYTES = 8
STDOUT = 1
READ_BYTES = 64 * 1024


class LineTooLong(ValueError):
    """The container sent more than the cap without a newline."""


class StdioChannel:
    """Lines from the container's stdout, bytes to its stdin, its stderr kept as logs."""

    def __init__(self, connection: Any, log_cap: int) -> None:
        self._connection = connection  # what docker-py gave: closed with the socket
        self._sock: socket.socket = getattr(connection, "_sock", connection)
        self._frames = bytearray()  # received, not yet demultiplexed
        self._stdout = bytearray()  # stdout bytes not yet read as lines
        self._ended = False
        self.logs = HeadTail(log_cap)

    def send(self, data: bytes) -> bool:
        """Write to the container's stdin; False once the container is gone."""
        try:
            self._sock.sendall(data)
        except OSError:
            self._ended = True
            return False
        return True

    def read_line(self, cap: int, timeout: float | None = None) -> bytes | None:
        """The next stdout line without its newline; None at the end of the stream.

        Raises:
            LineTooLong: more than `cap` bytes came without a newline.
            TimeoutError: no whole line within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            end = self._stdout.find(b"\n", 0, cap + 1)
            if end >= 0:
                line = bytes(self._stdout[:end])
                del self._stdout[: end + 1]
                return line
            if len(self._stdout) > cap:
                raise LineTooLong(f"a message of more than {cap} bytes")
            if self._ended:
                return None
            self._receive(deadline)

    def drain(self) -> None:
        """Read to the end of the stream (the container stops): the rest of the logs.
        Whatever else comes on stdout now is dropped."""
        while not self._ended:
            self._stdout.clear()
            self._receive(None)

    def close(self) -> None:
        self._ended = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._connection is not self._sock:
            self._connection.close()

    def _receive(self, deadline: float | None) -> None:
        if deadline is None:
            self._sock.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(READ_BYTES)
        except TimeoutError:
            raise
        except OSError:  # the connection broke: the same as its end, for the reader
            chunk = b""
        if not chunk:
            self._ended = True
            return
        self._frames += chunk
        self._demultiplex()

    def _demultiplex(self) -> None:
        frames = self._frames
        while len(frames) >= FRAME_HEADER_BYTES:
            size = int.from_bytes(frames[4:8], "big")
            if len(frames) < FRAME_HEADER_BYTES + size:
                return
            payload = bytes(frames[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + size])
            if frames[0] == STDOUT:
                self._stdout += payload
            else:
                self.logs.add(payload)
            del frames[: FRAME_HEADER_BYTES + size]


class Conversation(Protocol):
    """What a job says with the harness over the channel (the verified run's bar gate)."""

    def talk(self, channel: StdioChannel) -> RunError | None:
        """Hold the conversation to its end; the error that ends the run early, if any."""
        ...


class ConversationThread:
    """Holds a conversation on a thread of its own while the supervisor watches the run.

    When the conversation ends the run early, `stop_run` is called at once (the container is
    killed); either way the channel is then read to its end for the logs.
    """

    def __init__(
        self, channel: StdioChannel, conversation: Conversation, stop_run: Callable[[], None]
    ) -> None:
        self._channel = channel
        self._conversation = conversation
        self._stop_run = stop_run
        self._problem: RunError | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._talk, name="sandbox-stdio", daemon=True)
        self._thread.start()

    def _talk(self) -> None:
        try:
            self._problem = self._conversation.talk(self._channel)
            if self._problem is not None:
                self._stop_run_aside()
            self._channel.drain()
        except BaseException as e:  # top of a thread: result() hands it to the caller
            self._failed = e
            self._stop_run_aside()
        finally:
            self._channel.close()

    def _stop_run_aside(self) -> None:
        # On a thread of its own, while this one keeps reading: a container blocked writing
        # to the stream we stopped reading would otherwise hold the daemon's kill.
        threading.Thread(target=self._stop_run_quietly, name="sandbox-stop", daemon=True).start()

    def _stop_run_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the supervisor's deadline and kill still apply
            self._stop_run()

    def result(self) -> tuple[RunError | None, tuple[str, bool] | None]:
        """(what ended the run early, the logs) once the stopped container's stream has ended;
        the logs are None if it did not end in time.

        Raises:
            BaseException: what the conversation itself raised (a fault of the host's side).
        """
        self._thread.join(JOIN_SECONDS)
        if self._thread.is_alive():
            self._channel.close()  # unblocks the reader, which then ends
            self._thread.join(JOIN_SECONDS)
            return self._problem, None
        if self._failed is not None:
            raise self._failed
        return self._problem, self._channel.logs.text()

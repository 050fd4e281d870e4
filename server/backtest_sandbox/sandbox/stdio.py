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
import time
from typing import Any

from .logs import JOIN_SECONDS, HeadTail

FRAME_HEADER_BYTES = 8
STDOUT = 1
READ_BYTES = 64 * 1024


class LineTooLong(ValueError):
    """The container sent more than the cap without a newline."""


def take_line(buffer: bytearray, cap: int) -> bytes | None:
    """The first whole line in `buffer`, without its newline, taken out of it; None until
    one has come. Both channels of the bar pipe read their lines with it.

    Raises:
        LineTooLong: more than `cap` bytes came without a newline.
    """
    end = buffer.find(b"\n", 0, cap + 1)
    if end >= 0:
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        return line
    if len(buffer) > cap:
        raise LineTooLong(f"a message of more than {cap} bytes")
    return None


class StdioChannel:
    """Lines from the container's stdout, bytes to its stdin, its stderr kept as logs."""

    # Once the container stops, Docker ends the stream; the reader drains the logs until then.
    end_grace_seconds = JOIN_SECONDS
    pipe_paths = None  # not FIFOs: the host itself serves the bars on this connection

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
            line = take_line(self._stdout, cap)
            if line is not None:
                return line
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
        """End the channel; wakes a reader blocked in `read_line` or `drain`. Idempotent."""
        self._ended = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Close the connection, once no thread uses the channel any more."""
        self.close()
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

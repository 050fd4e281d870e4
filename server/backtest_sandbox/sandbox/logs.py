"""What a sandbox printed, kept by the host itself: the head and the tail, bounded.

Docker's json-file log only bounds the disk (it rotates, dropping the oldest lines, so after a
flood the head would be gone and nothing would say so). The host reads the container's output
as it comes instead, keeps the first and the last `cap / 2` bytes, counts the rest, and says
when it cut. Whatever the bytes, the text is valid UTF-8 without NUL.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Protocol

JOIN_SECONDS = 5.0  # how long a stopped container's stream may take to end


class HeadTail:
    """The first and last `cap // 2` bytes of a byte stream, and how many bytes it had."""

    def __init__(self, cap: int) -> None:
        self.half = cap // 2
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        chunk = chunk[-self.half :] if self.half else b""  # a giant line: only its end can stay
        self.tail.append(chunk)
        self.tail_bytes += len(chunk)
        while self.tail_bytes - len(self.tail[0]) >= self.half:  # keep just enough
            self.tail_bytes -= len(self.tail.popleft())

    def text(self) -> tuple[str, bool]:
        """(the kept text, whether anything was cut out of the middle)."""
        tail = b"".join(self.tail)[-self.half :] if self.half else b""
        cut = len(self.head) + len(tail) < self.total
        if cut:
            omitted = self.total - len(self.head) - len(tail)
            raw = bytes(self.head) + f"\n[... {omitted} bytes cut ...]\n".encode() + tail
        else:
            raw = bytes(self.head) + tail
        return raw.decode("utf-8", errors="replace").replace("\x00", ""), cut


def cap_logs(raw: bytes, cap: int) -> tuple[str, bool]:
    """Keep the head and the tail of `raw` within `cap` bytes; returns (text, was it cut)."""
    kept = HeadTail(cap)
    kept.add(raw)
    return kept.text()


class LogStream(Protocol):
    """A container's output as it comes (docker-py's attach stream)."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class LogCollector:
    """Reads a container's output on a thread of its own while the run goes on."""

    def __init__(self, stream: LogStream, cap: int) -> None:
        self._kept = HeadTail(cap)
        self._stream = stream
        self._failed: Exception | None = None
        self._thread = threading.Thread(target=self._read, name="sandbox-logs", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for chunk in self._stream:
                if chunk:
                    self._kept.add(chunk)
        except Exception as e:  # top of a thread: the caller decides what a failure means
            self._failed = e
        finally:
            self._stream.close()

    def result(self) -> tuple[str, bool] | None:
        """The logs once the (stopped) container's stream has ended; None if it did not end
        in time or broke, so the caller can read them another way."""
        self._thread.join(JOIN_SECONDS)
        if self._thread.is_alive():
            self._stream.close()  # unblocks the reader, which then ends
            return None
        return None if self._failed is not None else self._kept.text()

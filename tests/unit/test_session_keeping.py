"""The host side of sessions without Docker: which idle session a run gets, how long it is
kept, and the FIFO readers a session's control and logs come through. The containers
themselves are tested in tests/integration/test_sessions.py."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from backtest_sandbox.sandbox.session import FifoLogStream, FifoReader, Sessions


class FakeSession:
    """What `Sessions` uses of a session: its key, whether it can serve again, and close."""

    def __init__(self, key: str, alive: bool = True) -> None:
        self.key = key
        self.alive = alive
        self.idle_since = time.monotonic()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.alive = False


def keeper(keep_seconds: float = 60.0, max_idle: int = 2) -> Sessions:
    return Sessions(keep_seconds, max_idle)


def test_a_run_gets_an_idle_session_of_its_own_key_only() -> None:
    sessions = keeper()
    try:
        mine, other = FakeSession("a"), FakeSession("b")
        sessions.give_back(mine)
        sessions.give_back(other)
        assert sessions.take("c") is None
        assert sessions.take("a") is mine
        assert sessions.take("a") is None  # taken: one run at a time
        assert not mine.closed and not other.closed
    finally:
        sessions.close()


def test_a_session_that_cannot_serve_again_is_closed_not_kept() -> None:
    sessions = keeper()
    try:
        dead = FakeSession("a", alive=False)
        sessions.give_back(dead)
        assert dead.closed and sessions.take("a") is None
    finally:
        sessions.close()


def test_beyond_max_idle_the_oldest_idle_session_is_closed() -> None:
    sessions = keeper(max_idle=2)
    try:
        first, second, third = FakeSession("a"), FakeSession("b"), FakeSession("c")
        for session in (first, second, third):
            sessions.give_back(session)
        assert first.closed and not second.closed and not third.closed
        assert sessions.take("a") is None
    finally:
        sessions.close()


def test_an_idle_session_is_closed_after_keep_seconds_and_all_at_close() -> None:
    sessions = keeper(keep_seconds=0.2)
    kept = FakeSession("a")
    sessions.give_back(kept)
    deadline = time.monotonic() + 5
    while not kept.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kept.closed and sessions.take("a") is None

    later = keeper(keep_seconds=60)
    idle = FakeSession("b")
    later.give_back(idle)
    later.close()
    assert idle.closed
    returned = FakeSession("c")
    later.give_back(returned)  # a run that ends after close
    assert returned.closed


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "logs.pipe"
    os.mkfifo(path)
    return path


def test_the_logs_stream_ends_when_its_writers_are_gone(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    stream = FifoLogStream(path)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(stream))
    reader.start()
    writer = os.open(path, os.O_WRONLY)
    os.write(writer, b"first line\n")
    os.write(writer, b"second line\n")
    os.close(writer)
    reader.join(5)
    stream.close()
    assert not reader.is_alive() and b"".join(chunks) == b"first line\nsecond line\n"


def test_the_logs_stream_ends_on_hang_up_when_no_writer_ever_came(tmp_path: Path) -> None:
    stream = FifoLogStream(fifo(tmp_path))
    chunks: list[Any] = []
    reader = threading.Thread(target=lambda: chunks.extend(stream))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # nothing has come yet, and that is not the end
    stream.end()
    reader.join(5)
    stream.close()
    assert not reader.is_alive() and chunks == []


def test_a_fifo_reader_times_out_then_reads_then_sees_the_end(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    reader = FifoReader(path)
    try:
        assert reader.read(0.05) is None  # no writer yet: nothing, not the end
        writer = os.open(path, os.O_WRONLY)
        os.write(writer, b"1 0\n")
        assert reader.read(1) == b"1 0\n"
        os.close(writer)
        assert reader.read(1) == b""
    finally:
        reader.close()


def test_ending_a_closed_stream_leaves_the_fifo_that_took_its_number_alone(
    tmp_path: Path,
) -> None:
    """Two workers' runs: one run's log reader closes its stream (its writers are gone) just
    before the worker ends it, while the other worker's new run opens its logs FIFO, which
    gets the same descriptor number. Ending the first must not hang up on the second: its
    reader would end, and that run's harness would then wait forever to open its logs."""
    first_path, second_path = tmp_path / "first.pipe", tmp_path / "second.pipe"
    os.mkfifo(first_path)
    os.mkfifo(second_path)
    first = FifoLogStream(first_path)
    first.close()  # the first run's collector, at the end of its stream
    second = FifoLogStream(second_path)  # the other worker's next run: the lowest free number
    assert second._reader._fd == first._reader._fd  # the case at hand, not a lucky order

    first.end()  # the first worker, done with its run

    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(second))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # the second run's reader still waits for its harness
    # Its harness opens the FIFO only now (a blocking open finds the reader still there).
    writer = os.open(second_path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"the second run's output\n")
    os.close(writer)
    reader.join(5)
    second.close()
    assert b"".join(chunks) == b"the second run's output\n"

"""The verified run's bar pipe over two FIFOs (sandbox/fifo.py), with a harness-side peer in
this process: lines, the cap, the per-bar timeout, the end, and a harness that never came."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from backtest_sandbox.sandbox.fifo import FifoChannel
from backtest_sandbox.sandbox.rundir import RunDir
from backtest_sandbox.sandbox.stdio import LineTooLong


@pytest.fixture
def pipes(tmp_path: Path) -> tuple[FifoChannel, Path, Path]:
    bars, commits = RunDir(tmp_path, os.getuid()).make_bar_pipes()
    channel = FifoChannel(bars, commits)
    yield channel, bars, commits
    channel.release()


def test_the_fifos_are_made_as_the_sandbox_may_use_them(tmp_path: Path) -> None:
    bars, commits = RunDir(tmp_path, os.getuid()).make_bar_pipes()
    assert bars.parent.name == "in" and commits.parent.name == "out"
    assert oct(bars.stat().st_mode & 0o777) == "0o644"  # the sandbox reads, never writes


def test_bars_go_out_and_commit_lines_come_back(pipes) -> None:
    channel, bars, commits = pipes
    harness_in = os.open(bars, os.O_RDONLY)
    harness_out = os.open(commits, os.O_WRONLY)
    try:
        os.write(harness_out, b"[]\n[{\"op\":")
        assert channel.read_line(1000, timeout=5) == b"[]"
        os.write(harness_out, b'"cancel","ref":1}]\n')
        assert channel.read_line(1000, timeout=5) == b'[{"op":"cancel","ref":1}]'
        assert channel.send(b"2006-01-02T00:00:00,1,2,0.5,1.5,100\n")
        assert os.read(harness_in, 100) == b"2006-01-02T00:00:00,1,2,0.5,1.5,100\n"
    finally:
        os.close(harness_in)
        os.close(harness_out)
    assert channel.read_line(1000, timeout=5) is None  # the harness's end closed: it exited


def test_a_line_over_the_cap_and_a_silence_are_refused(pipes) -> None:
    channel, _, commits = pipes
    harness_out = os.open(commits, os.O_WRONLY)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.read_line(1000, timeout=0.2)
        assert time.monotonic() - started < 2
        os.write(harness_out, b"x" * 1001)
        with pytest.raises(LineTooLong):
            channel.read_line(1000, timeout=5)
    finally:
        os.close(harness_out)


def test_close_wakes_a_reader_whose_harness_never_opened_the_pipe(pipes) -> None:
    channel, _, _ = pipes
    answers: list[bytes | None] = []
    reader = threading.Thread(target=lambda: answers.append(channel.read_line(1000)))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # no writer yet is not an end
    channel.close()
    reader.join(5)
    assert answers == [None]
    assert channel.send(b"late\n") is False

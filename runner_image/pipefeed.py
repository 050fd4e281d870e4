"""Verified mode, strategy side: bars arrive one at a time over a pipe from the trusted side.

PROTOCOL.md "Verified mode". Each time Cerebro asks the feed for its next bar, the feed first
commits the events the strategy made since the last request (one JSON line), then waits for
the trusted side's answer: the next bar as one CSV row of data.csv, or `E` when there is none.
No bar after the current one is ever in this process, so `data.close[1]` raises IndexError.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import backtrader as bt
from backtrader.utils import date2num

import datafeed

END = b"E\n"


# How long to poll for the answer before sleeping on it. The trusted side answers within tens
# of microseconds; a process that sleeps for it pays a wake-up, and finds its caches cold, on
# every bar. The spin is this process's own CPU time, inside its container's quota.
SPIN_SECONDS = 0.0003
READ_BYTES = 64 * 1024


class Channel:
    """The two private file descriptors the bars come in on and the commits go out on."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = b""

    def exchange(self, commit: bytes) -> bytes:
        """Send one commit line; the trusted side's answer, one line.

        Raises:
            EOFError: the trusted side closed the pipe (it ended the run).
        """
        view = memoryview(commit + b"\n")
        while view:
            view = view[os.write(self._write_fd, view) :]
        spin_until = time.perf_counter() + SPIN_SECONDS
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                return line + newline
            try:
                chunk = os.read(self._read_fd, READ_BYTES)
            except BlockingIOError:
                if time.perf_counter() > spin_until:
                    chunk = self._read_blocking()
                else:
                    continue
            if not chunk:
                raise EOFError("the trusted side closed the bar pipe")
            self._buffer += chunk

    def _read_blocking(self) -> bytes:
        # A blocking read, not select(): the sandbox's seccomp profile refuses select.
        os.set_blocking(self._read_fd, True)
        try:
            return os.read(self._read_fd, READ_BYTES)
        finally:
            os.set_blocking(self._read_fd, False)


class PipeFeed(bt.feed.DataBase):  # type: ignore[misc]  # backtrader is untyped
    """A feed whose bars come from a `Channel`, one per `_load`: no preload, no look-ahead.

    `commit` returns the events to send before each request (see verified.EventLog).
    """

    def start(self) -> None:
        super().start()
        self._ended = False

    def prefetch(self) -> None:
        """The first exchange, before the strategy is loaded: an empty commit, and bar 0 (or
        the end) kept for the first `_load`. The trusted side removes the pipe's names from the
        filesystem on that first commit, so the strategy never finds them there."""
        self._first: bytes | None = self.channel.exchange(b"[]")

    def _load(self) -> bool:
        if self._ended:  # Cerebro may ask again after the end: no more exchanges
            return False
        if self._first is not None:
            line, self._first = self._first, None
        else:
            line = self.channel.exchange(self.commit())
        if line == END:
            self._ended = True
            return False
        stamp, *values = line.decode("ascii").split(",")
        # The same conversions as the fast path's FastPandasData: date2num of a naive
        # datetime, and Python's correctly rounded float() (pandas' round_trip parser).
        self.lines.datetime[0] = date2num(datetime.fromisoformat(stamp))
        for line_buffer, text in zip(self._price_lines, values, strict=True):
            line_buffer[0] = float(text)
        return True

    def _bind_lines(self) -> None:
        self._price_lines = [getattr(self.lines, name) for name in datafeed.COLUMNS]


def make_feed(channel: Channel, commit: Any, timeframe: str, total_bars: int) -> PipeFeed:
    """The verified run's feed: `total_bars` bars of the MT5 `timeframe`, from `channel`."""
    bt_timeframe, compression = datafeed.TIMEFRAMES[timeframe]
    feed = PipeFeed(timeframe=bt_timeframe, compression=compression)
    feed.channel = channel
    feed.commit = commit
    feed.total_bars = total_bars
    feed._bind_lines()
    feed.prefetch()
    return feed

"""Verified mode, strategy side: bars arrive one at a time over a pipe from the trusted side.

PROTOCOL.md "Verified mode". Each time Cerebro asks the feed for its next bar, the feed first
commits the events the strategy made since the last request (one JSON line), then waits for
the trusted side's answer: the next bar as one CSV row of data.csv, or `E` when there is none.
No bar after the current one is ever in this process, so `data.close[1]` raises IndexError.

A run of several feeds gets one step per request: a line with one bar of every feed, all of
the same timestamp. Feed 0 (`PipeFeed`) makes the exchange and keeps the step; each other feed
(`StepFeed`) takes its own bar from that step when Backtrader asks it next, in the same
round (Backtrader's next mode loads the feeds in the order they were added). No feed ever
holds a bar of a later step than feed 0's current one.
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
# every bar. The spin is this process's own CPU time, inside its container's quota. A sweep's
# runs (spec `"spin": false`) do not poll: they fill every core, and the CPU polled away is
# theirs.
SPIN_SECONDS = 0.0003
READ_BYTES = 64 * 1024


class Channel:
    """The two private file descriptors the bars come in on and the commits go out on."""

    def __init__(self, read_fd: int, write_fd: int, spin: bool = True) -> None:
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = b""
        self._spin_seconds = SPIN_SECONDS if spin else 0.0

    def exchange(self, commit: bytes) -> bytes:
        """Send one commit line; the trusted side's answer, one line.

        Raises:
            EOFError: the trusted side closed the pipe (it ended the run).
        """
        view = memoryview(commit + b"\n")
        while view:
            view = view[os.write(self._write_fd, view) :]
        spin_until = time.perf_counter() + self._spin_seconds
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

    `commit` returns the events to send before each request (see verified.EventLog). With
    several feeds, each line is a step (PROTOCOL.md): this feed's bar first; `step` keeps
    the whole step, and `steps` counts them, for the `StepFeed`s.
    """

    def start(self) -> None:
        super().start()
        self._ended = False
        self.steps = 0
        self.step: tuple[float, list[str]] = (0.0, [])

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
        number = date2num(datetime.fromisoformat(stamp))
        self.lines.datetime[0] = number
        if self.feed_count > 1:
            if len(values) != _FIELDS * self.feed_count:
                raise ValueError(f"a step of {len(values)} values for {self.feed_count} feeds")
            self.step = (number, values)
            self.steps += 1
            values = values[:_FIELDS]
        for line_buffer, text in zip(self._price_lines, values, strict=True):
            line_buffer[0] = float(text)
        return True

    def _bind_lines(self) -> None:
        self._price_lines = [getattr(self.lines, name) for name in datafeed.COLUMNS]


class StepFeed(bt.feed.DataBase):  # type: ignore[misc]  # backtrader is untyped
    """Feed `feed_index` (1 or more) of a verified run: its bar of the step `leader` (feed 0)
    holds, once per step. Asked again before the leader has a new step, or after the end, it
    has no bar."""

    def start(self) -> None:
        super().start()
        self._taken = 0  # the leader's steps this feed has loaded

    def _load(self) -> bool:
        leader = self.leader
        if leader._ended or leader.steps == self._taken:
            return False
        self._taken = leader.steps
        number, values = leader.step
        self.lines.datetime[0] = number
        first = _FIELDS * self.feed_index
        for line_buffer, text in zip(
            self._price_lines, values[first : first + _FIELDS], strict=True
        ):
            line_buffer[0] = float(text)
        return True

    def _bind_lines(self) -> None:
        self._price_lines = [getattr(self.lines, name) for name in datafeed.COLUMNS]


_FIELDS = len(datafeed.COLUMNS)  # values of one feed in a step: open high low close volume


def make_feed(
    channel: Channel, commit: Any, timeframe: str, total_bars: int, feeds: int = 1
) -> PipeFeed:
    """The verified run's feed 0: `total_bars` steps of the MT5 `timeframe`, each holding one
    bar of each of `feeds` feeds, from `channel`."""
    bt_timeframe, compression = datafeed.TIMEFRAMES[timeframe]
    feed = PipeFeed(timeframe=bt_timeframe, compression=compression)
    feed.channel = channel
    feed.commit = commit
    feed.total_bars = total_bars
    feed.feed_count = feeds
    feed._bind_lines()
    feed.prefetch()
    return feed


def step_feed(leader: PipeFeed, position: int) -> StepFeed:
    """Feed `position` (1 .. feeds - 1) of the run whose feed 0 is `leader`."""
    feed = StepFeed(timeframe=leader.p.timeframe, compression=leader.p.compression)
    feed.leader = leader
    feed.feed_index = position
    feed.total_bars = leader.total_bars
    feed._bind_lines()
    return feed

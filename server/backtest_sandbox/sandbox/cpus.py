"""Which CPU a verified run's two sides share.

A verified run is a conversation of one message each way per bar: the strategy side (in its
container) commits, its referee's bar server (on the host) releases the next bar. The two take
turns, so they gain little from running on two CPUs, and they pay for it on every bar: waking a
process that sleeps on another CPU goes through that CPU's idle exit, which on this machine's
virtual CPUs costs ~100 us of wall time and ~40 us of CPU on each side (a FIFO round trip:
~120 us across two CPUs, ~10 us on one). Pinned to one CPU, each hand-over is a context switch.

So each verified run takes the CPU with the fewest verified runs on it now, and its container
and its bar server are pinned there: with as many workers as CPUs, every run has a CPU of its
own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator


class CpuSlots:
    """Hands each run the least-used CPU of this process's own set. Thread-safe."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self._runs = dict.fromkeys(sorted(os.sched_getaffinity(0) if cpus is None else cpus), 0)
        if not self._runs:
            raise ValueError("no CPU to hand out")
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[int]:
        """A CPU for one run, counted as used until the block ends."""
        with self._lock:
            cpu = min(self._runs, key=lambda c: (self._runs[c], c))
            self._runs[cpu] += 1
        try:
            yield cpu
        finally:
            with self._lock:
                self._runs[cpu] -= 1

"""Progress on stderr: a bar drawn in place on a terminal; elsewhere (a CI log) a plain line
every few seconds, never one per bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 30
LINE_SECONDS = 5.0  # a CI log gets a line this often at most


class ProgressBar:
    """`[#####     ]  50%  1260/2520 bars` in place on a terminal; `progress: 1260/2520 bars
    (50%)` lines otherwise."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.terminal = stream.isatty()
        self.clock = clock
        self.drawn = False
        self.last_line = float("-inf")

    def update(self, done: int, total: int) -> None:
        if total <= 0:
            return
        percent = 100 * done // total
        if self.terminal:
            filled = WIDTH * done // total
            bar = "#" * filled + " " * (WIDTH - filled)
            self.stream.write(f"\r[{bar}] {percent:3d}%  {done}/{total} bars")
            self.drawn = True
        else:
            now = self.clock()
            if now - self.last_line < LINE_SECONDS and done < total:
                return
            self.last_line = now
            self.stream.write(f"progress: {done}/{total} bars ({percent}%)\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

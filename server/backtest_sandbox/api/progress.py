"""A progress bar on a terminal; silent when the stream is not one (CI logs stay clean)."""

from __future__ import annotations

from typing import TextIO

WIDTH = 30


class ProgressBar:
    """Draws `[#####     ]  50%  1260/2520 bars` in place, only when `stream` is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = WIDTH * done // total
        bar = "#" * filled + " " * (WIDTH - filled)
        self.stream.write(f"\r[{bar}] {100 * done // total:3d}%  {done}/{total} bars")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

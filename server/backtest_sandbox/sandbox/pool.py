"""Warm, single-use containers: started ahead, each used by exactly one run, then destroyed.

A cold run pays the container start and the imports (about a second) before its first bar.
A warm container has already paid both: its harness has imported backtrader, pandas and numpy
and waits for `spec.json` in its own run directory. A run takes one, hands it the job, and
removes it afterwards; a background thread starts a replacement. Isolation is unchanged: the
same hardened spec as a cold container, and never a second job in the same container.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from docker.models.containers import Container

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.settings import Settings

from .containers import Sandbox
from .rundir import RunDir, new_run_dir

log = logging.getLogger(__name__)

POOL_LABEL = "pool"  # the run label of a container nobody has taken yet
REFILL_BACKOFF_SECONDS = 5.0  # after a failed start, before trying again


@dataclass(frozen=True)
class WarmContainer:
    container: Container
    run_dir: RunDir
    memory_mb: int
    started_at: float  # time.monotonic() at start


class WarmPool:
    """Keeps `size` idle warm containers; `acquire` hands one out, at most once."""

    def __init__(
        self, sandbox: Sandbox, settings: Settings, size: int, memory_mb: int = 512
    ) -> None:
        self.sandbox = sandbox
        self.settings = settings
        self.size = size
        self.memory_mb = memory_mb
        self.max_age_seconds = settings.pool_max_age_seconds
        self._idle: deque[WarmContainer] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._refill_forever, name="warm-pool", daemon=True)
        self._thread.start()

    def acquire(self, memory_mb: int, wait_seconds: float = 0.0) -> WarmContainer | None:
        """A running warm container with `memory_mb`, or None (the caller goes cold).

        With the pool empty, waits up to `wait_seconds` for the refill to start one.
        """
        if memory_mb != self.memory_mb and not self.sandbox.can_update_memory:
            return None  # leave the warm one for a run that fits it
        with self._wake:
            self._wake.wait_for(lambda: self._closed or bool(self._idle), timeout=wait_seconds)
            if self._closed or not self._idle:
                return None
            warm = self._idle.popleft()
            self._wake.notify()  # start a replacement now
        try:
            if not self._still_running(warm.container):
                self._discard(warm)
                return None
            if memory_mb != warm.memory_mb:
                self.sandbox.set_memory(warm.container, memory_mb)
        except SandboxError as e:
            log.warning("warm container unusable, running cold: %s", e)
            self._discard(warm)
            return None
        return WarmContainer(warm.container, warm.run_dir, memory_mb, warm.started_at)

    def idle_count(self) -> int:
        with self._wake:
            return len(self._idle)

    def close(self) -> None:
        """Stop refilling and remove every idle container."""
        with self._wake:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._wake.notify_all()
        self._thread.join(timeout=30)
        for warm in idle:
            self._discard(warm)

    def _refill_forever(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                expired = self._take_expired()
                missing = self.size - len(self._idle)
            for warm in expired:
                self._discard(warm)
            if missing > 0 and not self._start_one():
                self._sleep(REFILL_BACKOFF_SECONDS)
            elif missing <= 0:
                self._sleep(min(self.max_age_seconds / 4, 30.0))

    def _take_expired(self) -> list[WarmContainer]:
        """Idle containers past their maximum age; the caller holds the lock."""
        now = time.monotonic()
        expired = [w for w in self._idle if now - w.started_at > self.max_age_seconds]
        for warm in expired:
            self._idle.remove(warm)
        return expired

    def _start_one(self) -> bool:
        try:
            run_dir = new_run_dir(self.settings)
        except OSError as e:  # the state dir is full or unwritable: try again later
            log.warning("could not make a warm container's run directory: %s", e)
            return False
        try:
            container = self.sandbox.start(run_dir, self.memory_mb, POOL_LABEL)
        except SandboxError as e:
            run_dir.remove()
            log.warning("could not start a warm container: %s", e)
            return False
        warm = WarmContainer(container, run_dir, self.memory_mb, time.monotonic())
        with self._wake:
            if not self._closed:
                self._idle.append(warm)
                self._wake.notify_all()  # a run waiting in `acquire` takes it
                return True
        self._discard(warm)  # closed while it started
        return True

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self._closed:
                self._wake.wait(timeout=seconds)

    def _still_running(self, container: Container) -> bool:
        return self.sandbox.is_running(container)

    def _discard(self, warm: WarmContainer) -> None:
        try:
            self.sandbox.remove(warm.container)
        except SandboxError as e:
            log.warning("could not remove warm container %s: %s", warm.container.short_id, e)
        warm.run_dir.remove()

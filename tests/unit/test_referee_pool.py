"""The referees' fork server (runner_image/referee_server.py) through RefereePool, with real
processes: each run gets a child of its own that answers as a plain `python -I referee.py`
does, and no failure of a run, of a child or of the server itself outlives the next take().
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.verify.referee import RefereePool, RefereeRun, referee_command
from tests.unit.test_referee import COSTLY, RUN_TIMEOUT, bar_rows, orcl_csv
from tests.unit.test_verified_gate import cancel, order

pytestmark = pytest.mark.timeout(60)

# A small job: two months of bars, an entry, a limit order cancelled, and an exit.
EVENTS = [
    (3, [order(ref=1)]),
    (5, [order(ref=2, exectype="Limit", price=1.0)]),
    (8, [cancel(2)]),
    (20, [order(ref=3, side="sell")]),
]


def header(**changes: object) -> dict[str, object]:
    return {"protocol": 1, "timeframe": "D1", "broker": COSTLY, "bars_csv": csv()} | changes


def csv() -> str:
    return orcl_csv(end="2005-03-01")


def answer(referee: RefereeRun) -> tuple[int, bytes]:
    """The referee's answer to the small job."""
    try:
        referee.begin(header())
        for stamp, events in EVENTS:
            referee.send(stamp, events)
        return referee.finish(len(bar_rows(csv())), RUN_TIMEOUT)
    finally:
        referee.abort()


def plain_answer() -> tuple[int, bytes]:
    """The small job's answer from a fresh `python -I referee.py`, as before the server."""
    pipe = subprocess.PIPE
    process = subprocess.Popen(referee_command(), stdin=pipe, stdout=pipe, stderr=pipe)
    return answer(RefereeRun(process))


def children(parent: int) -> set[int]:
    """The live (not zombie) processes whose parent is `parent`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue  # not a process, or one that has just ended
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(entry.name))
    return found


def server_pid() -> int:
    """This process's fork server: its only child running referee_server.py."""
    (pid,) = [
        pid for pid in children(os.getpid())
        if b"referee_server.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]  # fmt: skip
    return pid


def gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie has), given a moment: a killed process ends soon
    after, not at once."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def pool() -> Iterator[RefereePool]:
    pool = RefereePool()
    yield pool
    pool.close()


def test_each_run_is_a_child_of_its_own_that_answers_as_a_fresh_referee(
    pool: RefereePool,
) -> None:
    first, second = pool.take(), pool.take()  # both at once: two children of one server
    assert len(children(server_pid())) == 2
    rejected, result = plain_answer()
    replayed = json.loads(result)
    assert (rejected, replayed["orders_total"], len(replayed["trades"])) == (0, 3, 1)
    assert answer(first) == answer(second) == (rejected, result)


def test_an_aborted_run_leaves_the_server_serving(pool: RefereePool) -> None:
    referee = pool.take()
    referee.begin(header())
    (child,) = children(server_pid())
    referee.abort()
    assert gone(child)
    with pytest.raises(SandboxError, match=r"the referee failed \(exit -9\)"):
        referee.finish(1, RUN_TIMEOUT)
    assert answer(pool.take()) == plain_answer()


def test_a_child_that_fails_says_why_and_the_next_run_works(pool: RefereePool) -> None:
    referee = pool.take()
    try:
        referee.begin(header(protocol=99))
        with pytest.raises(SandboxError) as raised:
            referee.finish(1, RUN_TIMEOUT)
    finally:
        referee.abort()
    message = str(raised.value)
    assert "the referee failed (exit 1)" in message
    assert "Traceback (most recent call last)" in message
    assert message.endswith("ValueError: unsupported protocol 99\n")
    assert answer(pool.take()) == plain_answer()


def test_a_server_that_died_is_replaced_and_its_runs_fail(
    pool: RefereePool, caplog: pytest.LogCaptureFixture
) -> None:
    in_flight = pool.take()
    in_flight.begin(header())
    dead = server_pid()
    (orphan,) = children(dead)
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(SandboxError, match="the referee failed"):
        in_flight.finish(1, RUN_TIMEOUT)
    in_flight.abort()
    assert gone(orphan)  # its child, killed by the host: nothing waits on it

    with caplog.at_level(logging.WARNING):
        assert answer(pool.take()) == plain_answer()
    assert server_pid() != dead
    assert "the referee's fork server ended, starting a new one: exit -9" in caplog.text


def test_close_ends_the_server_and_its_children(pool: RefereePool) -> None:
    referee = pool.take()
    referee.begin(header())
    server = server_pid()
    (child,) = children(server)
    pool.close()
    assert gone(server) and gone(child)
    with pytest.raises(SandboxError, match="the referee failed"):
        referee.finish(1, RUN_TIMEOUT)
    referee.abort()
    with pytest.raises(SandboxError, match="closed"):
        pool.take()


def test_no_fd_of_one_run_is_left_in_the_server(pool: RefereePool) -> None:
    answer(pool.take())
    server = server_pid()
    after_one = open_fds(server)
    for _ in range(4):
        answer(pool.take())
    assert server_pid() == server
    assert open_fds(server) == after_one

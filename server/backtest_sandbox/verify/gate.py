"""The bar gate: the trusted side of a verified run's pipe (docs/interface.md section 7).

It releases the bars one step at a time (a step is one bar of every feed of the run, all with
the same timestamp) and releases step t+1 only once the strategy side has committed what it
did up to step t. Each commit is stamped with the newest step (bar index) the gate had
released, whatever the strategy says of itself: a strategy that pulls bars early only gets its
orders stamped late. What it accepts goes on to the referee as it comes, so the replay runs
alongside the strategy, one bar behind.

Under runc the referee holds the pipe's two FIFOs and does the releasing, stamping, timing
and capping itself (runner_image/barpipe.py, for speed: README "Verified mode", Cost); the
gate then checks each commit the referee passes on. The checks are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from backtest_sandbox.domain.errors import ErrorType, SandboxError
from backtest_sandbox.domain.models import RunError

from .events import EventCheck, ProtocolViolation, parse_commit
from .referee import GateLimits, RefereeRun

END = b"E\n"  # no more bars
EMPTY_COMMIT = b"[]"


def step_rows(feeds: Sequence[bytes]) -> list[bytes]:
    """What the gate releases, one line per step: from each feed's data.csv (header first,
    the feeds aligned: the same timestamps in the same order), the row of feed 0, then each
    other feed's open,high,low,close,volume of the same timestamp, newline included
    (PROTOCOL.md "The pipe"). With one feed, the rows of its data.csv as they are.

    Raises:
        ValueError: the feeds are not aligned (a fault of the host's own data preparation).
    """
    tables = [csv.splitlines(keepends=True)[1:] for csv in feeds]
    if len(tables) == 1:
        return tables[0]
    steps = []
    for rows in zip(*tables, strict=True):
        stamp, _, first = rows[0].partition(b",")
        parts = [stamp, first.rstrip(b"\n")]
        for row in rows[1:]:
            other, _, values = row.partition(b",")
            if other != stamp:
                raise ValueError(f"feeds not aligned: {stamp!r} against {other!r}")
            parts.append(values.rstrip(b"\n"))
        steps.append(b",".join(parts) + b"\n")
    return steps


class LineChannel(Protocol):
    """The pipe to the strategy side, as the sandbox provides it (sandbox/fifo.py, stdio.py)."""

    @property
    def pipe_paths(self) -> tuple[Path, Path] | None:
        """The two FIFOs (bars, commits) when the pipe is made of them (runc)."""
        ...

    def read_line(self, cap: int, timeout: float | None = None) -> bytes | None: ...

    def send(self, data: bytes) -> bool: ...


class BarGate:
    """One verified run's gate. `talk` holds the conversation; the counts stay readable."""

    def __init__(
        self,
        bars: Sequence[bytes],
        referee: RefereeRun,
        limits: GateLimits,
        feeds: int = 1,
        spin: bool = True,
    ) -> None:
        self._bars = bars  # one step each (`step_rows`), newline included
        self.referee = referee  # gets what is accepted as it comes; the caller finishes it
        self._limits = limits
        self._spin = spin  # whether the referee may poll for commits (pipefeed.py says why)
        self._check = EventCheck(feeds)  # an order must name one of the run's feeds
        self.released = 0  # steps (bars of every feed) handed to the strategy side so far
        self.events = 0  # events committed
        self.rejected_events = 0  # of those, refused here

    def talk(self, channel: LineChannel) -> RunError | None:
        """Serve every bar, then the end. None when the strategy side ended the conversation
        (its exit then decides the verdict); an error when it broke the pipe's rules.

        Over FIFOs (runc) the referee serves the bars and this checks what it passes on
        (`_check_for_referee`); over the attach connection (gVisor) this serves them itself.
        Every event is in once the conversation ends, so the referee is told the end at once:
        it finishes while the strategy side writes its claim and exits."""
        paths = channel.pipe_paths
        problem = self._serve(channel) if paths is None else self._check_for_referee(*paths)
        if problem is None:
            self.referee.end(self.released)
        return problem

    def _serve(self, channel: LineChannel) -> RunError | None:
        limits = self._limits
        total = len(self._bars)
        for index in range(total + 1):
            # Before the first bar the strategy is being set up: only the run's timeout holds.
            timeout = limits.bar_seconds if index else None
            try:
                line = channel.read_line(limits.max_message_bytes, timeout)
            except TimeoutError:
                return self._late(index)
            except ValueError:  # LineTooLong
                return self._too_long(index)
            if line is None:
                return None
            try:
                self._commit(line, stamp=index - 1)
            except ProtocolViolation as e:
                return _broken(index, e)
            if not channel.send(self._bars[index] if index < total else END):
                return None
            self.released = min(index + 1, total)
        return None

    def _check_for_referee(self, bars: Path, commits: Path) -> RunError | None:
        """The conversation when the referee holds the pipe (runner_image/barpipe.py): it
        releases the bars and stamps the commits; this checks each commit it passes on and
        answers with what is accepted, and learns the end, or the limit broken, from it.

        The referee releases the next bar before this has checked the commit: a commit that
        breaks the protocol ends the run one bar later than on the attach connection, with
        the same verdict, and none of its events replayed."""
        self.referee.serve(bars, commits, self._bars, self._limits, self._spin)
        while True:
            message = self.referee.message()
            if message is None:
                return _error(
                    ErrorType.SANDBOX_ERROR, "the referee ended while it served the bars"
                )
            kind, _, rest = message.partition(b" ")
            if kind == b"C":
                stamp_text, _, line = rest.partition(b" ")
                stamp = int(stamp_text)
                try:
                    self._commit(line, stamp, answer_always=True)
                except ProtocolViolation as e:
                    return _broken(stamp + 1, e)
            elif kind == b"X":
                self.released = int(rest)
                return None
            elif kind == b"P":
                limit, _, bar = rest.partition(b" ")
                return self._late(int(bar)) if limit == b"timeout" else self._too_long(int(bar))
            else:
                raise SandboxError(f"the referee broke its protocol: {message[:80]!r}")

    def _commit(self, line: bytes, stamp: int, answer_always: bool = False) -> None:
        """Check one commit, count it, and pass what is accepted to the referee (all of it,
        even nothing, when the referee waits for the answer)."""
        if line == EMPTY_COMMIT:  # most bars: nothing to parse, count or pass on
            return
        events = parse_commit(line, self._limits.max_events_per_bar)
        self.events += len(events)
        # Nothing can be ordered before the first bar (stamp -1): all of it is refused.
        accepted = [event for event in events if stamp >= 0 and self._check.accept(event)]
        self.rejected_events += len(events) - len(accepted)
        if accepted or answer_always:
            self.referee.send(stamp, accepted)

    def _late(self, index: int) -> RunError:
        limit = self._limits.bar_seconds
        return _error(
            ErrorType.TIMEOUT,
            f"the strategy did not finish bar {index} of {len(self._bars)} within "
            f"{limit:g} s (the per-bar limit of a verified run)",
            limit_seconds=limit,
            bar=index,
        )

    def _too_long(self, index: int) -> RunError:
        return _error(
            ErrorType.RESULT_INVALID,
            "the strategy side sent a message over the limit of "
            f"{self._limits.max_message_bytes} bytes on the bar pipe",
            bar=index,
        )


def _broken(index: int, violation: ProtocolViolation) -> RunError:
    return _error(
        ErrorType.RESULT_INVALID,
        f"the strategy side broke the bar pipe's protocol at bar {index}: {violation}",
        bar=index,
    )


def _error(error_type: ErrorType, message: str, **details: object) -> RunError:
    return RunError(type=error_type, message=message, details=details)

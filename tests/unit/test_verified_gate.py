"""Verified mode's trusted side without Docker or processes: the commit rules
(verify/events.py), the bar gate (verify/gate.py) against a scripted strategy side, and the
container's attach stream as a line channel (sandbox/stdio.py) over a socket pair.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.models import RunError
from backtest_sandbox.sandbox.conversation import ConversationThread
from backtest_sandbox.sandbox.stdio import LineTooLong, StdioChannel
from backtest_sandbox.verify.events import EventCheck, ProtocolViolation, parse_commit
from backtest_sandbox.verify.gate import BarGate
from backtest_sandbox.verify.referee import GateLimits

pytestmark = pytest.mark.timeout(30)

LIMITS = GateLimits(max_message_bytes=4096, max_events_per_bar=10, bar_seconds=5.0)
BARS = [
    b"2006-01-02T00:00:00,10.0,11.0,9.5,10.5,1000\n",
    b"2006-01-03T00:00:00,10.5,11.5,10.0,11.0,1200\n",
    b"2006-01-04T00:00:00,11.0,11.2,10.1,10.2,900\n",
]


def order(**changes: Any) -> dict[str, Any]:
    """A valid order event, as runner_image/verified.py's EventLog writes one, with `changes`."""
    event = {
        "op": "order", "ref": 1, "side": "buy", "feed": 0, "size": 1.0, "price": None,
        "plimit": None, "exectype": "Market", "valid": None, "tradeid": 0, "oco": None,
        "parent": None, "transmit": True, "trailamount": None, "trailpercent": None,
    }  # fmt: skip
    event.update(changes)
    return event


def cancel(ref: Any) -> dict[str, Any]:
    return {"op": "cancel", "ref": ref}


def commit(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


# --- parse_commit: a line that is not a list of events ends the run --------------------------


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b"buy 10 please", "a commit is not JSON"),
        (b"[\xff\xfe]", "a commit is not JSON"),  # not UTF-8
        (b"", "a commit is not JSON"),
        (b'{"op": "cancel", "ref": 1}', "a commit is not a JSON list of events"),
        (b'"[]"', "a commit is not a JSON list of events"),
        (b"null", "a commit is not a JSON list of events"),
        (b"[" * 100_000 + b"]" * 100_000, "a commit is not JSON"),  # nested past the stack
        (b"[" + b"1" * 5000 + b"]", "a commit is not JSON"),  # past int()'s digit limit
    ],
    ids=["text", "not-utf8", "empty", "object", "string", "null", "deep", "huge-int"],
)
def test_a_commit_that_is_not_a_list_of_events_breaks_the_protocol(line: bytes, rule: str) -> None:
    with pytest.raises(ProtocolViolation, match=rule):
        parse_commit(line, max_events=10)


def test_more_events_in_one_commit_than_the_limit_breaks_the_protocol() -> None:
    events = [cancel(ref) for ref in range(1, 5)]
    assert parse_commit(commit(*events[:3]), max_events=3) == events[:3]  # the limit itself
    with pytest.raises(ProtocolViolation, match="4 events in one bar, over the limit of 3"):
        parse_commit(commit(*events), max_events=3)


def test_an_empty_commit_and_unchecked_events_are_parsed_as_they_are() -> None:
    assert parse_commit(b"[]", max_events=1) == []
    # Malformed events are not the parser's business: the rules refuse them one by one.
    assert parse_commit(b'[1, "x", {"op": "order", "size": NaN}]', max_events=3)[:2] == [1, "x"]


# --- EventCheck: each event is refused alone --------------------------------------------------


def test_a_valid_market_order_is_accepted_and_can_then_be_cancelled() -> None:
    check = EventCheck(feeds=1)
    assert check.accept(order(ref=7))
    assert check.accept(cancel(7))
    assert not check.accept(cancel(8))


def test_orders_of_every_replayable_type_are_accepted() -> None:
    check = EventCheck(feeds=2)
    accepted = [
        check.accept(order(ref=1, exectype="Limit", price=10.5, valid=732000.0)),
        check.accept(order(ref=2, exectype="Stop", price=9.5, side="sell", oco=1)),
        check.accept(order(ref=3, exectype="StopLimit", price=9.5, plimit=9.4, parent=1)),
        check.accept(order(ref=4, exectype="StopTrail", trailamount=0.5, feed=1)),
        check.accept(order(ref=5, exectype="StopTrailLimit", trailpercent=0.02, tradeid=3)),
        check.accept(order(ref=6, exectype="Close", size=3, transmit=False, valid=0)),
    ]
    assert accepted == [True] * 6


# Each case changes one field of a valid order, ref 2 (order 1 is known), or is a whole event.
VALID = order(ref=2)


def bad(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


REFUSED = {
    "size NaN": bad(size=math.nan),
    "size inf": bad(size=math.inf),
    "size 0": bad(size=0),
    "size negative": bad(size=-1.0),
    "size str": bad(size="1"),
    "size bool": bad(size=True),
    "size list": bad(size=[1]),
    "price 0": bad(price=0.0),
    "plimit negative": bad(plimit=-1.0),
    "trailamount NaN": bad(trailamount=math.nan),
    "trailpercent str": bad(trailpercent="0.1"),
    "exectype Historical": bad(exectype="Historical"),
    "exectype unknown": bad(exectype="Teleport"),
    "exectype number": bad(exectype=0),
    "exectype list": bad(exectype=["Market"]),
    "side": bad(side="short"),
    "side dict": bad(side={"buy": 1}),
    "extra field": bad(comment="hi"),
    "missing field": {k: v for k, v in VALID.items() if k != "trailpercent"},
    "feed out of range": bad(feed=1),
    "feed negative": bad(feed=-1),
    "feed float": bad(feed=0.0),
    "feed bool": bad(feed=False),
    "duplicate ref": bad(ref=1),
    "ref 0": bad(ref=0),
    "ref bool": bad(ref=True),
    "ref float": bad(ref=2.0),
    "ref past 2**53": bad(ref=2**53),
    "ref str": bad(ref="2"),
    "ref list": bad(ref=[2]),
    "ref dict": bad(ref={"a": 2}),
    "oco unknown": bad(oco=99),
    "oco list": bad(oco=[1]),
    "parent unknown": bad(parent=99),
    "parent itself": bad(parent=2),
    "valid negative": bad(valid=-1.0),
    "valid bool": bad(valid=True),
    "valid str": bad(valid="GTC"),
    "tradeid negative": bad(tradeid=-1),
    "tradeid float": bad(tradeid=1.0),
    "transmit int": bad(transmit=1),
    "op unknown": bad(op="modify"),
    "op list": bad(op=["order"]),
    "cancel unknown ref": cancel(99),
    "cancel list ref": cancel([1]),
    "cancel extra field": {**cancel(1), "why": "no"},
    "cancel missing ref": {"op": "cancel"},
    "not an object": [1, 2],
    "null": None,
}


@pytest.mark.parametrize("event", REFUSED.values(), ids=REFUSED.keys())
def test_an_event_that_breaks_one_rule_is_refused_without_raising(event: Any) -> None:
    check = EventCheck(feeds=1)
    assert check.accept(order(ref=1))
    assert not check.accept(event)
    # The refusal is that event's alone: the order it changes is accepted after it.
    assert check.accept(VALID)


@pytest.mark.parametrize(
    "field", ["size", "price", "plimit", "trailamount", "trailpercent", "valid"]
)
def test_an_integer_past_float_range_is_refused_without_raising(field: str) -> None:
    (event,) = parse_commit(commit(order(**{field: 10**400})), max_events=1)
    assert not EventCheck(feeds=1).accept(event)


def test_a_refused_order_is_not_remembered_and_a_cancel_of_it_is_refused() -> None:
    check = EventCheck(feeds=1)
    assert not check.accept(order(ref=5, size=math.nan))
    assert not check.accept(cancel(5))
    assert not check.accept(order(ref=6, oco=5))
    assert check.accept(order(ref=5))  # the ref was never taken


# --- BarGate against a scripted strategy side -------------------------------------------------


class ScriptedSide:
    """The strategy side of the pipe as a script: each read_line answers with the next item
    (a line, or an exception to raise); after the script, the end of the stream (None)."""

    pipe_paths = None  # the gate serves the bars itself, as on the attach connection

    def __init__(self, *script: bytes | BaseException | None, open_for: int = 1000) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.timeouts: list[float | None] = []
        self.caps: list[int] = []
        self._open_for = open_for  # sends that succeed before the pipe is gone

    def read_line(self, cap: int, timeout: float | None = None) -> bytes | None:
        self.caps.append(cap)
        self.timeouts.append(timeout)
        item = self.script.pop(0) if self.script else None
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, data: bytes) -> bool:
        if len(self.sent) >= self._open_for:
            return False
        self.sent.append(data)
        return True


class RecordingReferee:
    """Stands for verify/referee.py's RefereeRun: what the gate passes on, in order."""

    def __init__(self) -> None:
        self.received: list[tuple[int, list[dict[str, Any]]]] = []

    def send(self, stamp: int, events: list[dict[str, Any]]) -> None:
        self.received.append((stamp, events))

    def end(self, bars: int) -> None:
        self.ended_at = bars


def gate_for(bars: list[bytes] = BARS) -> tuple[BarGate, RecordingReferee]:
    referee = RecordingReferee()
    return BarGate(bars, referee, LIMITS), referee  # type: ignore[arg-type]


def test_the_gate_releases_one_bar_per_commit_in_order_then_the_end() -> None:
    gate, referee = gate_for()
    side = ScriptedSide(b"[]", b"[]", b"[]", b"[]")
    assert gate.talk(side) is None
    assert side.sent == [*BARS, b"E\n"]
    assert (gate.released, gate.events, gate.rejected_events) == (3, 0, 0)
    assert referee.received == []  # commits without events are not passed on
    assert referee.ended_at == 3  # told the end as the conversation ends, with the count
    assert side.caps == [LIMITS.max_message_bytes] * 4


def test_the_set_up_has_no_bar_limit_and_every_bar_after_it_has_one() -> None:
    side = ScriptedSide(b"[]", b"[]", b"[]", b"[]")
    gate_for()[0].talk(side)
    assert side.timeouts == [None, 5.0, 5.0, 5.0]


def test_each_commit_is_stamped_with_the_newest_bar_released() -> None:
    gate, referee = gate_for()
    side = ScriptedSide(
        commit(order(ref=1)),  # made before any bar (in __init__ or start): refused
        commit(order(ref=2), order(ref=3, exectype="Limit", price=10.0)),  # after bar 0
        b"[]",  # nothing at bar 1
        commit(cancel(3)),  # after bar 2, the last: answered with the end
    )
    assert gate.talk(side) is None
    assert referee.received == [
        (0, [order(ref=2), order(ref=3, exectype="Limit", price=10.0)]),
        (2, [cancel(3)]),
    ]
    assert (gate.events, gate.rejected_events) == (4, 1)


def test_events_before_the_first_bar_are_all_refused_even_when_valid() -> None:
    gate, referee = gate_for()
    side = ScriptedSide(commit(order(ref=1), order(ref=2)), commit(order(ref=1)))
    assert gate.talk(side) is None
    # Ref 1 refused before bar 0 is still free at bar 0.
    assert referee.received == [(0, [order(ref=1)])]
    assert (gate.events, gate.rejected_events) == (3, 2)


def test_refused_events_are_counted_and_never_reach_the_referee() -> None:
    gate, referee = gate_for()
    side = ScriptedSide(
        b"[]",
        commit(order(ref=1), order(ref=1), order(ref=2, size=math.nan), cancel(2), cancel(1)),
    )
    assert gate.talk(side) is None
    assert referee.received == [(0, [order(ref=1), cancel(1)])]
    assert (gate.events, gate.rejected_events) == (5, 3)


def test_a_bar_not_answered_in_time_is_a_timeout_naming_the_bar() -> None:
    gate, referee = gate_for()
    side = ScriptedSide(b"[]", commit(order(ref=1)), TimeoutError())
    error = gate.talk(side)
    assert isinstance(error, RunError)
    assert error.type == ErrorType.TIMEOUT
    assert error.message == (
        "the strategy did not finish bar 2 of 3 within 5 s (the per-bar limit of a verified run)"
    )
    assert error.details == {"limit_seconds": 5.0, "bar": 2}
    assert side.sent == BARS[:2]
    assert gate.released == 2
    assert referee.received == [(0, [order(ref=1)])]  # what came before still counts


def test_a_message_over_the_cap_is_result_invalid() -> None:
    gate, _ = gate_for()
    side = ScriptedSide(b"[]", LineTooLong("a message of more than 4096 bytes"))
    error = gate.talk(side)
    assert isinstance(error, RunError)
    assert error.type == ErrorType.RESULT_INVALID
    assert "over the limit of 4096 bytes" in error.message
    assert "bar pipe" in error.message
    assert error.details == {"bar": 1}
    assert side.sent == BARS[:1]


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b"GIVE ME ALL THE BARS", "a commit is not JSON"),
        (b'{"op": "order"}', "a commit is not a JSON list of events"),
        (commit(*[cancel(1)] * 11), "11 events in one bar, over the limit of 10"),
    ],
    ids=["text", "object", "too-many"],
)
def test_garbage_on_the_pipe_is_result_invalid_naming_the_bar_and_the_rule(
    line: bytes, rule: str
) -> None:
    gate, referee = gate_for()
    side = ScriptedSide(b"[]", b"[]", line)
    error = gate.talk(side)
    assert isinstance(error, RunError)
    assert error.type == ErrorType.RESULT_INVALID
    assert error.message.startswith("the strategy side broke the bar pipe's protocol at bar 2: "), (
        error.message
    )
    assert rule in error.message
    assert error.details == {"bar": 2}
    assert side.sent == BARS[:2]  # no bar is released after it
    assert referee.received == []
    assert not hasattr(referee, "ended_at")  # the run fails: the referee is aborted, not ended


@pytest.mark.parametrize("answered", [0, 1, 2, 3])
def test_the_strategy_side_ending_early_leaves_the_count_of_bars_released(answered: int) -> None:
    gate, referee = gate_for()
    side = ScriptedSide(*[b"[]"] * answered)  # then the end of its stdout
    assert gate.talk(side) is None
    assert gate.released == answered
    assert side.sent == BARS[:answered]
    assert referee.ended_at == answered


def test_a_pipe_gone_while_sending_ends_the_talk_without_counting_that_bar() -> None:
    gate, _ = gate_for()
    side = ScriptedSide(b"[]", b"[]", b"[]", open_for=1)
    assert gate.talk(side) is None
    assert side.sent == BARS[:1]
    assert gate.released == 1


def test_a_run_without_bars_gets_the_end_at_once() -> None:
    gate, referee = gate_for([])
    side = ScriptedSide(commit(order(ref=1)))
    assert gate.talk(side) is None
    assert side.sent == [b"E\n"]
    assert (gate.released, gate.events, gate.rejected_events) == (0, 1, 1)
    assert referee.received == []


def test_an_integer_past_float_range_is_a_refused_event_not_a_fault_of_the_gate() -> None:
    gate, referee = gate_for()
    huge = (
        b'[{"op":"order","ref":1,"side":"buy","feed":0,"size":1'
        + b"0" * 400
        + (
            b',"price":null,"plimit":null,"exectype":"Market","valid":null,"tradeid":0,'
            b'"oco":null,"parent":null,"transmit":true,"trailamount":null,"trailpercent":null}]'
        )
    )
    side = ScriptedSide(b"[]", huge, b"[]", b"[]")
    assert gate.talk(side) is None
    assert (gate.released, gate.events, gate.rejected_events) == (3, 1, 1)
    assert referee.received == []


# --- StdioChannel: Docker's attach stream over a socket ---------------------------------------


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: 1 stdout, 2 stderr."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.fixture
def attached() -> Iterator[tuple[StdioChannel, socket.socket]]:
    """(the host's channel, the daemon's end of the connection)."""
    host, daemon = socket.socketpair()
    channel = StdioChannel(host, log_cap=1000)
    yield channel, daemon
    channel.release()
    daemon.close()


def test_a_line_is_reassembled_from_frames_split_at_every_byte(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    stream = frame(1, b'[{"op":') + frame(1, b'"cancel","ref":1}]\n')
    for byte in range(len(stream) - 1):
        daemon.sendall(stream[byte : byte + 1])
        with pytest.raises(TimeoutError):
            channel.read_line(100, timeout=0.002)
    daemon.sendall(stream[-1:])
    assert channel.read_line(100, timeout=5) == b'[{"op":"cancel","ref":1}]'


def test_stderr_frames_between_stdout_frames_go_to_the_logs(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    daemon.sendall(
        frame(2, b"starting\n")
        + frame(1, b"[")
        + frame(2, b"bar 0\n")
        + frame(1, b"]\n[1]\n")
        + frame(2, b"bar 1\n")
    )
    assert channel.read_line(100, timeout=5) == b"[]"
    assert channel.read_line(100, timeout=5) == b"[1]"
    daemon.close()
    assert channel.read_line(100, timeout=5) is None
    assert channel.logs.text() == ("starting\nbar 0\nbar 1\n", False)


def test_a_line_of_the_cap_passes_and_one_byte_more_is_line_too_long(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    daemon.sendall(frame(1, b"x" * 64 + b"\n" + b"y" * 65 + b"\n"))
    assert channel.read_line(64, timeout=5) == b"x" * 64
    with pytest.raises(LineTooLong, match="more than 64 bytes"):
        channel.read_line(64, timeout=5)


def test_a_flood_without_a_newline_is_line_too_long_before_it_ends(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    daemon.sendall(frame(1, b"z" * 200))  # the container keeps writing: no end, no newline
    with pytest.raises(LineTooLong):
        channel.read_line(100, timeout=5)


def test_no_whole_line_in_time_is_timeout_error_and_the_part_is_kept(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    daemon.sendall(frame(1, b"[1,"))
    with pytest.raises(TimeoutError):
        channel.read_line(100, timeout=0.05)
    daemon.sendall(frame(1, b"2]\n"))
    assert channel.read_line(100, timeout=5) == b"[1,2]"


def test_the_end_of_the_stream_is_none_and_an_unfinished_line_is_dropped(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    daemon.sendall(frame(1, b"[]\n[unfinished"))
    daemon.close()
    assert channel.read_line(100, timeout=5) == b"[]"
    assert channel.read_line(100, timeout=5) is None
    assert channel.read_line(100, timeout=5) is None


def test_send_reaches_stdin_and_fails_once_the_container_is_gone(
    attached: tuple[StdioChannel, socket.socket],
) -> None:
    channel, daemon = attached
    assert channel.send(BARS[0])
    assert daemon.recv(1000) == BARS[0]
    daemon.close()
    assert not channel.send(BARS[1])


def test_the_logs_keep_their_head_and_tail_past_the_cap() -> None:
    host, daemon = socket.socketpair()
    channel = StdioChannel(host, log_cap=20)
    daemon.sendall(frame(2, b"H" * 30) + frame(2, b"T" * 30))
    daemon.close()
    assert channel.read_line(10, timeout=5) is None
    text, cut = channel.logs.text()
    channel.release()
    assert cut
    assert text.startswith("H" * 10) and text.endswith("T" * 10)


# --- ConversationThread: the gate on a thread of its own --------------------------------------


class Talk:
    """A conversation: reads lines until `stop_at`, then ends with `ending` (or raises it)."""

    def __init__(self, stop_at: bytes, ending: RunError | Exception | None) -> None:
        self.stop_at = stop_at
        self.ending = ending
        self.lines: list[bytes] = []

    def talk(self, channel: StdioChannel) -> RunError | None:
        while (line := channel.read_line(100, timeout=5)) is not None:
            self.lines.append(line)
            if line == self.stop_at:
                break
        if isinstance(self.ending, Exception):
            raise self.ending
        return self.ending


def converse(talk: Talk, exits_by_itself: bool) -> tuple[Any, list[str]]:
    """Run `talk` on a ConversationThread over a stream of stdout lines and stderr logs:
    (its result, whether the run was stopped). The stream ends when the container exits by
    itself, or when stop_run kills it."""
    host, daemon = socket.socketpair()
    stopped: list[str] = []

    def stop_run() -> None:
        stopped.append("killed")
        daemon.close()

    daemon.sendall(
        frame(1, b"[]\n") + frame(2, b"log 1\n") + frame(1, b"[]\n[stop]\n[]\n")
        + frame(2, b"log 2\n")
    )  # fmt: skip
    if exits_by_itself:
        daemon.close()
    thread = ConversationThread(StdioChannel(host, log_cap=1000), talk, stop_run)
    try:
        logs = thread.result()
        return (thread.problem, logs), stopped
    finally:
        daemon.close()


def test_a_conversation_that_ends_by_itself_returns_the_logs_and_kills_nothing() -> None:
    talk = Talk(b"[stop]", None)
    (problem, logs), stopped = converse(talk, exits_by_itself=True)
    assert problem is None
    assert stopped == []
    assert talk.lines == [b"[]", b"[]", b"[stop]"]
    assert logs == ("log 1\nlog 2\n", False)  # drained to the end of the stream


def test_a_conversation_that_ends_the_run_stops_the_container_and_keeps_the_logs() -> None:
    error = RunError(type=ErrorType.RESULT_INVALID, message="garbage at bar 2")
    (problem, logs), stopped = converse(Talk(b"[stop]", error), exits_by_itself=False)
    assert problem == error
    assert stopped == ["killed"]
    assert logs == ("log 1\nlog 2\n", False)


def test_a_fault_in_the_conversation_stops_the_container_and_reaches_the_caller() -> None:
    host, daemon = socket.socketpair()
    stopped = threading.Event()

    def stop_run() -> None:
        stopped.set()
        daemon.close()

    daemon.sendall(frame(1, b"[]\n"))
    thread = ConversationThread(
        StdioChannel(host, log_cap=1000), Talk(b"[]", KeyError("host bug")), stop_run
    )
    with pytest.raises(KeyError, match="host bug"):
        thread.result()
    assert stopped.is_set()

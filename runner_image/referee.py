"""The referee of a verified run: replays the committed events over the bars; runs no user code.

Run as `python3 -I referee.py` by the host (a trusted process: PROTOCOL.md "The referee"), or
forked with Backtrader imported by referee_server.py, the same from `main` on. It waits on stdin
for one job:

    line 1       {"protocol": 1, "timeframe": "D1", "broker": {...},
                  "feeds": [{"name": "ORCL", "bars_csv": "<data.csv>"}, ...]}
    maybe        S {"bars": path, "commits": path, "steps": "...", ...}   serve the bars
    then         [stamp, [event, ...]]   the events the trusted side stamped with bar `stamp`,
                                         stamps increasing (bars without events are skipped)
    last         E <bars>                the strategy side was released <bars> bars in all

and answers on stdout with two lines: `{"rejected_events": n}`, then the completed result
(PROTOCOL.md "The result"), which the host validates as it validates the strategy's claim.
The events arrive while the strategy still runs: the replay follows one bar behind it and
blocks where it has caught up. Every event was validated by the host first; one that still
cannot be placed (Backtrader raises, or it would exceed the exposure cap) is counted as
rejected and left out, so no event can stop the replay.

With `S` (under runc) the referee holds the bar pipe itself (barpipe.py): before those two
lines it tells the host, on stdout, each commit to check (`C <stamp> <line>`, answered on stdin
with `[stamp, [accepted event, ...]]`), then the end (`X <bars released>`) or the limit the
strategy side broke (`P <timeout|too_long> <bar>`, and it exits).
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections import deque
from typing import IO, Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.dont_write_bytecode = True

import compat  # noqa: E402

compat.apply()

import backtrader as bt  # noqa: E402

import backtest  # noqa: E402
import barpipe  # noqa: E402
import datafeed  # noqa: E402

# No single order may be worth more than this many times the account's value when placed:
# a strategy sized from equity it invented in its own process (a patched broker) could
# otherwise be replayed into a position no account could hold. Backtrader's own cash check
# (checksubmit) still applies on top, as in any run.
MAX_ORDER_VALUE_MULTIPLE = 50.0
# Orders resting at once: Backtrader checks each on every bar, so a flood of resting orders
# would cost the host's referee time and memory that grow with the square of the run.
MAX_OPEN_ORDERS = 500
_EXECTYPES = {name: index for index, name in enumerate(bt.Order.ExecTypes)}


class EventSource:
    """The event lines on `stream`, handed out bar by bar; after `S`, the bar pipe's too."""

    def __init__(self, stream: IO[bytes], out: IO[bytes]) -> None:
        self._stream = stream
        self._out = out
        self._ahead: tuple[int, list[dict[str, Any]]] | None = None
        self._ended = False
        self._started = False
        self._server: barpipe.BarServer | None = None  # set by `S`
        self._checking: deque[int] = deque()  # stamps of the commits the host is checking
        self._told_end = False
        self.bars: int | None = None  # how many bars the strategy side had, once known

    def at(self, bar: int) -> list[dict[str, Any]]:
        """The events stamped `bar`; blocks until the host has sent a later stamp or the end
        (or, serving the pipe, until the host has answered every commit up to `bar`)."""
        if not self._started:
            self._start()
        if self._server is not None:
            self._serve(bar)
        found: list[dict[str, Any]] = []
        while True:
            if self._ahead is None:
                if self._ended or self._nothing_due(bar):
                    return found
                self._read()
                continue
            stamp, events = self._ahead
            if stamp > bar:
                return found
            self._ahead = None
            if stamp == bar:
                found.extend(events)

    def _read(self) -> None:
        """The host's next line: events (kept ahead) or the end."""
        line = self._stream.readline()
        if line.startswith(b"E"):
            self._ended = True
            self.bars = int(line[1:])
        elif not line:
            raise EOFError("the host closed the event stream without its end")
        else:
            stamp, events = json.loads(line)
            if self._checking:  # serving: the answer to the oldest commit sent
                self._checking.popleft()
            self._ahead = (stamp, events)

    def _start(self) -> None:
        """`S` after the header starts the bar pipe; any other line is the first event line."""
        self._started = True
        line = self._stream.readline()
        if not line.startswith(b"S "):
            self._stream = _Prepended(line, self._stream)
            return
        serve = json.loads(line[2:])
        self._server = barpipe.BarServer(
            serve["bars"],
            serve["commits"],
            serve["steps"].encode("ascii").splitlines(keepends=True),
            max_message_bytes=serve["max_message_bytes"],
            bar_seconds=serve["bar_seconds"],
            spin=serve.get("spin", True),
        )

    def _serve(self, bar: int) -> None:
        """Serve the pipe until the commit stamped `bar` is read (the one that comes before
        bar + 1 is released) or the pipe is over; each commit that is not `[]` goes to the
        host to check."""
        server = self._server
        assert server is not None
        out = self._out
        while not server.over and server.index <= bar + 1:
            try:
                got = server.exchange()
            except barpipe.PipeProblem as problem:
                out.write(f"P {problem.kind} {problem.bar}\n".encode())
                out.flush()
                os._exit(0)  # the host ends the run; nothing here is worth finishing
            if got is None:
                break
            stamp, line = got
            if line != b"[]":
                out.write(b"C %d " % stamp + line + b"\n")
                out.flush()
                self._checking.append(stamp)
        if server.over and not self._told_end:
            self._told_end = True
            out.write(b"X %d\n" % server.released)
            out.flush()

    def _nothing_due(self, bar: int) -> bool:
        """Serving the pipe, whether reading on now would wait for nothing: the host has
        answered every commit up to `bar`, and, the pipe not being over, sends no `E` yet."""
        if self._server is None or self._server.over:
            return False
        return not (self._checking and self._checking[0] <= bar)


class _Prepended:
    """A stream with one line put back in front of it."""

    def __init__(self, line: bytes, stream: IO[bytes]) -> None:
        self._line: bytes | None = line
        self._stream = stream

    def readline(self) -> bytes:
        if self._line is not None:
            line, self._line = self._line, None
            return line
        return self._stream.readline()


class Replay(bt.Strategy):  # type: ignore[misc]  # backtrader is untyped
    """Places the committed orders and cancels at the bar they were stamped with."""

    params = (("events", None),)

    def start(self) -> None:
        self.rejected = 0
        self._replayed: dict[int, Any] = {}  # the strategy's order ref -> the replayed order

    def next(self) -> None:
        events = self.p.events
        for event in events.at(len(self.data) - 1):
            try:
                placed = self._apply(event)
            except Exception:  # whatever Backtrader makes of a strange but valid event
                placed = False
            if not placed:
                self.rejected += 1
        if events.bars is not None and len(self.data) >= events.bars:
            self.env.runstop()  # the strategy side stopped here (runstop, or its end)

    def _apply(self, event: dict[str, Any]) -> bool:
        if event["op"] == "cancel":
            order = self._replayed.get(event["ref"])
            if order is None:
                return False
            self.broker.cancel(order)
            return True
        oco = self._linked(event["oco"])
        parent = self._linked(event["parent"])
        if oco is False or parent is False:
            return False
        data = self.datas[event["feed"]]
        # Valued at the higher of its own price and the last close: a tiny limit price must
        # not carry a huge order past the cap (it would fill at the market's price).
        price = max(event["price"] or 0.0, data.close[0])
        if event["size"] * price > MAX_ORDER_VALUE_MULTIPLE * self.broker.getvalue():
            return False
        if len(self.broker.pending) + len(self.broker.submitted) >= MAX_OPEN_ORDERS:
            return False
        place = self.broker.buy if event["side"] == "buy" else self.broker.sell
        self._replayed[event["ref"]] = place(
            self,
            data,
            size=event["size"],
            price=event["price"],
            plimit=event["plimit"],
            exectype=_EXECTYPES[event["exectype"]],
            valid=event["valid"],
            tradeid=event["tradeid"],
            oco=oco,
            trailamount=event["trailamount"],
            trailpercent=event["trailpercent"],
            parent=parent,
            transmit=event["transmit"],
        )
        return True

    def _linked(self, ref: int | None) -> Any:
        """The replayed order `ref` names, None for none, False for one never placed here."""
        if ref is None:
            return None
        return self._replayed.get(ref, False)


class _NoProgress:
    """The referee reports no progress: the strategy side's is the one users see."""

    def tick(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


def referee(header: dict[str, Any], events: EventSource) -> tuple[int, dict[str, Any]]:
    """Replay one job: (events rejected, the completed result)."""
    # The run's feeds in order, each named by its symbol; a header of one feed may give its
    # bars as `bars_csv` alone.
    feeds = header.get("feeds") or [{"name": None, "bars_csv": header["bars_csv"]}]
    frames = [datafeed.read_bars(io.StringIO(feed["bars_csv"])) for feed in feeds]
    made = [
        (feed["name"], datafeed.make_feed(frame, header["timeframe"]))
        for feed, frame in zip(feeds, frames, strict=True)
    ]
    cerebro = backtest.build_cerebro(header["broker"], made)
    cerebro.addstrategy(Replay, events=events)
    backtest.add_recorder(cerebro, _NoProgress())
    (strategy,) = cerebro.run()
    return strategy.rejected, backtest.completed_result(strategy)


def main() -> None:
    datafeed.warm_up()
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())  # a warm referee waits here for its job
    if header.get("protocol") != backtest.PROTOCOL:
        raise ValueError(f"unsupported protocol {header.get('protocol')!r}")
    out = sys.stdout.buffer
    rejected, result = referee(header, EventSource(stdin, out))
    out.write(json.dumps({"rejected_events": rejected}).encode() + b"\n")
    out.write(backtest.encode_result(result) + b"\n")
    out.flush()


if __name__ == "__main__":
    main()
    os._exit(0)  # the answer is flushed: skip the interpreter's teardown (~0.1 s of pandas)

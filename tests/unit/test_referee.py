"""Verified mode end to end, without Docker: the referee (runner_image/referee.py) replays a
run's events into the run's own numbers, and the harness in verified mode (runner_image/
harness.py) talks to the host's real bar gate over its stdin and stdout.

The referee's numbers are checked against plain Backtrader in this process: the same bars, the
same broker, the strategy itself run with runner_image/verified.py's event log and guard, its
events recorded with the bar each was made at. The harness runs as the container runs it, its
three streams carried over one socket in Docker's attach format to the host's StdioChannel,
BarGate and ConversationThread, and the referee runs as a process of its own, as in a job.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from backtest_sandbox.sandbox.claim import CompletedClaim, parse_claim
from backtest_sandbox.sandbox.conversation import ConversationThread
from backtest_sandbox.sandbox.fifo import FifoChannel
from backtest_sandbox.sandbox.stdio import StdioChannel
from backtest_sandbox.verify.gate import BarGate
from backtest_sandbox.verify.referee import GateLimits, RefereeRun, referee_command

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "runner_image"
SHARED_DATA = REPO.parent / "shared" / "data" / "backtrader"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
RUN_TIMEOUT = 30  # seconds for one process; each takes one or two
COSTLY = {"initial_capital": 10000.0, "commission": 0.001, "slippage": 0.0005, "stake": 10.0}
LIMITS = GateLimits(max_message_bytes=256 * 1024, max_events_per_bar=1000, bar_seconds=10.0)

pytestmark = pytest.mark.timeout(60)


@functools.cache
def orcl_csv(first: str = "2005-01-01", end: str = "2008-01-01") -> str:
    """ORCL's daily bars from `first` up to `end`, as the host's normalised data.csv text."""
    raw = pd.read_csv(SHARED_DATA / "orcl-1995-2014.txt")
    raw = raw[(raw["Date"] >= first) & (raw["Date"] < end)]
    frame = pd.DataFrame({"datetime": raw["Date"] + "T00:00:00"})
    for column in ("Open", "High", "Low", "Close", "Volume"):
        frame[column.lower()] = raw[column]
    return str(frame.to_csv(index=False))


def bar_rows(csv: str) -> list[bytes]:
    """The rows the gate releases: data.csv without its header, newline included."""
    return csv.encode().splitlines(keepends=True)[1:]


def bar_frame(csv: str) -> pd.DataFrame:
    frame = pd.read_csv(io.StringIO(csv), index_col="datetime")
    frame.index = pd.to_datetime(frame.index, format=TIMESTAMP_FORMAT)
    return frame


# --- runner_image's modules, in this process --------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> types.SimpleNamespace:
    """referee.py and the modules it shares with the harness, imported by their own names as
    the referee process imports them (its directory first on sys.path, for the import only)."""
    saved_path, writes_bytecode = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, str(RUNNER))
    sys.dont_write_bytecode = True  # keep runner_image clean
    try:
        referee = importlib.import_module("referee")  # applies compat.py first
        modules = {
            name: importlib.import_module(name) for name in ("backtest", "verified", "barpipe")
        }
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = writes_bytecode
    return types.SimpleNamespace(referee=referee, **modules)


class _NoProgress:
    def tick(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


Stamped = list[tuple[int, list[dict[str, Any]]]]


def plain_run(
    runner: types.SimpleNamespace, strategy: type, broker: dict[str, float], csv: str
) -> tuple[dict[str, Any], Stamped]:
    """`strategy` through plain Backtrader (PandasData, preloaded, vectorised), the broker set as
    PROTOCOL.md says, with verified.py's guard recording its events: (its completed result,
    its events grouped by the bar each was made at, as the gate stamps them)."""
    feed = bt.feeds.PandasData(dataname=bar_frame(csv))
    feed.total_bars = len(feed.p.dataname)  # as the harness's feeds have it (PROTOCOL.md)
    stamped: Stamped = []

    class StampedLog(runner.verified.EventLog):  # type: ignore[misc, name-defined]
        def order(self, *args: Any) -> None:
            super().order(*args)
            self.stamp()

        def cancel(self, *args: Any) -> None:
            super().cancel(*args)
            self.stamp()

        def stamp(self) -> None:
            events = json.loads(self.commit())
            bar = len(feed) - 1  # the newest bar this process has seen
            if stamped and stamped[-1][0] == bar:
                stamped[-1][1].extend(events)
            else:
                stamped.append((bar, events))

    cerebro = bt.Cerebro(stdstats=False, tradehistory=True)
    cerebro.adddata(feed)
    cerebro.broker.setcash(broker["initial_capital"])
    cerebro.broker.setcommission(commission=broker["commission"])
    cerebro.broker.set_slippage_perc(broker["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=broker["stake"])
    runner.verified.guard(cerebro, StampedLog())
    cerebro.addstrategy(strategy)
    runner.backtest.add_recorder(cerebro, _NoProgress())
    (ran,) = cerebro.run()
    result = runner.backtest.completed_result(ran)
    assert result["final_value"] == cerebro.broker.getvalue()
    return json.loads(runner.backtest.encode_result(result)), stamped


def event_lines(stamped: Stamped, bars: int) -> bytes:
    """What the host writes to the referee after its header, as RefereeRun writes it."""
    lines = [json.dumps([stamp, events], allow_nan=False) + "\n" for stamp, events in stamped]
    return "".join(lines).encode() + f"E {bars}\n".encode()


def replay(
    runner: types.SimpleNamespace, csv: str, broker: dict[str, float], lines: bytes
) -> tuple[int, dict[str, Any]]:
    """referee.py's replay in this process, on the event lines as the process reads them:
    (events it refused, its result as the process would write it)."""
    header = {"protocol": 1, "timeframe": "D1", "broker": broker, "bars_csv": csv}
    source = runner.referee.EventSource(io.BytesIO(lines), io.BytesIO())  # nothing to tell
    rejected, result = runner.referee.referee(header, source)
    return rejected, json.loads(runner.backtest.encode_result(result))


# --- the strategies replayed ------------------------------------------------------------------


class SmaCross(bt.Strategy):  # type: ignore[misc]
    """Market orders only, from the sizer's stake."""

    def __init__(self) -> None:
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=10), bt.ind.SMA(period=30))

    def next(self) -> None:
        if not self.position and self.cross > 0:
            self.buy()
        elif self.position and self.cross < 0:
            self.close()


class LimitStopOco(bt.Strategy):  # type: ignore[misc]
    """Entries by limit or stop orders that expire (valid=timedelta), some cancelled before they
    fill; each fill gets an OCO stop-loss/take-profit pair from notify_order, and a pair still
    open after 15 bars is cancelled and the position closed at market."""

    def start(self) -> None:
        self.entry: Any = None
        self.exits: list[Any] = []
        self.entered = 0
        self.tries = 0

    def notify_order(self, order: Any) -> None:
        # A notification carries a copy of the order: an order is known by its ref.
        if self.entry is not None and order.ref == self.entry.ref and not order.alive():
            self.entry = None
        if order.status != order.Completed:
            return
        if order.isbuy():
            paid = order.executed.price
            stop = self.sell(exectype=bt.Order.Stop, price=paid * 0.96)
            take = self.sell(exectype=bt.Order.Limit, price=paid * 1.05, oco=stop)
            self.exits = [stop, take]
            self.entered = len(self)
        elif order in self.exits:
            self.exits = []

    def next(self) -> None:
        close = self.data.close[0]
        if self.exits and len(self) - self.entered >= 15:
            for order in self.exits:
                self.cancel(order)
            self.exits = []
            self.close()
        elif self.entry is not None and self.tries % 3 == 0 and len(self) % 2:
            self.cancel(self.entry)  # changed its mind
        elif not self.position and not self.exits and self.entry is None:
            self.tries += 1
            if self.tries % 2:
                self.entry = self.buy(
                    exectype=bt.Order.Limit, price=close * 0.99, valid=timedelta(days=3)
                )
            else:
                self.entry = self.buy(
                    exectype=bt.Order.Stop, price=close * 1.01, valid=timedelta(days=4)
                )


class Brackets(bt.Strategy):  # type: ignore[misc]
    """buy_bracket: a limit entry with a stop-loss and a take-profit child; every fourth entry
    is cancelled before it fills (the broker cancels its children with it)."""

    def start(self) -> None:
        self.main: Any = None
        self.legs: list[Any] = []
        self.count = 0

    def notify_order(self, order: Any) -> None:
        if not order.alive() and order in self.legs:  # Order == Order compares refs
            self.legs.remove(order)

    def next(self) -> None:
        entry_waits = self.legs and self.main.status == bt.Order.Accepted
        if entry_waits and self.count % 4 == 0:
            self.cancel(self.main)
        elif not self.position and not self.legs:
            self.count += 1
            close = self.data.close[0]
            self.legs = list(
                self.buy_bracket(
                    price=close * 0.995, stopprice=close * 0.96, limitprice=close * 1.04
                )
            )
            self.main = self.legs[0]


def kinds(stamped: Stamped) -> set[str]:
    """What the events exercise: their ops, exectypes and links."""
    found = set()
    for _, events in stamped:
        for event in events:
            if event["op"] == "cancel":
                found.add("cancel")
                continue
            found.add(event["exectype"])
            found.update(link for link in ("oco", "parent") if event[link] is not None)
            if event["valid"] is not None:
                found.add("valid")
            if not event["transmit"]:
                found.add("held")
    return found


@pytest.mark.parametrize(
    ("strategy", "exercised"),
    [
        (SmaCross, {"Market"}),
        (LimitStopOco, {"Market", "Limit", "Stop", "valid", "oco", "cancel"}),
        (Brackets, {"Limit", "Stop", "parent", "held", "cancel"}),
    ],
    ids=["market", "limit-stop-oco", "bracket"],
)
def test_the_referee_replays_a_plain_run_from_its_events_bit_for_bit(
    runner: types.SimpleNamespace, strategy: type, exercised: set[str]
) -> None:
    csv = orcl_csv()
    plain, stamped = plain_run(runner, strategy, COSTLY, csv)
    assert kinds(stamped) == exercised
    assert len(plain["trades"]) >= 10
    assert all(trade["commission"] > 0 for trade in plain["trades"])

    rejected, replayed = replay(runner, csv, COSTLY, event_lines(stamped, 754))

    assert rejected == 0
    assert replayed["bars"] == plain["bars"] == 754
    assert replayed["final_value"] == plain["final_value"]
    assert replayed["final_cash"] == plain["final_cash"]
    assert replayed["equity_curve"] == plain["equity_curve"]
    assert replayed["trades"] == plain["trades"]
    assert replayed == plain


def buy(ref: int, size: float, **changes: Any) -> dict[str, Any]:
    """An order event as the gate passes it on: a market buy unless `changes` say otherwise."""
    return {
        "op": "order", "ref": ref, "side": "buy", "feed": 0, "size": size, "price": None,
        "plimit": None, "exectype": "Market", "valid": None, "tradeid": 0, "oco": None,
        "parent": None, "transmit": True, "trailamount": None, "trailpercent": None, **changes,
    }  # fmt: skip


def test_an_order_over_50_times_the_account_is_refused_and_a_cancel_of_it_too(
    runner: types.SimpleNamespace,
) -> None:
    csv = orcl_csv(end="2005-03-01")
    close = bar_frame(csv)["close"]
    cap = 50 * COSTLY["initial_capital"]  # the account is all cash before the first fill
    events: Stamped = [
        (3, [buy(1, cap / close.iloc[3] * 1.001)]),  # over the cap at the bar's close
        (4, [{"op": "cancel", "ref": 1}, {"op": "cancel", "ref": 99}]),  # never placed here
        (
            5,
            [
                buy(2, 1.0, exectype="Limit", price=cap * 1.001),  # valued at its price
                buy(6, cap / close.iloc[5] * 1.001, exectype="Limit", price=0.01),  # or the close
            ],
        ),
        (6, [buy(3, cap / close.iloc[6] * 0.999)]),  # under it: placed (the broker refuses it)
        (10, [buy(4, 10.0)]),
        (20, [buy(5, 10.0, side="sell")]),
    ]

    class Reference(bt.Strategy):  # type: ignore[misc]
        """What is left: the buy at bar 6 the broker refuses, the buy at bar 10 and the sell
        at bar 20."""

        def next(self) -> None:
            if len(self) == 7:
                self.buy(size=cap / close.iloc[6] * 0.999)
            elif len(self) == 11:
                self.buy(size=10.0)
            elif len(self) == 21:
                self.sell(size=10.0)

    plain, _ = plain_run(runner, Reference, COSTLY, csv)
    rejected, replayed = replay(runner, csv, COSTLY, event_lines(events, len(close)))

    assert rejected == 5  # orders 1, 2 and 6, and the cancels of 1 and of 99
    assert len(replayed["trades"]) == 1  # the replay went on past them
    assert [order["events"][-1][0] for order in replayed["orders"]] == [
        "Margin",  # order 3: placed, and refused by the broker's cash check
        "Completed",
        "Completed",
    ]
    assert replayed == plain


def test_the_end_at_fewer_bars_ends_the_replay_there(runner: types.SimpleNamespace) -> None:
    csv = orcl_csv(end="2005-07-01")
    stamps = [row.split(b",")[0].decode() for row in bar_rows(csv)]
    assert len(stamps) > 100
    plain, stamped = plain_run(runner, SmaCross, COSTLY, csv)
    # The strategy side was released 100 bars (it stopped there): its commits up to bar 98.
    early = [(stamp, events) for stamp, events in stamped if stamp < 99]

    rejected, replayed = replay(runner, csv, COSTLY, event_lines(early, 100))

    assert rejected == 0
    assert replayed["bars"] == len(replayed["equity_curve"]) == 100
    assert [stamp for stamp, _ in replayed["equity_curve"]] == stamps[:100]
    assert replayed["equity_curve"] == plain["equity_curve"][:100]
    closed = [trade for trade in plain["trades"] if trade["exit_time"] <= stamps[99]]
    assert replayed["trades"] == closed != []


def test_the_referee_keeps_no_more_than_500_orders_resting(runner: types.SimpleNamespace) -> None:
    csv = orcl_csv(end="2005-03-01")
    close = bar_frame(csv)["close"]
    # Limit buys at half the price: none fills, all of them rest (and the cash covers them).
    events: Stamped = [
        (bar, [buy(ref, 1.0, exectype="Limit", price=close.iloc[bar] * 0.5) for ref in refs])
        for bar, refs in ((3, range(1, 401)), (4, range(401, 801)), (5, range(801, 1201)))
    ]
    rejected, replayed = replay(runner, csv, COSTLY, event_lines(events, len(close)))
    assert replayed["final_value"] == COSTLY["initial_capital"]
    assert rejected == 1200 - 500


# --- what verified.py refuses, in this process ---------------------------------------------


def guarded_run(runner: types.SimpleNamespace, strategy: type, **options: Any) -> Any:
    """`strategy` on a Cerebro set up as the harness sets a verified run up: the broker, then
    the guard, then the strategy checked; what Cerebro.run raises."""
    feed = bt.feeds.PandasData(dataname=bar_frame(orcl_csv(end="2005-02-01")))
    cerebro = bt.Cerebro(stdstats=False, preload=False, runonce=False, **options)
    cerebro.adddata(feed)
    cerebro.broker.setcash(10000.0)
    runner.verified.guard(cerebro, runner.verified.EventLog())
    with pytest.raises(Exception) as raised:
        runner.verified.check_strategy(strategy, cerebro)
        cerebro.addstrategy(strategy)
        cerebro.run()
    return raised.value


class CashInStart(bt.Strategy):  # type: ignore[misc]
    def start(self) -> None:
        self.broker.setcash(1e9)


class CheatOnCloseLater(bt.Strategy):  # type: ignore[misc]
    def next(self) -> None:
        if len(self) == 5:
            self.broker.set_coc(True)


class SecondFeed(bt.Strategy):  # type: ignore[misc]
    def __init__(self) -> None:
        self.env.adddata(self.data)


class Timer(bt.Strategy):  # type: ignore[misc]
    def __init__(self) -> None:
        self.add_timer(when=bt.timer.SESSION_START)


class OwnBroker(bt.Strategy):  # type: ignore[misc]
    def __init__(self) -> None:
        self.env.setbroker(bt.brokers.BackBroker())


class OnOpen(bt.Strategy):  # type: ignore[misc]
    def next_open(self) -> None:
        pass


@pytest.mark.parametrize(
    ("strategy", "options", "feature", "says"),
    [
        (CashInStart, {}, "broker_settings", "broker.setcash is not supported"),
        (CheatOnCloseLater, {}, "broker_settings", "broker.set_coc is not supported"),
        (OwnBroker, {}, "broker_settings", "cerebro.setbroker is not supported"),
        (SecondFeed, {}, "data_feeds", "cerebro.adddata is not supported"),
        (Timer, {}, "timers", "timers (add_timer) is not supported"),
        (OnOpen, {}, "next_open", "OnOpen.next_open needs cheat-on-open"),
        (bt.Strategy, {"cheat_on_open": True}, "cheat_on_open", "cheat_on_open is not"),
    ],
    ids=["setcash-in-start", "set_coc-in-next", "setbroker", "adddata", "timer", "next_open",
         "cheat_on_open"],
)  # fmt: skip
def test_what_cannot_be_replayed_is_refused_by_name_wherever_the_strategy_asks(
    runner: types.SimpleNamespace, strategy: type, options: dict[str, Any], feature: str, says: str
) -> None:
    refused = guarded_run(runner, strategy, **options)
    assert isinstance(refused, runner.verified.UnsupportedFeature)
    assert refused.feature == feature
    assert says in str(refused)


class Peek(bt.Strategy):  # type: ignore[misc]
    def next(self) -> None:
        self.data.close[1]


class OwnIndexError(bt.Strategy):  # type: ignore[misc]
    def next(self) -> None:
        [0.0][1]


class OwnError(bt.Strategy):  # type: ignore[misc]
    def next(self) -> None:
        raise KeyError(1)


@pytest.mark.parametrize(
    ("strategy", "lookahead"), [(Peek, True), (OwnIndexError, False), (OwnError, False)]
)
def test_only_reading_a_line_past_the_current_bar_counts_as_a_look_ahead(
    runner: types.SimpleNamespace, strategy: type, lookahead: bool
) -> None:
    assert runner.verified.is_lookahead(guarded_run(runner, strategy)) is lookahead


def test_an_order_with_a_numpy_integer_tradeid_can_be_committed(
    runner: types.SimpleNamespace,
) -> None:
    feed = bt.feeds.PandasData(dataname=bar_frame(orcl_csv(end="2005-02-01")))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    log = runner.verified.EventLog()
    runner.verified.guard(cerebro, log)

    class Tagged(bt.Strategy):  # type: ignore[misc]
        def next(self) -> None:
            if len(self) == 3:
                self.buy(tradeid=np.int64(1))  # fine in fast mode and in plain Backtrader

    cerebro.addstrategy(Tagged)
    cerebro.run()
    (event,) = json.loads(log.commit())
    assert event["op"] == "order"


# --- the harness in verified mode, against the host's gate ------------------------------------


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed attach stream: 1 stdout, 2 stderr."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def run_dirs(root: Path) -> tuple[Path, Path]:
    """A run directory's in/ and out/, with the two out files the host pre-creates, empty."""
    job, out = root / "in", root / "out"
    job.mkdir()
    out.mkdir()
    for name in ("result.json", "progress"):
        (out / name).touch()
    return job, out


def verified_spec(code: str, broker: dict[str, float], bars: int, pipe: Any) -> dict[str, Any]:
    return {
        "protocol": 1, "mode": "verified", "pipe": pipe, "code": textwrap.dedent(code),
        "filename": "strategy.py", "params": {}, "broker": broker,
        "data": {"timeframe": "D1", "bars": bars},
    }  # fmt: skip


def harness_command(job: Path, out: Path) -> list[str]:
    """The harness as the container runs it, on the host's Python."""
    harness = [sys.executable, "-I", str(RUNNER / "harness.py")]
    return [*harness, "--job-dir", str(job), "--out-dir", str(out)]


class AttachedHarness:
    """The harness run as a verified run's container runs it, on the host: its stdin, stdout
    and stderr carried over one socket as Docker's attach connection carries them, read on the
    host's side by a StdioChannel."""

    def __init__(
        self,
        root: Path,
        code: str,
        csv: str,
        broker: dict[str, float],
        names: list[str] | None = None,
    ) -> None:
        """`csv` is feed 0's bars; `names`, when given, name the run's feeds (PROTOCOL.md)."""
        job, out = run_dirs(root)
        self.result_path = out / "result.json"
        self.bars = bar_rows(csv)
        spec = verified_spec(code, broker, len(self.bars), pipe="stdio")
        if names is not None:
            spec["data"]["feeds"] = [{"name": name} for name in names]
        (job / "spec.json").write_text(json.dumps(spec))  # no data.csv: the bars come by pipe
        self.process = subprocess.Popen(
            harness_command(job, out),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        host, self._daemon = socket.socketpair()
        self.channel = StdioChannel(host, log_cap=64 * 1024)
        self._lock = threading.Lock()
        self._streams_open = 2
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pumps = [
            threading.Thread(target=self._frames, args=(self.process.stdout, 1), daemon=True),
            threading.Thread(target=self._frames, args=(self.process.stderr, 2), daemon=True),
            threading.Thread(target=self._to_stdin, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def talk(self, gate: BarGate) -> tuple[Any, tuple[str, bool] | None, dict[str, Any]]:
        """The run as the sandbox runner holds it: (what ended it early, its logs, result)."""
        conversation = ConversationThread(self.channel, gate, self.process.kill)
        try:
            self.process.wait(RUN_TIMEOUT)
            logs = conversation.result()
            problem = conversation.problem
        finally:
            self.close()
        return problem, logs, json.loads(self.result_path.read_bytes())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(RUN_TIMEOUT)
        self._daemon.close()
        for pump in self._pumps:
            pump.join(RUN_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def _frames(self, stream: IO[bytes], kind: int) -> None:
        while chunk := stream.read(64 * 1024):
            with self._lock, contextlib.suppress(OSError):  # the host hung up: drop it
                self._daemon.sendall(frame(kind, chunk))
        with self._lock:
            self._streams_open -= 1
            if not self._streams_open:  # the container has exited: the stream ends
                with contextlib.suppress(OSError):
                    self._daemon.shutdown(socket.SHUT_WR)

    def _to_stdin(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):
            while data := self._daemon.recv(64 * 1024):
                view = memoryview(data)
                while view:
                    view = view[stdin.write(view) :]
        with contextlib.suppress(OSError):
            stdin.close()


class FifoHarness:
    """The harness run as a verified run's container runs it under runc, on the host: the bar
    pipe is two FIFOs in its run directory, held by the host's FifoChannel, which hands them
    to the referee (runner_image/barpipe.py); the strategy's output is its stdout and stderr."""

    def __init__(self, root: Path, code: str, csv: str, broker: dict[str, float]) -> None:
        job, out = run_dirs(root)
        self.result_path = out / "result.json"
        bars, commits = job / "bars.pipe", out / "commits.pipe"
        os.mkfifo(bars)
        os.mkfifo(commits)
        self.channel = FifoChannel(bars, commits)  # opened before the harness can open them
        pipe = {"bars": str(bars), "commits": str(commits)}
        spec = verified_spec(code, broker, len(bar_rows(csv)), pipe=pipe)
        (job / "spec.json").write_text(json.dumps(spec))
        self.process = subprocess.Popen(
            harness_command(job, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def talk(self, gate: BarGate) -> tuple[Any, tuple[str, bool] | None, dict[str, Any]]:
        """As AttachedHarness.talk."""
        conversation = ConversationThread(self.channel, gate, self.process.kill)
        try:
            output, _ = self.process.communicate(timeout=RUN_TIMEOUT)
            assert conversation.result() is None  # the logs do not travel on FIFOs
            problem = conversation.problem
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        return problem, (output.decode(), False), json.loads(self.result_path.read_bytes())


class RecordingReferee:
    """Stands for the referee where its numbers are not the point: what the gate passed on."""

    def __init__(self) -> None:
        self.received: Stamped = []

    def send(self, stamp: int, events: list[dict[str, Any]]) -> None:
        self.received.append((stamp, events))

    def end(self, bars: int) -> None:
        self.ended_at = bars


class RecordedRefereeRun(RefereeRun):
    """The real referee process, and what the gate passed on to it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        super().__init__(process)
        self.received: Stamped = []

    def send(self, stamp: int, events: list[dict[str, Any]]) -> None:
        self.received.append((stamp, events))
        super().send(stamp, events)


def run_verified(
    tmp_path: Path, code: str, csv: str
) -> tuple[Any, tuple[str, bool] | None, dict[str, Any], BarGate, RecordingReferee]:
    referee = RecordingReferee()
    gate = BarGate(bar_rows(csv), referee, LIMITS)  # type: ignore[arg-type]
    problem, logs, result = AttachedHarness(tmp_path, code, csv, COSTLY).talk(gate)
    return problem, logs, result, gate, referee


def test_a_look_ahead_is_an_index_error_that_says_why(tmp_path: Path) -> None:
    code = """\
        import backtrader as bt

        class Peek(bt.Strategy):
            def next(self):
                if self.data.close[1] > self.data.close[0]:
                    self.buy()
    """
    problem, _, result, gate, _ = run_verified(tmp_path, code, orcl_csv(end="2005-03-01"))
    assert problem is None  # the pipe's rules were kept: the strategy itself failed
    assert result["outcome"] == "runtime_error"
    error = result["error"]
    assert error["exc_type"] == "IndexError"
    assert error["message"].startswith("array index out of range: ")
    assert "index 1 and later have not happened yet" in error["message"]
    assert 'File "strategy.py", line 5, in next' in error["traceback"]
    assert gate.released == 1  # it never saw the bar it asked for


@pytest.mark.parametrize(
    ("code", "feature", "says", "released"),
    [
        (
            """\
            import backtrader as bt

            class OwnCommission(bt.Strategy):
                def __init__(self):
                    self.broker.setcommission(commission=0.0)
            """,
            "broker_settings",
            "broker.setcommission is not supported in a verified run",
            1,  # bar 0 is fetched before the strategy is loaded (PROTOCOL.md, the pipe)
        ),
        (
            """\
            import backtrader as bt

            class FromHistory(bt.Strategy):
                def next(self):
                    self.buy(exectype=bt.Order.Historical)
            """,
            "Order.Historical",
            "Order.Historical is not supported in a verified run",
            1,
        ),
    ],
    ids=["setcommission-in-init", "order-historical"],
)
def test_what_the_referee_cannot_replay_is_refused_by_name(
    tmp_path: Path, code: str, feature: str, says: str, released: int
) -> None:
    problem, _, result, gate, referee = run_verified(tmp_path, code, orcl_csv(end="2005-03-01"))
    assert problem is None
    assert result["outcome"] == "unsupported_feature"
    assert result["feature"] == feature
    assert result["error"]["exc_type"] == "UnsupportedFeature"
    assert says in result["error"]["message"]
    assert gate.released == released
    assert referee.received == []


HONEST = """\
    import backtrader as bt

    class Honest(bt.Strategy):
        def __init__(self):
            self.cross = bt.ind.CrossOver(bt.ind.SMA(period=5), bt.ind.SMA(period=20))

        def prenext(self):
            print("bar", len(self))  # the logs: never onto the bar pipe

        def next(self):
            print("bar", len(self))
            if len(self) == 25:
                self.huge = self.buy(size=1e9)  # its own broker refuses it (margin)
            elif len(self) == 26:
                self.cancel(self.huge)
            if not self.position and self.cross > 0:
                self.buy()
            elif self.position and self.cross < 0:
                self.close()
            if len(self) == self.data.total_bars - 20:
                self.env.runstop()
"""


def without(result: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in keys}


def same_refs(stamped: Stamped) -> Stamped:
    """`stamped` with each order ref replaced by its order of appearance: refs are counted per
    process, so two processes' runs name the same orders differently."""
    numbers: dict[int, int] = {}

    def number(ref: int | None) -> int | None:
        return None if ref is None else numbers.setdefault(ref, len(numbers) + 1)

    return [
        (
            stamp,
            [
                {**event, **{link: number(event[link]) for link in ("ref", "oco", "parent")
                             if link in event}}
                for event in events
            ],
        )
        for stamp, events in stamped
    ]  # fmt: skip


@pytest.mark.parametrize(
    "pipe", [AttachedHarness, FifoHarness], ids=["gate-serves", "referee-serves"]
)
def test_an_honest_strategys_claim_and_the_referees_replay_equal_plain_backtrader(
    tmp_path: Path,
    runner: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    pipe: type[AttachedHarness | FifoHarness],
) -> None:
    """Both ways of holding the pipe: the host's gate serves the bars (the attach connection,
    gVisor), or the referee does and the gate checks what it passes on (FIFOs, runc)."""
    csv = orcl_csv(first="2006-01-01", end="2007-01-01")
    rows = bar_rows(csv)
    referee_process = subprocess.Popen(  # both start at once: their imports overlap
        referee_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    harness = pipe(tmp_path, HONEST, csv, COSTLY)
    referee = RecordedRefereeRun(referee_process)
    try:
        referee.begin({"protocol": 1, "timeframe": "D1", "broker": COSTLY, "bars_csv": csv})
        gate = BarGate(rows, referee, LIMITS)
        problem, logs, claimed = harness.talk(gate)
        rejected, raw = referee.finish(gate.released, RUN_TIMEOUT)
    finally:
        referee.abort()
    # The same strategy in this process, on plain Backtrader with the bars preloaded.
    module = types.ModuleType("honest_strategy")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # backtrader looks classes up
    exec(compile(textwrap.dedent(HONEST), "honest_strategy.py", "exec"), module.__dict__)
    plain, stamped = plain_run(runner, module.Honest, COSTLY, csv)

    assert problem is None
    stopped = len(rows) - 20  # runstop at that bar: no bar after it was released
    assert gate.released == claimed["bars"] == plain["bars"] == stopped
    assert len(plain["trades"]) >= 3
    # The strategy's claim, and the referee's replay of its commits: plain Backtrader's numbers.
    assert claimed == plain
    replayed = json.loads(raw)
    order_log = ("orders", "orders_total")
    assert without(replayed, *order_log) == without(plain, *order_log)
    # The order log: the referee never placed the huge order (below), so its log is plain
    # Backtrader's without that one, the orders after it numbered one lower.
    (huge_order,) = [order for order in plain["orders"] if order.get("size") == 1e9]
    assert [event[0] for event in huge_order["events"]] == ["Submitted", "Margin"]
    kept = [order for order in plain["orders"] if order is not huge_order]
    assert replayed["orders"] == [order | {"ref": n} for n, order in enumerate(kept, start=1)]
    assert replayed["orders_total"] == plain["orders_total"] - 1 == len(kept)
    for result in (raw, json.dumps(claimed).encode()):
        assert isinstance(parse_claim(result, expected_bars=len(rows)), CompletedClaim)
    # The commits, stamped by the gate: the events plain Backtrader made, at the bars it made them.
    assert same_refs(referee.received) == same_refs(stamped)
    assert gate.events == sum(len(events) for _, events in stamped)
    # The huge order at bar 24 and its cancel at bar 25: the gate let both through, the referee
    # refused both (over the exposure cap, then unknown to it), which changed nothing.
    (stamp, (huge,)), (next_stamp, (cancel,)) = referee.received[:2]
    assert (stamp, next_stamp) == (24, 25)
    assert (huge["side"], huge["size"], huge["exectype"]) == ("buy", 1e9, "Market")
    assert cancel == {"op": "cancel", "ref": huge["ref"]}
    assert (gate.rejected_events, rejected) == (0, 2)
    # The strategy's prints, all of them and nothing else, went to the logs.
    assert logs == ("".join(f"bar {n}\n" for n in range(1, stopped + 1)), False)


class FifoSide:
    """A strategy side played by the test on the two FIFOs of a run directory."""

    def __init__(self, root: Path) -> None:
        self.bars_path, self.commits_path = root / "bars.pipe", root / "commits.pipe"
        os.mkfifo(self.bars_path)
        os.mkfifo(self.commits_path)
        self.channel = FifoChannel(self.bars_path, self.commits_path)
        self._bars = open(self.bars_path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._commits = open(self.commits_path, "wb", buffering=0)  # noqa: SIM115

    def commit(self, line: bytes) -> None:
        self._commits.write(line)

    def bar(self) -> bytes:
        return self._bars.readline()

    def close(self) -> None:
        self._commits.close()
        self._bars.close()


def serving_referee(csv: str) -> RecordedRefereeRun:
    referee = RecordedRefereeRun(
        subprocess.Popen(
            referee_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    )
    referee.begin({"protocol": 1, "timeframe": "D1", "broker": COSTLY, "bars_csv": csv})
    return referee


SERVED_LIMITS = GateLimits(max_message_bytes=4096, max_events_per_bar=3, bar_seconds=0.5)


@pytest.mark.parametrize(
    ("last", "error_type", "message", "details"),
    [
        (None, "timeout", "the strategy did not finish bar 2 of 20 within 0.5 s (the per-bar "
         "limit of a verified run)", {"bar": 2, "limit_seconds": 0.5}),
        (b"[" + b" " * 5000, "result_invalid", "the strategy side sent a message over the limit "
         "of 4096 bytes on the bar pipe", {"bar": 2}),
        (b"GIVE ME ALL THE BARS\n", "result_invalid", "the strategy side broke the bar pipe's "
         "protocol at bar 2: a commit is not JSON", {"bar": 2}),
        (b'[{"op":"cancel","ref":1},{"op":"cancel","ref":2},{"op":"cancel","ref":3},'
         b'{"op":"cancel","ref":4}]\n', "result_invalid", "the strategy side broke the bar "
         "pipe's protocol at bar 2: 4 events in one bar, over the limit of 3", {"bar": 2}),
    ],
    ids=["silent", "oversized", "garbage", "flood"],
)  # fmt: skip
def test_a_referee_serving_the_fifos_ends_the_run_on_each_broken_limit(
    tmp_path: Path, last: bytes | None, error_type: str, message: str, details: dict[str, Any]
) -> None:
    """The referee holds the pipe (runc): it times each bar and caps each line itself, and the
    gate checks the commits it passes on; the verdicts are the attach connection's."""
    csv = orcl_csv(first="2006-01-01", end="2006-02-01")
    rows = bar_rows(csv)[:20]
    referee = serving_referee(csv)
    side = FifoSide(tmp_path)
    gate = BarGate(rows, referee, SERVED_LIMITS)
    talk = ThreadWithResult(lambda: gate.talk(side.channel))
    try:
        side.commit(b"[]\n")  # the set-up's commit: bar 0 comes back
        assert side.bar() == rows[0]
        assert not (tmp_path / "bars.pipe").exists()  # the names are gone after the first line
        side.commit(b"[]\n")
        assert side.bar() == rows[1]
        if last is not None:
            side.commit(last)
        problem = talk.result(RUN_TIMEOUT)
    finally:
        side.close()
        referee.abort()
        side.channel.release()
    assert problem is not None
    assert (problem.type, problem.message) == (error_type, problem.message)
    assert problem.message.startswith(message), problem.message
    assert problem.details == details


def test_a_referee_serving_the_fifos_stamps_each_commit_with_the_newest_bar_released(
    tmp_path: Path,
) -> None:
    """Commits go to the gate with the stamp of the bar released before them, and what the
    gate accepts comes back to the referee, which replays it: here one market buy at bar 3,
    filled at bar 4's open."""
    csv = orcl_csv(first="2006-01-01", end="2006-02-01")
    rows = bar_rows(csv)
    referee = serving_referee(csv)
    side = FifoSide(tmp_path)
    gate = BarGate(rows, referee, LIMITS)
    talk = ThreadWithResult(lambda: gate.talk(side.channel))
    buy = {"op": "order", "ref": 1, "side": "buy", "feed": 0, "size": 10.0, "price": None,
           "plimit": None, "exectype": "Market", "valid": None, "tradeid": 0, "oco": None,
           "parent": None, "transmit": True, "trailamount": None, "trailpercent": None}  # fmt: skip
    try:
        side.commit(json.dumps([buy]).encode() + b"\n")  # before bar 0: refused
        for index, row in enumerate(rows):
            assert side.bar() == row
            side.commit(json.dumps([buy]).encode() + b"\n" if index == 3 else b"[]\n")
        assert side.bar() == b"E\n"
        side.close()
        assert talk.result(RUN_TIMEOUT) is None
        rejected, raw = referee.finish(gate.released, RUN_TIMEOUT)
    finally:
        referee.abort()
        side.channel.release()
    assert referee.received == [(-1, []), (3, [buy])]
    assert (gate.released, gate.events, gate.rejected_events, rejected) == (len(rows), 2, 1, 0)
    (order,) = json.loads(raw)["orders"]
    filled, at, size, price, _ = order["events"][-1]
    stamp, opening = rows[4].decode().split(",")[:2]
    assert (order["created"], filled, at, size) == (
        rows[3].decode().split(",")[0], "Completed", stamp, 10.0
    )
    assert price == pytest.approx(float(opening) * (1 + COSTLY["slippage"]))


def test_closing_the_channel_ends_a_referee_whose_harness_never_opened_the_pipe(
    tmp_path: Path,
) -> None:
    """A run stopped before its harness opened the FIFOs (a cancel, a kill at start-up): the
    referee waits for the first commit with no per-bar bound, and Linux reports the end of a
    FIFO only once a writer has come and gone; the channel's close makes one come and go."""
    csv = orcl_csv(first="2006-01-01", end="2006-02-01")
    referee = serving_referee(csv)
    bars, commits = tmp_path / "bars.pipe", tmp_path / "commits.pipe"
    os.mkfifo(bars)
    os.mkfifo(commits)
    channel = FifoChannel(bars, commits)
    gate = BarGate(bar_rows(csv), referee, LIMITS)
    talk = ThreadWithResult(lambda: gate.talk(channel))
    try:
        with pytest.raises(AssertionError, match="still talking"):
            talk.result(1.0)  # the referee waits for a harness that never comes
        # The referee holds the FIFO by now (on a loaded machine it may take a while): a
        # hang-up before it opened would be no end for it, and the case is the one after.
        deadline = time.monotonic() + 10
        while not held_by_another(commits) and time.monotonic() < deadline:
            time.sleep(0.01)
        channel.close()
        assert talk.result(5.0) is None
        assert gate.released == 0
    finally:
        referee.abort()
        channel.release()


def test_the_referee_polls_for_commits_only_while_that_pays(
    tmp_path: Path, runner: types.SimpleNamespace
) -> None:
    """A window of spins that mostly find the commit already there keeps the referee polling;
    one that mostly misses pauses the polling for SPIN_PAUSE commits (the core goes back to
    the host), after which it tries again."""
    barpipe = runner.barpipe
    bars, commits = tmp_path / "bars.pipe", tmp_path / "commits.pipe"
    os.mkfifo(bars)
    os.mkfifo(commits)
    holder = FifoChannel(bars, commits)  # the host's ends, as in a run
    writer = os.open(commits, os.O_WRONLY | os.O_NONBLOCK)
    server = barpipe.BarServer(str(bars), str(commits), [b"x\n"], 4096, 1.0)
    try:
        for _ in range(barpipe.SPIN_WINDOW):  # the commit is always there in time
            os.write(writer, b"[]\n")
            assert server._spin() == b"[]\n"  # noqa: SLF001
        assert server._paused == 0  # noqa: SLF001
        misses = barpipe.SPIN_MAX_MISSES + 1
        for n in range(barpipe.SPIN_WINDOW):  # then late, more often than allowed
            if n >= misses:
                os.write(writer, b"[]\n")
            assert server._spin() == (b"" if n < misses else b"[]\n")  # noqa: SLF001
        assert server._paused == barpipe.SPIN_PAUSE  # noqa: SLF001
    finally:
        server.close()
        os.close(writer)
        holder.release()


def held_by_another(path: Path) -> bool:
    """Whether a process other than this one has `path` open."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        if fd_dir.parent.name == str(os.getpid()):
            continue
        try:
            if any(os.readlink(link) == str(path) for link in fd_dir.iterdir()):
                return True
        except OSError:
            continue  # a process that has just ended, or not ours to read
    return False


class ThreadWithResult:
    """`work` on a thread; `result` waits for its return value."""

    def __init__(self, work: Any) -> None:
        self._value: Any = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Any) -> None:
        self._value = work()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "still talking"
        return self._value

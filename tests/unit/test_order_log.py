"""The order log (runner_image/recorder.py, PROTOCOL.md "orders"): every order's life as the
broker notified it, and the positions open at the end; how the host validates them
(sandbox/claim.py) and spells them out (jobs/order_log.py).

The recorder runs here in this process on real ORCL bars, and is checked against what the
strategy itself asked for and an analyzer of the test's own that notes every notification.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import sys
import types
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import order_log
from backtest_sandbox.jobs.engine import _claim_matches
from backtest_sandbox.sandbox.claim import (
    MAX_ORDER_EVENTS,
    MAX_ORDERS,
    CompletedClaim,
    InvalidClaim,
    parse_claim,
)

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "runner_image"
SHARED_DATA = REPO.parent / "shared" / "data" / "backtrader"
BROKER = {"initial_capital": 10000.0, "commission": 0.001, "slippage": 0.0005, "stake": 10.0}

pytestmark = pytest.mark.timeout(60)


@functools.cache
def orcl(first: str = "2005-01-01", end: str = "2005-07-01") -> pd.DataFrame:
    raw = pd.read_csv(SHARED_DATA / "orcl-1995-2014.txt")
    raw = raw[(raw["Date"] >= first) & (raw["Date"] < end)]
    columns = ("Open", "High", "Low", "Close", "Volume")
    frame = pd.DataFrame({column.lower(): raw[column].to_numpy() for column in columns})
    frame.index = pd.to_datetime(raw["Date"].to_numpy())
    return frame


@pytest.fixture(scope="module")
def runner() -> types.SimpleNamespace:
    """runner_image's recorder and backtest modules, imported as the harness imports them."""
    saved_path, writes_bytecode = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, str(RUNNER))
    sys.dont_write_bytecode = True  # keep runner_image clean
    try:
        importlib.import_module("compat").apply()
        modules = {name: importlib.import_module(name) for name in ("backtest", "recorder")}
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = writes_bytecode
    return types.SimpleNamespace(**modules)


class _NoProgress:
    def tick(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


def stamp(dtnum: float) -> str:
    return bt.num2date(dtnum).isoformat(timespec="seconds")


class Notifications(bt.Analyzer):  # type: ignore[misc]
    """Every notification as the test sees it: (ref, status name, bar, executed so far)."""

    def start(self) -> None:
        self.seen: list[tuple[int, str, str, float, float, float]] = []

    def notify_order(self, order: Any) -> None:
        done = order.executed
        self.seen.append(
            (
                order.ref,
                order.getstatusname(),
                stamp(self.strategy.datetime[0]),
                abs(done.size),
                done.price,
                done.comm,
            )
        )


class Lives(bt.Strategy):  # type: ignore[misc]
    """A limit order that expires, one cancelled, a market order twice the cash (Margin), a
    filled buy still held at the end, a stop that never triggers, a sell in two fills when a
    filler is set, an order at the last bar (never notified), and one placed in stop()."""

    def start(self) -> None:
        self.asked: list[tuple[Any, dict[str, Any]]] = []  # (order, what was asked)

    def place(self, side: str, **asked: Any) -> Any:
        order = (self.buy if side == "buy" else self.sell)(**asked)
        self.asked.append((order, {"side": side, "bar": stamp(self.datetime[0]), **asked}))
        return order

    def next(self) -> None:
        bar, close = len(self), self.data.close[0]
        if bar == 3:
            self.place("buy", exectype=bt.Order.Limit, price=close * 0.9, valid=timedelta(days=3))
        elif bar == 6:
            self.resting = self.place("buy", exectype=bt.Order.Limit, price=close * 0.9)
        elif bar == 9:
            self.cancel(self.resting)
        elif bar == 12:
            self.place("buy", size=2 * self.broker.getcash() / close)
        elif bar == 15:
            self.place("buy", size=30.0)
        elif bar == 18:
            self.place("sell", size=5.0, exectype=bt.Order.Stop, price=close * 0.5)
        elif bar == 21:
            self.place("sell", size=20.0)
        if bar == len(self.data.p.dataname):
            self.place("buy", size=1.0)

    def stop(self) -> None:
        self.buy(size=1.0)  # after the last bar: never placed while a bar was current


def run(runner: types.SimpleNamespace, *, filler: Any = None) -> tuple[Any, dict[str, Any]]:
    """Lives on ORCL's first half of 2005 with the harness's recorder: (strategy, result)."""
    cerebro = bt.Cerebro(stdstats=False, tradehistory=True)
    cerebro.adddata(bt.feeds.PandasData(dataname=orcl()))
    cerebro.broker.setcash(BROKER["initial_capital"])
    cerebro.broker.setcommission(commission=BROKER["commission"])
    cerebro.broker.set_slippage_perc(BROKER["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=BROKER["stake"])
    if filler is not None:
        cerebro.broker.set_filler(filler)
    cerebro.addstrategy(Lives)
    cerebro.addanalyzer(Notifications, _name="notifications")
    runner.backtest.add_recorder(cerebro, _NoProgress())
    (strategy,) = cerebro.run()
    result = json.loads(runner.backtest.encode_result(runner.backtest.completed_result(strategy)))
    return strategy, result


def expected_lives(strategy: Any) -> list[dict[str, Any]]:
    """The order log from what the strategy asked and what the test's analyzer saw."""
    seen = strategy.analyzers.notifications.seen
    last_bar = stamp(strategy.datetime[0])
    expected = []
    for rank, (order, asked) in enumerate(strategy.asked, start=1):
        events: list[list[Any]] = []
        for ref, status, at, filled, price, comm in seen:
            if ref == order.ref:
                events.append([status, at, filled, price, comm] if filled else [status, at])
        if not events:  # placed at the last bar: submitted, never notified
            assert asked["bar"] == last_bar
            events = [["Submitted", last_bar]]
        life: dict[str, Any] = {
            "ref": rank,
            "symbol": "",
            "side": asked["side"],
            "type": bt.Order.ExecTypes[asked.get("exectype", bt.Order.Market)],
            "size": asked.get("size", BROKER["stake"]),
        }
        if "price" in asked:
            life["price"] = asked["price"]
        if "valid" in asked:
            created = datetime.fromisoformat(asked["bar"])
            life["valid"] = (created + asked["valid"]).isoformat(timespec="seconds")
        expected.append(life | {"created": asked["bar"], "events": events})
    return expected


# --- the recorder ----------------------------------------------------------------------------


def test_every_order_s_life_is_recorded_as_the_broker_notified_it(
    runner: types.SimpleNamespace,
) -> None:
    strategy, result = run(runner)

    assert result["orders"] == expected_lives(strategy)
    assert result["orders_total"] == len(strategy.asked) == 7
    finals = [order["events"][-1][0] for order in result["orders"]]
    assert finals == [
        "Expired", "Canceled", "Margin", "Completed", "Accepted", "Completed", "Submitted"
    ]  # fmt: skip
    expired, cancelled, margin = result["orders"][:3]
    assert [event[0] for event in margin["events"]] == ["Submitted", "Margin"]
    # Backtrader checks validity at the bar after it ends: the bar after 3 days from creation.
    assert expired["events"][-1][1] > expired["valid"] > expired["created"]
    assert cancelled["events"][-1][1] == stamp(strategy.data.datetime[-len(strategy) + 10])
    parse_claim(json.dumps(result).encode(), expected_bars=len(strategy))


def test_the_position_open_at_the_end_carries_its_unrealised_pnl(
    runner: types.SimpleNamespace,
) -> None:
    strategy, result = run(runner)
    position = strategy.broker.getposition(strategy.data)
    close = strategy.data.close[0]
    assert position.size == 10.0  # 30 bought, 20 sold; the last bar's buy never executed
    (held,) = result["open_positions"]
    assert held == {
        "symbol": "",
        "size": 10.0,
        "price": position.price,
        "close": close,
        "pnl": 10.0 * (close - position.price),  # a stock: mult 1
    }
    assert result["open_trades"] == 1


def test_partial_fills_show_what_has_executed_so_far(runner: types.SimpleNamespace) -> None:
    strategy, result = run(runner, filler=bt.broker.fillers.FixedSize(size=7))
    assert result["orders"] == expected_lives(strategy)
    bought = result["orders"][3]  # 30 at 7 a bar
    partial = [event for event in bought["events"] if event[0] == "Partial"]
    assert [event[2] for event in partial] == [7.0, 14.0, 21.0, 28.0]
    assert bought["events"][-1][0] == "Completed" and bought["events"][-1][2] == 30.0
    assert all(len(order["events"]) <= MAX_ORDER_EVENTS for order in result["orders"])


def test_past_the_event_bound_a_partial_replaces_the_partial_before_it(
    runner: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.recorder, "MAX_ORDER_EVENTS", 5)
    _, result = run(runner, filler=bt.broker.fillers.FixedSize(size=1))
    bought = result["orders"][3]  # 30 at 1 a bar: 29 Partial events, then Completed
    assert [event[0] for event in bought["events"]] == [
        "Submitted", "Accepted", "Partial", "Completed"
    ]  # fmt: skip
    assert bought["events"][2][2] == 29.0  # the newest partial: cumulative
    assert bought["events"][3][2] == 30.0


def test_past_the_order_bound_orders_are_counted_not_recorded(
    runner: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, whole = run(runner)
    monkeypatch.setattr(runner.recorder, "MAX_ORDERS", 3)
    _, capped = run(runner)
    assert capped["orders"] == whole["orders"][:3]
    assert capped["orders_total"] == whole["orders_total"] == 7


def test_the_order_log_stays_a_small_part_of_the_result_cap(runner: types.SimpleNamespace) -> None:
    assert (runner.recorder.MAX_ORDERS, runner.recorder.MAX_ORDER_EVENTS) == (
        MAX_ORDERS,
        MAX_ORDER_EVENTS,
    )  # the host refuses what the recorder would never write
    _, result = run(runner)
    encoded = len(json.dumps(result["orders"], separators=(",", ":")))  # as encode_result
    per_order = encoded / len(result["orders"])
    assert per_order < 260
    assert MAX_ORDERS * per_order < Settings().result_cap_bytes / 6


# --- the host's validation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def claim_document(runner: types.SimpleNamespace) -> dict[str, Any]:
    _, result = run(runner)
    return result


def test_a_claim_with_orders_and_positions_parses_and_reads_as_names(
    claim_document: dict[str, Any],
) -> None:
    claim = parse_claim(json.dumps(claim_document).encode(), expected_bars=200)
    assert isinstance(claim, CompletedClaim)
    entries = order_log.order_entries(claim.orders)
    expired, cancelled, margin, bought = entries[:4]
    assert (expired["status"], expired["reason"]) == ("Expired", order_log.REASONS["Expired"])
    assert cancelled["status"] == "Canceled" and cancelled["reason"].startswith("cancelled")
    assert margin["status"] == "Margin" and margin["reason"].startswith("not enough cash")
    assert margin["events"] == [
        {"status": "Submitted", "at": margin["events"][0]["at"]},
        {"status": "Margin", "at": margin["events"][0]["at"]},
    ]
    recorded = claim_document["orders"][3]
    assert bought == {
        "ref": 4,
        "symbol": "",
        "side": "buy",
        "type": "Market",
        "size": 30.0,
        "price": None,
        "limit": None,
        "trail_amount": None,
        "trail_percent": None,
        "valid": None,
        "created": recorded["created"],
        "status": "Completed",
        "reason": None,
        "events": [
            {"status": "Submitted", "at": recorded["events"][0][1]},
            {"status": "Accepted", "at": recorded["events"][1][1]},
            {
                "status": "Completed",
                "at": recorded["events"][2][1],
                "filled": 30.0,
                "price": recorded["events"][2][3],
                "commission": recorded["events"][2][4],
            },
        ],
    }
    assert order_log.position_entries(claim.open_positions) == claim_document["open_positions"]


def _broken(document: dict[str, Any], change: Any) -> bytes:
    broken = copy.deepcopy(document)
    change(broken)
    return json.dumps(broken).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda d: d["orders"][0]["events"].append(["Filled", "2005-01-10T00:00:00"]),
            r"^orders\.0\.events\.3",
            id="unknown-status",
        ),
        pytest.param(
            lambda d: d["orders"][0]["events"].append(["Completed", "2005-01-10T00:00:00", 1.0]),
            r"^orders\.0\.events\.3",
            id="event-length",
        ),
        pytest.param(
            lambda d: d["orders"][0].update(type="Iceberg"), r"^orders\.0\.type", id="type"
        ),
        pytest.param(lambda d: d["orders"][0].update(side="hold"), r"^orders\.0\.side", id="side"),
        pytest.param(
            lambda d: d["orders"][0].update(price=None),
            r"^orders\.0: .*price is null: a value that is not set is left out",
            id="null",
        ),
        pytest.param(
            lambda d: d["orders"][0].update(size="10"), r"^orders\.0\.size", id="size-text"
        ),
        pytest.param(
            lambda d: d["orders"][0].update(note="x"), r"^orders\.0\.note", id="extra-field"
        ),
        pytest.param(
            lambda d: d["orders"][0].update(symbol="S" * 257), r"^orders\.0\.symbol", id="symbol"
        ),
        pytest.param(
            lambda d: d["orders"][0].update(events=[]), r"^orders\.0\.events", id="no-events"
        ),
        pytest.param(
            lambda d: d["orders"][0].update(
                events=[["Partial", "2005-01-10T00:00:00", 1.0, 1.0, 0.0]] * (MAX_ORDER_EVENTS + 1)
            ),
            r"^orders\.0\.events",
            id="too-many-events",
        ),
        pytest.param(
            lambda d: d["orders"].reverse(),
            r"^orders\.0\.ref: must be 1 \(orders are numbered 1, 2, \.\.\.\)$",
            id="numbering",
        ),
        pytest.param(
            lambda d: d.update(orders_total=2),
            r"^orders_total: must be at least the 7 orders recorded$",
            id="total",
        ),
        pytest.param(lambda d: d.pop("orders"), r"^orders: Field required", id="missing"),
        pytest.param(
            lambda d: d["open_positions"][0].update(pnl=True),
            r"^open_positions\.0\.pnl",
            id="position-pnl",
        ),
        pytest.param(
            lambda d: d.update(open_positions=[{"symbol": ""}] * 65),
            r"^open_positions: List should have at most 64 items",
            id="positions",
        ),
    ],
)
def test_a_claim_breaking_the_order_log_s_rules_is_refused_naming_the_field(
    claim_document: dict[str, Any], change: Any, message: str
) -> None:
    with pytest.raises(InvalidClaim, match=message):
        parse_claim(_broken(claim_document, change), expected_bars=200)


def test_a_claim_of_more_orders_than_the_bound_is_refused(claim_document: dict[str, Any]) -> None:
    order = claim_document["orders"][0]
    many = [order | {"ref": n} for n in range(1, 20_002)]
    raw = _broken(claim_document, lambda d: d.update(orders=many, orders_total=len(many)))
    with pytest.raises(InvalidClaim, match=r"^orders: List should have at most 20000 items"):
        parse_claim(raw, expected_bars=200)


# --- claim against the referee's result ------------------------------------------------------


def test_the_order_log_counts_in_the_claim_s_comparison_unless_events_were_refused(
    claim_document: dict[str, Any],
) -> None:
    def parsed(document: dict[str, Any]) -> CompletedClaim:
        claim = parse_claim(json.dumps(document).encode(), expected_bars=200)
        assert isinstance(claim, CompletedClaim)
        return claim

    published = parsed(claim_document)
    # The strategy's own log has an order more: one the trusted side refused.
    extra = claim_document["orders"][0] | {"ref": len(claim_document["orders"]) + 1}
    claimed = parsed(
        claim_document | {"orders": [*claim_document["orders"], extra], "orders_total": 8}
    )
    assert _claim_matches(published, published, refused=False)
    assert not _claim_matches(claimed, published, refused=False)
    assert _claim_matches(claimed, published, refused=True)
    # Refused events excuse the order log only: the numbers must still be the same.
    richer = parsed(claim_document | {"final_value": claim_document["final_value"] + 1})
    assert not _claim_matches(richer, published, refused=True)

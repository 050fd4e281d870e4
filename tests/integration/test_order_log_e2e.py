"""The order log end to end: every order's life and the positions open at the end, from a
real strategy in the sandbox, in both modes, against plain Backtrader in this process.

The strategy places a limit order that expires, one it cancels, a market order for twice
its cash (the broker refuses it: Margin), a stop that never triggers, buys and sells that
fill, an order at the last bar, and one in its stop(); a position stays open at the end. The
plain run is the same code, preloaded, with a subclass of the test's own that notes what the
strategy asked for and every notification the broker made. The verified run's published log
is the referee's replay; its claim (the strategy process's own log) must match it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import backtrader as bt
import pytest
from backtrader.utils import num2date

from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.models import BacktestResult
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.engine import Engine, RunRequest
from backtest_sandbox.jobs.results import ResultFiles
from tests.conftest import DOCKER
from tests.integration.test_backtest_parity import apply_compat, raw_bars, strategy_class

pytestmark = DOCKER

FILE = "orcl-1995-2014.txt"
CONFIG = {
    "symbol": "ORCL",
    "timeframe": "D1",
    "start_date": "2005-01-01",
    "end_date": "2005-12-31",
    "initial_capital": 10_000,
    "commission": 0.001,
    "slippage": 0.0005,
    "position_size": 10,
    "data_source": "file",
    "timeout_seconds": 120,
}

ORDER_LIVES = """\
import datetime
import backtrader as bt


class OrderLives(bt.Strategy):
    def next(self):
        bar, close = len(self), self.data.close[0]
        if bar == 3:
            self.buy(exectype=bt.Order.Limit, price=close * 0.9,
                     valid=datetime.timedelta(days=3))
        elif bar == 6:
            self.resting = self.buy(exectype=bt.Order.Limit, price=close * 0.9)
        elif bar == 9:
            self.cancel(self.resting)
        elif bar == 12:
            self.buy(size=2 * self.broker.getcash() / close)  # more than the cash: Margin
        elif bar == 15:
            self.buy(size=30)
        elif bar == 18:
            self.sell(size=5, exectype=bt.Order.Stop, price=close * 0.5)  # never triggers
        elif bar == 21:
            self.sell(size=20)
        elif bar == 40:
            self.buy(exectype=bt.Order.Limit, price=close * 1.01)  # fills at the next open
        if bar == self.data.total_bars:
            self.buy(size=1)  # the last bar: submitted, never executed

    def stop(self):
        self.buy(size=1)  # no bar is current: not an order of the run
"""


@pytest.fixture(scope="module")
def engine(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(data_dir=data_dir, state_dir=tmp_path_factory.mktemp("state"), pool_size=0)
    engine = Engine(settings)
    yield engine
    engine.close()


def run(engine: Engine, code: str, mode: str, **changes: Any) -> BacktestResult:
    config = BacktestConfig(**{**CONFIG, **changes, "mode": mode})
    request = RunRequest(backtest_id=f"bt_orders_{mode}", code=code, config=config)
    outcome = engine.run(request)
    assert outcome.result is not None, outcome.error
    return outcome.result


def stamp(dtnum: float) -> str:
    return num2date(dtnum).isoformat(timespec="seconds")


def plain_run(code: str) -> Any:
    """The strategy with plain Backtrader, preloaded, the config's broker; a subclass notes
    each order as asked (in creation order) and every notification the broker made."""
    apply_compat()
    bars = raw_bars(FILE, CONFIG["start_date"], CONFIG["end_date"])
    base = strategy_class(code, "order_log_e2e")

    class Observed(base):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            self.asked: list[tuple[Any, dict[str, Any]]] = []
            self.seen: list[tuple[int, dict[str, Any]]] = []
            self.stopping = False
            super().start()

        def stop(self) -> None:
            self.stopping = True
            super().stop()

        def buy(self, **asked: Any) -> Any:
            return self._note(super().buy(**asked), "buy", asked)

        def sell(self, **asked: Any) -> Any:
            return self._note(super().sell(**asked), "sell", asked)

        def _note(self, order: Any, side: str, asked: dict[str, Any]) -> Any:
            if not self.stopping:  # stop() is after the last bar: not an order of the run
                when = stamp(self.datetime[0])
                self.asked.append((order, {"side": side, "created": when, **asked}))
            return order

        def notify_order(self, order: Any) -> None:
            done = order.executed
            event = {"status": order.getstatusname(), "at": stamp(self.datetime[0])}
            if done.size:
                event |= {"filled": abs(done.size), "price": done.price, "commission": done.comm}
            self.seen.append((order.ref, event))
            super().notify_order(order)

    feed = bt.feeds.PandasData(dataname=bars)
    feed.total_bars = len(bars)  # as the harness's feeds have it (PROTOCOL.md)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    cerebro.broker.setcash(float(CONFIG["initial_capital"]))
    cerebro.broker.setcommission(commission=CONFIG["commission"])
    cerebro.broker.set_slippage_perc(CONFIG["slippage"])
    cerebro.addsizer(bt.sizers.FixedSize, stake=CONFIG["position_size"])
    cerebro.addstrategy(Observed)
    (strategy,) = cerebro.run()
    return strategy


def expected_order_log(strategy: Any) -> list[dict[str, Any]]:
    """The orders as read_backtest_orders(kind="orders") should show them."""
    last_bar = stamp(strategy.datetime[0])
    log = []
    for ref, (order, asked) in enumerate(strategy.asked, start=1):
        events = [event for seen_ref, event in strategy.seen if seen_ref == order.ref]
        if not events:  # placed at the last bar: the broker's Submitted was never delivered
            assert asked["created"] == last_bar
            events = [{"status": "Submitted", "at": last_bar}]
        valid = asked.get("valid")
        status = events[-1]["status"]
        log.append(
            {
                "ref": ref,
                "symbol": "ORCL",
                "side": asked["side"],
                "type": bt.Order.ExecTypes[asked.get("exectype") or bt.Order.Market],
                "size": float(asked.get("size") or CONFIG["position_size"]),
                "price": asked.get("price"),
                "limit": None,
                "trail_amount": None,
                "trail_percent": None,
                "valid": None
                if valid is None
                else (datetime.fromisoformat(asked["created"]) + valid).isoformat(),
                "created": asked["created"],
                "status": status,
                "events": events,
            }
        )
    return log


def without_reasons(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in order.items() if key != "reason"} for order in log]


def test_order_lives_and_open_positions_match_plain_backtrader_in_both_modes(
    engine: Engine, tmp_path: Path
) -> None:
    verified = run(engine, ORDER_LIVES, "verified")
    fast = run(engine, ORDER_LIVES, "fast")
    plain = plain_run(ORDER_LIVES)
    expected = expected_order_log(plain)

    # The strategy process's log (the claim) and the referee's replay are the same.
    assert verified.integrity.claim_matches is True, verified.warnings
    assert verified.integrity.rejected_events == 0
    for result in (verified, fast):
        assert without_reasons(result.order_log) == expected
    assert [order["status"] for order in expected] == [
        "Expired", "Canceled", "Margin", "Completed", "Accepted", "Completed", "Completed",
        "Submitted",
    ]  # fmt: skip
    reasons = {order["status"]: order["reason"] for order in verified.order_log}
    assert reasons["Margin"].startswith("not enough cash")
    assert reasons["Expired"].startswith("its validity")
    assert reasons["Canceled"].startswith("cancelled")
    assert reasons["Completed"] is None and reasons["Accepted"] is None

    # 30 bought, 20 sold, 10 bought at the limit: 20 held after the last bar.
    position = plain.broker.getposition(plain.data)
    close = plain.data.close[0]
    assert position.size == 20
    held = {
        "symbol": "ORCL",
        "size": 20.0,
        "price": position.price,
        "close": close,
        "pnl": 20.0 * (close - position.price),
    }
    assert verified.open_positions == fast.open_positions == [held]
    # The closed-trade log is as it was: the 20 sold closed part of the trade, which stays open.
    assert verified.trade_log == fast.trade_log == []

    # Stored, and paged as read_backtest_orders(kind="orders") reads it.
    files = ResultFiles(tmp_path / "results")
    digest, _ = files.write(verified)
    assert files.orders(digest, 0, 500) == (verified.order_log, len(expected))
    assert files.orders(digest, 2, 4) == (verified.order_log[2:4], len(expected))


MANY_ORDERS = """\
import backtrader as bt


class Churn(bt.Strategy):
    def next(self):
        self.buy(size=1)
        self.sell(size=1)
        if len(self) % 2:
            self.buy(size=1, exectype=bt.Order.Limit, price=self.data.close[0] * 0.5,
                     valid=self.data.datetime.date(0))  # expires at the next bar
"""


def test_thousands_of_orders_fit_the_result_and_the_claim_still_matches(engine: Engine) -> None:
    verified = run(engine, MANY_ORDERS, "verified", end_date="2009-12-31")
    bars = len(verified.equity_curve)
    placed = 2 * bars + (bars + 1) // 2
    assert placed > 3000
    assert verified.integrity.claim_matches is True, verified.warnings
    assert len(verified.order_log) == placed
    assert [order["ref"] for order in verified.order_log] == list(range(1, placed + 1))
    statuses = {order["status"] for order in verified.order_log}
    assert statuses == {"Completed", "Expired", "Submitted"}  # Submitted: the last bar's
    stored = len(json.dumps(verified.order_log, separators=(",", ":")))
    print(f"{placed} orders: {stored} bytes as stored ({stored / placed:.0f} per order)")
    assert stored < 500 * placed  # nulls and reasons spelled out: ~2x the protocol form

"""Every metric of a sandboxed run, recomputed here from what the run handed back.

A run goes through `backtest-sandbox run --json`; this test then recomputes each figure in
`result.metrics` from `result.equity_curve` and `result.trade_log` alone, with pandas, in
its own way (pct_change, cummax, a groupby over drawdown episodes, boolean masks over the
trade table), from the definitions of docs/interface.md section 4 and metrics.py's docstring,
annualised by the run's timeframe. A metric the result has and this test does not recompute
fails the test, so a new metric cannot go unchecked.

A figure that is undefined (no trades, flat equity, no drawdown) must be null: never NaN or
Infinity, which the JSON on stdout is checked for too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CATALOG_FILES, DOCKER, SHARED_DATA

pytestmark = DOCKER

# Bars in a year, by timeframe: 252 trading days, 52 weeks, 252 sessions of 6.5 hours.
PERIODS_PER_YEAR = {"D1": 252.0, "W1": 52.0, "H1": 252 * 6.5}
REL = 1e-9

# An SMA crossover that is flat again at the end (it closes on the next-to-last bar and opens
# nothing after), so every bar in the market belongs to a closed trade in the trade log.
ENDS_FLAT = """
import backtrader as bt


class SmaCrossEndsFlat(bt.Strategy):
    params = (("fast", 10), ("slow", 30))

    def __init__(self):
        fast = bt.ind.SMA(period=self.p.fast)
        slow = bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow)

    def next(self):
        closing_time = len(self) >= self.data.total_bars - 1  # buflen() in fast mode only
        if self.position and (closing_time or self.cross < 0):
            self.close()
        elif not self.position and not closing_time and self.cross > 0:
            self.buy()
"""

DOES_NOTHING = """
import backtrader as bt


class Idle(bt.Strategy):
    def next(self):
        pass
"""

CASES = {
    "orcl_d1_commission": {
        "symbol": "ORCL",
        "timeframe": "D1",
        "start_date": "2000-01-01",
        "end_date": "2009-12-31",
        "initial_capital": 10000,
        "commission": 0.001,
        "slippage": 0.0005,
        "position_size": 100,
    },
    "nvda_w1_resampled": {  # the catalog has only NVDA D1: weeks are resampled, 52 a year
        "symbol": "NVDA",
        "timeframe": "W1",
        "start_date": "2001-01-01",
        "end_date": "2012-12-31",
        "initial_capital": 5000,
        "commission": 0.002,
        "position_size": 50,
        "params": {"fast": 5, "slow": 15},
    },
}


def no_nan_json(text: str) -> dict[str, Any]:
    """Parse JSON, refusing the NaN/Infinity/-Infinity tokens Python's json would accept."""

    def refuse(token: str) -> None:
        raise AssertionError(f"the JSON holds {token}, which is not JSON")

    return dict(json.loads(text, parse_constant=refuse))


def run_json(cli: Any, write_strategy: Any, tmp_path: Any, code: str, config: dict) -> dict:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**config, "data_source": "file"}))
    run = cli("run", str(write_strategy(code)), "--config", str(config_path), "--json")
    assert run.code == 0, run.stdout + run.stderr
    status = no_nan_json(run.stdout)
    assert status["status"] == "completed"
    return dict(status["result"])


def defined(value: float) -> float | None:
    """None for what has no value (NaN, an infinity); the value otherwise."""
    return float(value) if np.isfinite(value) else None


def divide(numerator: float | None, denominator: float) -> float | None:
    if numerator is None or denominator == 0:
        return None
    return defined(numerator / denominator)


def equity_figures(curve: pd.Series, capital: float, periods: float, in_market: int) -> dict:
    """The equity metrics, from the per-bar values (curve) and the initial capital."""
    values = pd.concat([pd.Series([capital]), curve], ignore_index=True)  # V0, V1 .. VN
    returns = values.pct_change().iloc[1:]  # r_i = V_i / V_(i-1) - 1; the first vs capital
    bars = len(curve)
    years = bars / periods
    growth = values.iloc[-1] / capital
    cagr = (growth ** (1 / years) - 1) * 100

    spread = returns.std()  # pandas: sample standard deviation (ddof = 1)
    downside = np.sqrt(returns.clip(upper=0).pow(2).mean())

    peak = values.cummax()
    drawdown = (peak - values) / peak
    under = values < peak
    episode = (~under).cumsum()  # a new episode starts at every bar at its running peak
    under_bars = under.groupby(episode).sum()
    last = episode.iloc[-1]
    # Peak to recovery: the bars under water plus the recovering bar, except for the episode
    # still under water at the end, which stops at the last bar.
    spans = [int(n) + (0 if key == last else 1) for key, n in under_bars.items() if n > 0]
    depth = drawdown.max() * 100

    return {
        "final_value": float(values.iloc[-1]),
        "total_return_pct": (growth - 1) * 100,
        "cagr_pct": defined(cagr),
        "volatility_pct": defined(spread * math.sqrt(periods) * 100),
        "sharpe_ratio": divide(returns.mean() * math.sqrt(periods), spread),
        "sortino_ratio": divide(returns.mean() * math.sqrt(periods), downside),
        "max_drawdown_pct": depth,
        "max_drawdown_duration_bars": max(spans, default=0),
        "calmar_ratio": divide(defined(cagr), depth),
        "exposure_pct": in_market / bars * 100,
        "bars": bars,
        "probabilistic_sharpe_ratio": probabilistic_sharpe(returns),
    }


def probabilistic_sharpe(returns: pd.Series) -> float | None:
    """PSR against 0 (Bailey and Lopez de Prado, 2012): the per-bar Sharpe ratio, skewness and
    kurtosis as population moments, Phi from math.erf."""
    spread = returns.std()
    if len(returns) < 2 or spread == 0:
        return None
    sharpe = returns.mean() / spread
    centred = returns - returns.mean()
    sigma = np.sqrt((centred**2).mean())
    skew, kurtosis = (centred**3).mean() / sigma**3, (centred**4).mean() / sigma**4
    z = sharpe * math.sqrt(len(returns) - 1) / math.sqrt(
        1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    )
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def buy_and_hold_pct(result: dict, symbol: str) -> float:
    """Bought at the first bar's close, sold at the last's, from the raw daily file: a bar's
    close is the last daily close before the next bar starts (weeks resampled from days)."""
    raw = pd.read_csv(SHARED_DATA / CATALOG_FILES[(symbol, "D1")], parse_dates=["Date"])
    closes = raw.set_index("Date")["Close"]
    stamps = [pd.Timestamp(point["timestamp"]) for point in result["equity_curve"]]
    first = closes[closes.index < stamps[1]].iloc[-1]
    last = closes[closes.index <= pd.Timestamp(result["data"]["last"])].iloc[-1]
    if len(stamps) > 1 and stamps[1] - stamps[0] > pd.Timedelta(days=3):  # weekly bars
        last = closes[closes.index < stamps[-1] + pd.Timedelta(days=7)].iloc[-1]
    return (last / first - 1) * 100


def trade_figures(trades: pd.DataFrame) -> dict:
    """The trade metrics, from the trade log as a table."""
    count = len(trades)
    net = trades["pnl_net"] if count else pd.Series(dtype="float64")
    won, lost = net[net > 0], net[net < 0]
    gross_profit, gross_loss = won.sum(), -lost.sum()
    mean = net.mean() if count else None
    spread = net.std() if count >= 2 else 0.0
    return {
        "total_trades": count,
        "winning_trades": len(won),
        "losing_trades": len(lost),
        "win_rate_pct": divide(len(won) * 100, count),
        "gross_profit": float(gross_profit),
        "gross_loss": float(gross_loss),
        "net_profit": float(net.sum()),
        "profit_factor": divide(gross_profit, gross_loss),
        "avg_trade_pnl": mean,
        "avg_winning_trade": won.mean() if len(won) else None,
        "avg_losing_trade": lost.mean() if len(lost) else None,
        "largest_winning_trade": won.max() if len(won) else None,
        "largest_losing_trade": lost.min() if len(lost) else None,
        "avg_bars_held": trades["bars_held"].mean() if count else None,
        "total_commission": float(trades["commission"].sum()) if count else 0.0,
        "sqn": divide(None if mean is None else math.sqrt(count) * mean, spread),
    }


BENCHMARK_FIGURES = ("alpha", "beta", "correlation", "information_ratio", "tracking_error_pct")


def expected_metrics(result: dict, capital: float, timeframe: str, symbol: str) -> dict:
    curve = pd.Series([point["value"] for point in result["equity_curve"]], dtype="float64")
    trades = pd.DataFrame(result["trade_log"])
    # Bars at whose close a position was open: with the strategies here (flat at the end, one
    # trade at a time, filled at the next bar's open) that is each trade's bars_held.
    in_market = int(trades["bars_held"].sum()) if len(trades) else 0
    return {
        **equity_figures(curve, capital, PERIODS_PER_YEAR[timeframe], in_market),
        **trade_figures(trades),
        "buy_and_hold_return_pct": buy_and_hold_pct(result, symbol),
        **dict.fromkeys(BENCHMARK_FIGURES),  # no benchmark: tests/integration/
    }  # test_several_feeds_e2e.py checks them against pandas with one


def assert_metrics_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want), (
        f"metrics not recomputed here: {sorted(set(got) - set(want))}; "
        f"missing from the result: {sorted(set(want) - set(got))}"
    )
    for name, value in want.items():
        if value is None:
            assert got[name] is None, name
        elif isinstance(got[name], int) and not isinstance(value, float):
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=REL, abs=1e-12), name


@pytest.mark.parametrize("name", list(CASES))
def test_every_metric_matches_an_independent_computation(name, cli, write_strategy, tmp_path):
    config = CASES[name]
    result = run_json(cli, write_strategy, tmp_path, ENDS_FLAT, config)
    metrics = result["metrics"]
    trades = result["trade_log"]

    # The run is one that exercises every figure: wins, losses, commission, a drawdown.
    assert not any("still open" in warning for warning in result["warnings"])
    assert metrics["winning_trades"] > 0 and metrics["losing_trades"] > 0
    assert metrics["total_commission"] > 0
    assert metrics["max_drawdown_pct"] > 0

    assert_metrics_equal(
        metrics,
        expected_metrics(
            result, config["initial_capital"], config["timeframe"], config["symbol"]
        ),
    )

    # Accounting identities the figures rest on.
    capital = config["initial_capital"]
    assert metrics["final_value"] == pytest.approx(capital + sum(t["pnl_net"] for t in trades))
    for trade in trades:
        assert trade["pnl_net"] == pytest.approx(trade["pnl"] - trade["commission"])
        assert trade["pnl"] == pytest.approx(
            (trade["exit_price"] - trade["entry_price"]) * trade["size"], rel=1e-9
        )
        assert trade["entry_time"] < trade["exit_time"]


def test_no_trades_gives_null_for_the_undefined_figures(cli, write_strategy, tmp_path):
    config = CASES["orcl_d1_commission"]
    result = run_json(cli, write_strategy, tmp_path, DOES_NOTHING, config)
    metrics = result["metrics"]

    assert result["trade_log"] == []
    assert_metrics_equal(
        metrics, expected_metrics(result, config["initial_capital"], "D1", config["symbol"])
    )
    undefined = [
        "sharpe_ratio",  # flat equity: std of returns is 0
        "sortino_ratio",  # no losing bar
        "calmar_ratio",  # no drawdown
        "win_rate_pct",
        "profit_factor",
        "avg_trade_pnl",
        "avg_winning_trade",
        "avg_losing_trade",
        "largest_winning_trade",
        "largest_losing_trade",
        "avg_bars_held",
        "sqn",
    ]
    assert {name: metrics[name] for name in undefined} == dict.fromkeys(undefined)
    assert metrics["final_value"] == config["initial_capital"]
    assert metrics["total_return_pct"] == 0
    assert metrics["cagr_pct"] == 0
    assert metrics["max_drawdown_pct"] == 0
    assert metrics["max_drawdown_duration_bars"] == 0
    assert metrics["volatility_pct"] == 0
    assert metrics["exposure_pct"] == 0
    assert metrics["total_trades"] == metrics["winning_trades"] == metrics["losing_trades"] == 0
    assert metrics["total_commission"] == 0
    for name, value in metrics.items():
        assert value is None or math.isfinite(value), name

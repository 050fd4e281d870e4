"""Metrics against independent pandas computations, and the undefined cases (None, never NaN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from backtest_sandbox.domain.metrics import compute_metrics
from tests.conftest import SHARED_DATA

CONTRACT_KEYS = {
    "final_value", "total_return_pct", "cagr_pct", "sharpe_ratio", "sortino_ratio",
    "max_drawdown_pct", "max_drawdown_duration_bars", "volatility_pct", "calmar_ratio",
    "total_trades", "winning_trades", "losing_trades", "win_rate_pct", "profit_factor",
    "avg_trade_pnl", "total_commission", "sqn", "exposure_pct",
}  # fmt: skip
INITIAL = 10_000.0


@pytest.fixture(scope="module")
def closes() -> pd.Series:
    frame = pd.read_csv(SHARED_DATA / "orcl-1995-2014.txt", parse_dates=["Date"], index_col="Date")
    return frame["Close"]


@pytest.fixture(scope="module")
def equity(closes: pd.Series) -> pd.Series:
    """Buy and hold ORCL with the whole capital, less a 0.1 % entry cost on the first bar."""
    return INITIAL * 0.999 * closes / closes.iloc[0]


@pytest.fixture(scope="module")
def trades(closes: pd.Series) -> list[dict[str, float | int | str]]:
    """Long 100 shares for 20 bars, every 30 bars, with commission: wins and losses."""
    out = []
    for entry in range(0, len(closes) - 21, 30):
        pnl = 100 * (closes.iloc[entry + 20] - closes.iloc[entry])
        commission = 0.001 * 100 * (closes.iloc[entry] + closes.iloc[entry + 20])
        net = pnl - commission
        out.append({"pnl": pnl, "pnl_net": net, "commission": commission, "bars_held": 20})
    return out


@pytest.fixture(scope="module")
def real(equity: pd.Series, trades: list[dict[str, float | int | str]]) -> dict:
    in_market = len(equity) - 100
    return compute_metrics(
        equity.tolist(),
        trades,
        initial_capital=INITIAL,
        periods_per_year=252.0,
        bars_in_market=in_market,
    )


def with_initial(equity: pd.Series) -> pd.Series:
    return pd.concat([pd.Series([INITIAL]), equity.reset_index(drop=True)], ignore_index=True)


def test_has_every_contract_metric_and_is_strict_json(real: dict) -> None:
    assert real.keys() >= CONTRACT_KEYS
    json.dumps(real, allow_nan=False)


def test_equity_figures_match_pandas(real: dict, equity: pd.Series) -> None:
    values = with_initial(equity)
    returns = values.pct_change().dropna()
    years = len(equity) / 252.0
    cagr = ((values.iloc[-1] / INITIAL) ** (1 / years) - 1) * 100
    assert real["final_value"] == equity.iloc[-1]
    assert real["total_return_pct"] == pytest.approx((values.iloc[-1] / INITIAL - 1) * 100)
    assert real["cagr_pct"] == pytest.approx(cagr)
    assert real["volatility_pct"] == pytest.approx(returns.std() * math.sqrt(252) * 100)
    assert real["sharpe_ratio"] == pytest.approx(returns.mean() / returns.std() * math.sqrt(252))
    downside = math.sqrt(returns.clip(upper=0).pow(2).mean())
    assert real["sortino_ratio"] == pytest.approx(returns.mean() / downside * math.sqrt(252))
    assert real["exposure_pct"] == pytest.approx((len(equity) - 100) / len(equity) * 100)


def test_drawdown_matches_pandas(real: dict, equity: pd.Series) -> None:
    values = with_initial(equity)
    drawdown = 1 - values / values.cummax()
    assert real["max_drawdown_pct"] == pytest.approx(drawdown.max() * 100)
    assert real["calmar_ratio"] == pytest.approx(real["cagr_pct"] / (drawdown.max() * 100))
    # Each group is a new high and the bars under water after it; a group that is followed
    # by another recovered, taking one more bar (the recovery bar) than it holds.
    groups = (values >= values.cummax()).cumsum()
    sizes = groups.value_counts().sort_index()
    spans = sizes.where(sizes.index != sizes.index[-1], sizes - 1)
    assert real["max_drawdown_duration_bars"] == spans.max()
    assert real["max_drawdown_duration_bars"] > 100  # ORCL's 2000-2002 crash, never recovered


def test_trade_figures_match_pandas(real: dict, trades: list[dict]) -> None:
    frame = pd.DataFrame(trades)
    net = frame["pnl_net"]
    wins, losses = net[net > 0], net[net < 0]
    assert real["total_trades"] == len(frame)
    assert real["winning_trades"] == len(wins) and real["losing_trades"] == len(losses)
    assert len(wins) > 10 and len(losses) > 10
    assert real["win_rate_pct"] == pytest.approx(len(wins) / len(frame) * 100)
    assert real["profit_factor"] == pytest.approx(wins.sum() / -losses.sum())
    assert real["avg_trade_pnl"] == pytest.approx(net.mean())
    assert real["total_commission"] == pytest.approx(frame["commission"].sum())
    assert real["sqn"] == pytest.approx(math.sqrt(len(net)) * net.mean() / net.std())
    assert real["largest_winning_trade"] == wins.max()
    assert real["largest_losing_trade"] == losses.min()
    assert real["avg_bars_held"] == 20.0
    assert real["net_profit"] == pytest.approx(net.sum())


def metrics(equity: list[float], trades: list[dict] | None = None, **kw: float) -> dict:
    args = {"initial_capital": 100.0, "periods_per_year": 252.0, "bars_in_market": 0, **kw}
    result = compute_metrics(equity, trades or [], **args)
    json.dumps(result, allow_nan=False)  # never NaN or Infinity
    return result


def test_no_trades_gives_none_for_trade_ratios() -> None:
    result = metrics([100.0, 101.0, 99.0])
    assert (result["total_trades"], result["winning_trades"], result["losing_trades"]) == (0, 0, 0)
    for key in ("win_rate_pct", "profit_factor", "avg_trade_pnl", "sqn", "avg_bars_held"):
        assert result[key] is None, key
    assert result["total_commission"] == 0.0


def test_flat_equity_has_no_sharpe_sortino_or_calmar() -> None:
    result = metrics([100.0] * 50)
    assert result["sharpe_ratio"] is None and result["sortino_ratio"] is None
    assert result["volatility_pct"] == 0.0
    assert result["max_drawdown_pct"] == 0.0 and result["max_drawdown_duration_bars"] == 0
    assert result["calmar_ratio"] is None
    assert result["cagr_pct"] == 0.0 and result["total_return_pct"] == 0.0


def test_all_winners_have_no_profit_factor() -> None:
    result = metrics([100.0, 110.0], [{"pnl_net": 5.0}, {"pnl_net": 5.0}])
    assert result["profit_factor"] is None
    assert result["sqn"] is None  # zero spread of outcomes
    assert result["win_rate_pct"] == 100.0


def test_one_trade_has_no_sqn_and_a_zero_pnl_trade_is_neither() -> None:
    assert metrics([100.0], [{"pnl_net": -3.0}])["sqn"] is None
    result = metrics([100.0], [{"pnl_net": 0.0}, {"pnl_net": -2.0}])
    assert (result["winning_trades"], result["losing_trades"]) == (0, 1)
    assert result["profit_factor"] == 0.0


def test_no_bars() -> None:
    result = metrics([])
    assert result["final_value"] == 100.0 and result["total_return_pct"] == 0.0
    for key in ("cagr_pct", "sharpe_ratio", "sortino_ratio", "volatility_pct", "exposure_pct"):
        assert result[key] is None, key


def test_first_return_is_against_initial_capital() -> None:
    result = metrics([90.0, 90.0])
    assert result["max_drawdown_pct"] == pytest.approx(10.0)
    assert result["max_drawdown_duration_bars"] == 2  # never recovered: to the last bar
    assert result["sortino_ratio"] is not None and result["sortino_ratio"] < 0


def test_drawdown_duration_is_peak_to_recovery() -> None:
    # values with the initial capital: 100 | 100 90 95 100 80 85
    result = metrics([100.0, 90.0, 95.0, 100.0, 80.0, 85.0])
    assert result["max_drawdown_duration_bars"] == 3  # peak at bar 1, back at bar 4
    assert result["max_drawdown_pct"] == pytest.approx(20.0)


def test_ruin_and_overflow_are_not_nan() -> None:
    assert metrics([50.0, 0.0])["cagr_pct"] == -100.0
    assert metrics([50.0, -10.0])["cagr_pct"] is None  # a negative final value
    broke = metrics([50.0, -10.0, 5.0])
    assert broke["sharpe_ratio"] is None  # a return after a value <= 0 is undefined
    assert broke["cagr_pct"] is not None and broke["max_drawdown_pct"] == pytest.approx(110.0)
    assert metrics([1e300, 1e300], periods_per_year=1e6)["cagr_pct"] is None


def test_exposure() -> None:
    assert metrics([100.0] * 4, bars_in_market=1)["exposure_pct"] == 25.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"initial_capital": 0.0}, "initial_capital", id="capital"),
        pytest.param({"periods_per_year": float("nan")}, "periods_per_year", id="periods"),
        pytest.param({"bars_in_market": -1}, "bars_in_market", id="bars_in_market"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics([100.0], **kwargs)


def test_trade_without_pnl_net_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"trades\[1\]\.pnl_net"):
        metrics([100.0], [{"pnl_net": 1.0}, {"pnl": 2.0}])


def test_fast_on_a_long_curve() -> None:
    rng = np.random.default_rng(7)
    curve = (100.0 * np.cumprod(1 + rng.normal(0, 0.001, 1_000_000))).tolist()
    result = metrics(curve, bars_in_market=500_000)
    assert result["max_drawdown_duration_bars"] > 0

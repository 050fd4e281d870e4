"""Performance metrics of a run, computed on the host from the equity curve and closed trades.

Inputs: `equity` is the broker value after each bar (PROTOCOL.md `equity_curve`, N bars),
`trades` the closed trades (PROTOCOL.md shape: `pnl`, `pnl_net`, `commission`, `bars_held`,
...). Notation: V0 = initial_capital, V1..VN = equity, P = periods_per_year (bars in a
year, `Timeframe.periods_per_year`), r_i = V_i / V_(i-1) - 1 for i = 1..N (simple per-bar
returns; the first is relative to the initial capital, so a loss on the first bar counts).
Means are arithmetic; std is the sample standard deviation (ddof = 1).

Equity:

- final_value = V_N (V0 when there are no bars)
- total_return_pct = (V_N / V0 - 1) * 100
- cagr_pct = ((V_N / V0) ** (1 / Y) - 1) * 100 with Y = N / P years; -100 when V_N = 0,
  None when V_N < 0
- volatility_pct = std(r) * sqrt(P) * 100 (annualised)
- sharpe_ratio = mean(r) / std(r) * sqrt(P) (risk-free rate 0)
- sortino_ratio = mean(r) / D * sqrt(P) with downside deviation D = sqrt(mean(min(r, 0)^2))
  over all N returns
- max_drawdown_pct = max over i of (peak_i - V_i) / peak_i * 100, peak_i = max(V0..V_i):
  the largest fall from a running peak, as a positive percentage (0 when equity never falls)
- max_drawdown_duration_bars: the longest time under water, in bars, from the peak to the
  first bar back at or above it (or to the last bar when it never recovers); 0 when never
  under water
- calmar_ratio = cagr_pct / max_drawdown_pct
- exposure_pct = bars_in_market / N * 100

Research (`statistics.py` has the formulas and the papers): with C_1..C_N the run's main
symbol close at each bar (`closes`) and B_1..B_N the benchmark's close at the same bars
(`benchmark_closes`):

- buy_and_hold_return_pct = (C_N / C_1 - 1) * 100: bought at the first bar's close, held to
  the last bar's close (None without closes)
- probabilistic_sharpe_ratio = PSR of r_1..r_N against a Sharpe ratio of 0: the
  probability that the true per-bar Sharpe ratio is above 0, given N returns and their
  skewness and kurtosis (Bailey and Lopez de Prado 2012)
- with a benchmark, b_i = B_i / B_(i-1) - 1 for i = 2..N (the benchmark's first bar has no
  previous close, so r_1 is left out and r_2..r_N is compared with b_2..b_N, N - 1
  returns): beta = cov(r, b) / var(b); alpha = (mean(r) - beta * mean(b)) * P (Jensen's
  alpha, risk-free 0, annualised, a fraction); correlation (Pearson); information_ratio =
  mean(r - b) / std(r - b) * sqrt(P); tracking_error_pct = std(r - b) * sqrt(P) * 100.
  All five are None without a benchmark, with fewer than 2 aligned returns, with a close
  <= 0 before the last bar, or with zero variance where they divide by it.

Trades (on `pnl_net`, profit after commission; a trade is won when pnl_net > 0, lost when
pnl_net < 0; a trade at exactly 0 is neither):

- total_trades, winning_trades, losing_trades; win_rate_pct = winning / total * 100
- gross_profit = sum of pnl_net > 0; gross_loss = |sum of pnl_net < 0|;
  net_profit = sum of pnl_net
- profit_factor = gross_profit / gross_loss
- avg_trade_pnl = mean(pnl_net); avg_winning_trade, avg_losing_trade (means over the won and
  lost trades); largest_winning_trade = max(pnl_net), largest_losing_trade = min(pnl_net)
  over the won / lost trades
- avg_bars_held = mean(bars_held)
- total_commission = sum of `commission` over closed trades (a still open trade's
  commission is not counted; 0 without trades)
- sqn = sqrt(n) * mean(pnl_net) / std(pnl_net) (Van Tharp's System Quality Number, n not
  capped at 100)

Undefined figures are None (JSON null), never NaN or Infinity: ratios over no trades or no
bars; sharpe and volatility with fewer than 2 returns; sharpe with std(r) = 0 (flat
equity); sortino with D = 0 (no losing bar); calmar with no drawdown; profit_factor with no
losing trade; sqn with fewer than 2 trades or std(pnl_net) = 0; any result that overflows.
Counts are ints, everything else float64 as computed: nothing is rounded, so the figures
are exact functions of the inputs (a client rounds for display).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import statistics

FloatArray = npt.NDArray[np.float64]
Metrics = dict[str, float | int | None]


def _finite(value: float | np.floating[Any] | None) -> float | None:
    """A plain float, or None for anything undefined (None, NaN, +-Infinity)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return _finite(numerator / denominator)


def _returns(values: FloatArray) -> FloatArray | None:
    """r_i = V_i / V_(i-1) - 1, or None when a previous value is <= 0 (no defined return)."""
    previous = values[:-1]
    if np.any(previous <= 0):
        return None
    returns: FloatArray = values[1:] / previous - 1.0
    return returns


def _cagr_pct(final: float, initial: float, bars: int, periods_per_year: float) -> float | None:
    if bars == 0 or final < 0:
        return None
    if final == 0:
        return -100.0
    try:
        growth = math.exp(math.log(final / initial) * periods_per_year / bars)
    except OverflowError:  # a large gain over a few bars annualises to beyond a float
        return None
    return _finite((growth - 1.0) * 100.0)


def _return_metrics(returns: FloatArray | None, periods_per_year: float) -> Metrics:
    """volatility, sharpe and sortino from per-bar returns."""
    out: Metrics = {"volatility_pct": None, "sharpe_ratio": None, "sortino_ratio": None}
    if returns is None or returns.size == 0:
        return out
    annualiser = math.sqrt(periods_per_year)
    mean = float(np.mean(returns))
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    out["sortino_ratio"] = _ratio(mean * annualiser, downside)
    if returns.size >= 2:
        std = float(np.std(returns, ddof=1))
        out["volatility_pct"] = _finite(std * annualiser * 100.0)
        out["sharpe_ratio"] = _ratio(mean * annualiser, std)
    return out


def drawdown_pct(values: Sequence[float] | FloatArray) -> FloatArray:
    """How far below its running peak each value is, in percent of the peak (0 at a peak).

    A peak of 0 or less (an account wiped out from the start) counts as 0 % below.
    """
    series = np.asarray(values, dtype=np.float64)
    peaks = np.maximum.accumulate(series)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peaks > 0, (peaks - series) / peaks * 100.0, 0.0)


def _drawdown(values: FloatArray) -> tuple[float, int]:
    """(max drawdown in % of the running peak, longest peak-to-recovery span in bars)."""
    peaks = np.maximum.accumulate(values)
    depth = float(np.max(drawdown_pct(values)))
    under = np.concatenate([[0], (values < peaks).astype(np.int8), [0]])
    edges = np.diff(under)
    starts = np.flatnonzero(edges == 1)  # first bar under water; the peak is the bar before
    ends = np.flatnonzero(edges == -1)  # first bar back at the peak, or len(values)
    recovered = ends < values.size
    # Peak to recovery is (end - (start - 1)); never recovered stops at the last bar.
    spans = np.where(recovered, ends - starts + 1, ends - starts)
    return depth, int(spans.max()) if spans.size else 0


def _equity_metrics(
    equity: FloatArray, initial_capital: float, periods_per_year: float, bars_in_market: int
) -> Metrics:
    bars = int(equity.size)
    values = np.concatenate([[initial_capital], equity])
    final = float(values[-1])
    out: Metrics = {
        "final_value": _finite(final),
        "total_return_pct": _finite((final / initial_capital - 1.0) * 100.0),
        "cagr_pct": _cagr_pct(final, initial_capital, bars, periods_per_year),
    }
    out.update(_return_metrics(_returns(values), periods_per_year))
    depth, duration = _drawdown(values)
    cagr = out["cagr_pct"]
    out["max_drawdown_pct"] = _finite(depth)
    out["max_drawdown_duration_bars"] = duration
    out["calmar_ratio"] = _ratio(None if cagr is None else float(cagr), depth)
    out["exposure_pct"] = _ratio(bars_in_market * 100.0, bars)
    out["bars"] = bars
    return out


def _column(trades: Sequence[Mapping[str, Any]], key: str, default: float | None) -> FloatArray:
    """One numeric field of every trade.

    Raises:
        ValueError: a trade lacks the field (and there is no default) or it is not a number.
    """
    values = []
    for position, trade in enumerate(trades):
        value = trade.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"trades[{position}].{key}: must be a number, got {value!r}")
        values.append(float(value))
    return np.asarray(values, dtype=np.float64)


def _mean(values: FloatArray) -> float | None:
    return _finite(np.mean(values)) if values.size else None


def _trade_metrics(trades: Sequence[Mapping[str, Any]]) -> Metrics:
    pnl = _column(trades, "pnl_net", None)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    count = int(pnl.size)
    gross_profit, gross_loss = float(np.sum(wins)), float(-np.sum(losses))
    std = float(np.std(pnl, ddof=1)) if count >= 2 else 0.0
    mean = _mean(pnl)
    return {
        "total_trades": count,
        "winning_trades": int(wins.size),
        "losing_trades": int(losses.size),
        "win_rate_pct": _ratio(wins.size * 100.0, count),
        "gross_profit": _finite(gross_profit),
        "gross_loss": _finite(gross_loss),
        "net_profit": _finite(np.sum(pnl)),
        "profit_factor": _ratio(gross_profit, gross_loss),
        "avg_trade_pnl": mean,
        "avg_winning_trade": _mean(wins),
        "avg_losing_trade": _mean(losses),
        "largest_winning_trade": _finite(np.max(wins)) if wins.size else None,
        "largest_losing_trade": _finite(np.min(losses)) if losses.size else None,
        "avg_bars_held": _mean(_column(trades, "bars_held", 0.0)),
        "total_commission": _finite(np.sum(_column(trades, "commission", 0.0))),
        "sqn": _ratio(None if mean is None else math.sqrt(count) * mean, std),
    }


def _per_bar_closes(name: str, values: Sequence[float] | None, bars: int) -> FloatArray | None:
    """`values` as an array of one close per bar, or None when not given.

    Raises:
        ValueError: values does not have exactly one close per bar.
    """
    if values is None:
        return None
    series = np.asarray(values, dtype=np.float64)
    if series.shape != (bars,):
        raise ValueError(f"{name}: must have one close per bar ({bars}), got {series.size}")
    return series


def _research_metrics(
    values: FloatArray,
    closes: FloatArray | None,
    benchmark_closes: FloatArray | None,
    periods_per_year: float,
) -> Metrics:
    """buy and hold, PSR and the benchmark comparison (module docstring, "Research")."""
    returns = _returns(values)
    out: Metrics = {
        "buy_and_hold_return_pct": (
            None if closes is None else statistics.buy_and_hold_return_pct(closes)
        ),
        "probabilistic_sharpe_ratio": (
            None if returns is None else statistics.probabilistic_sharpe_ratio(returns)
        ),
    }
    benchmark_returns = None if benchmark_closes is None else _returns(benchmark_closes)
    if returns is None or benchmark_returns is None:
        empty: FloatArray = np.empty(0, dtype=np.float64)  # every comparison figure None
        returns = benchmark_returns = empty
    # r_1 is against V0, a time the benchmark has no close for: compare r_2..r_N with b_2..b_N.
    out.update(statistics.benchmark_comparison(returns[1:], benchmark_returns, periods_per_year))
    return out


def compute_metrics(
    equity: Sequence[float],
    trades: Sequence[Mapping[str, Any]],
    *,
    initial_capital: float,
    periods_per_year: float,
    bars_in_market: int,
    closes: Sequence[float] | None = None,
    benchmark_closes: Sequence[float] | None = None,
) -> Metrics:
    """Every metric of the module docstring, by name; undefined ones are None.

    `closes` is the run's main symbol close at each bar and `benchmark_closes` the
    benchmark's close at the same bars, both of the equity's length N; without them the
    figures that need them are None.

    Raises:
        ValueError: initial_capital or periods_per_year is not a positive finite number,
            bars_in_market is negative, closes or benchmark_closes is not one close per
            bar, or a trade's pnl_net (or a present commission or bars_held) is not a
            number.
    """
    if not (math.isfinite(initial_capital) and initial_capital > 0):
        raise ValueError(f"initial_capital: must be a positive number, got {initial_capital}")
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year: must be a positive number, got {periods_per_year}")
    if bars_in_market < 0:
        raise ValueError(f"bars_in_market: must be >= 0, got {bars_in_market}")
    curve = np.asarray(equity, dtype=np.float64)
    main = _per_bar_closes("closes", closes, curve.size)
    benchmark = _per_bar_closes("benchmark_closes", benchmark_closes, curve.size)
    with np.errstate(all="ignore"):  # overflow and 0/0 become None via _finite, not warnings
        metrics = _equity_metrics(curve, initial_capital, periods_per_year, bars_in_market)
        metrics.update(_trade_metrics(trades))
        values = np.concatenate([[initial_capital], curve])
        metrics.update(_research_metrics(values, main, benchmark, periods_per_year))
    return metrics

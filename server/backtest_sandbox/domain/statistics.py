"""Research statistics: is a Sharpe ratio real, and how does a run compare with a benchmark.

Every function takes plain per-period figures (one return per bar, not annualised, unless it
says so) and answers None, never NaN or Infinity, when its figure is undefined.

Notation: r_1..r_T the returns, SR = mean(r) / std(r) the per-period Sharpe ratio (std with
ddof = 1, as in `metrics.py`), g3 and g4 the skewness and the kurtosis of r as population
moments, the way Bailey and Lopez de Prado define them: m_k = mean((r - mean(r))^k),
g3 = m3 / m2^1.5, g4 = m4 / m2^2 (not excess: a normal distribution has g4 = 3). Phi is the
standard normal CDF and Z^-1 its inverse (the stdlib's `statistics.NormalDist`; no scipy).

References:
- D. H. Bailey, M. Lopez de Prado, "The Sharpe Ratio Efficient Frontier", Journal of Risk
  15(2), 2012: the Probabilistic Sharpe Ratio (PSR).
- D. H. Bailey, M. Lopez de Prado, "The Deflated Sharpe Ratio: Correcting for Selection Bias,
  Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5), 2014: the
  Deflated Sharpe Ratio (DSR) and the expected maximum Sharpe ratio of N trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

EULER_MASCHERONI = 0.5772156649015329
"""gamma in the expected maximum of N standard normals (Bailey and Lopez de Prado 2014)."""

_NORMAL = NormalDist()


def _finite(value: float | np.floating[Any] | None) -> float | None:
    """A plain float, or None for anything undefined (None, NaN, +-Infinity)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _array(values: Sequence[float] | FloatArray) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def per_period_sharpe(returns: Sequence[float] | FloatArray) -> float | None:
    """SR = mean(r) / std(r, ddof = 1): the Sharpe ratio of one period, not annualised.

    None with fewer than 2 returns, with std(r) = 0 (every return the same), or with a
    non-finite return.
    """
    series = _array(returns)
    if series.size < 2:
        return None
    with np.errstate(all="ignore"):
        std = float(np.std(series, ddof=1))
        if not math.isfinite(std) or std == 0:
            return None
        return _finite(float(np.mean(series)) / std)


def _moments(series: FloatArray) -> tuple[float, float] | None:
    """(g3, g4): population skewness m3 / m2^1.5 and kurtosis m4 / m2^2; None when m2 = 0."""
    deviations = series - np.mean(series)
    m2 = float(np.mean(deviations**2))
    if not math.isfinite(m2) or m2 == 0:
        return None
    skew = float(np.mean(deviations**3)) / m2**1.5
    kurtosis = float(np.mean(deviations**4)) / m2**2
    return skew, kurtosis


def probabilistic_sharpe_ratio_from_moments(
    sharpe: float, benchmark_sharpe: float, n_obs: int, skew: float, kurtosis: float
) -> float | None:
    """PSR = Phi((SR - SR*) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2)).

    The probability that the true per-period Sharpe ratio exceeds SR* = `benchmark_sharpe`,
    given an observed SR = `sharpe` over T = `n_obs` returns with skewness g3 = `skew` and
    (non-excess) kurtosis g4 = `kurtosis` (Bailey and Lopez de Prado 2012, eq. for PSR). None
    when T < 2, when the variance term under the root is not positive, or a figure is not
    finite.
    """
    if n_obs < 2:
        return None
    variance_term = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not math.isfinite(variance_term) or variance_term <= 0:
        return None
    z = (sharpe - benchmark_sharpe) * math.sqrt(n_obs - 1) / math.sqrt(variance_term)
    if math.isnan(z):
        return None
    return _finite(_NORMAL.cdf(z))  # an infinite z gives 0 or 1, both true answers


def probabilistic_sharpe_ratio(
    returns: Sequence[float] | FloatArray, benchmark_sharpe: float = 0.0
) -> float | None:
    """PSR of per-period `returns` against the per-period Sharpe ratio `benchmark_sharpe`.

    PSR = Phi((SR - SR*) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2)) with
    SR = mean(r) / std(r, ddof = 1), T = len(returns), g3 and g4 the population skewness
    and kurtosis of the returns (module docstring). None when SR is undefined (fewer than
    2 returns, all equal, or a non-finite one).
    """
    series = _array(returns)
    sharpe = per_period_sharpe(series)
    if sharpe is None:
        return None
    with np.errstate(all="ignore"):
        moments = _moments(series)
    if moments is None:
        return None
    skew, kurtosis = moments
    return probabilistic_sharpe_ratio_from_moments(
        sharpe, benchmark_sharpe, int(series.size), skew, kurtosis
    )


def expected_max_sharpe(trial_sharpe_variance: float, n_trials: int) -> float:
    """SR0 = sqrt(V) * ((1 - gamma) * Z^-1(1 - 1/N) + gamma * Z^-1(1 - 1/(N e))).

    The Sharpe ratio that the best of N = `n_trials` independent trials reaches by luck alone
    when every true Sharpe ratio is 0 and the trials' Sharpe ratios have variance
    V = `trial_sharpe_variance`; gamma is the Euler-Mascheroni constant (Bailey and Lopez de
    Prado 2014). With one trial there is nothing to select: SR0 = 0.

    Raises:
        ValueError: n_trials < 1, or trial_sharpe_variance negative or not finite.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials: must be >= 1, got {n_trials}")
    if not (math.isfinite(trial_sharpe_variance) and trial_sharpe_variance >= 0):
        raise ValueError(
            f"trial_sharpe_variance: must be a finite number >= 0, got {trial_sharpe_variance}"
        )
    if n_trials == 1:
        return 0.0
    quantiles = (1.0 - EULER_MASCHERONI) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    quantiles += EULER_MASCHERONI * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(trial_sharpe_variance) * quantiles


def deflated_sharpe_ratio_from_moments(
    sharpe: float,
    n_obs: int,
    skew: float,
    kurtosis: float,
    trial_sharpe_variance: float,
    n_trials: int,
) -> float | None:
    """DSR = PSR(SR, SR0, T, g3, g4) with SR0 = `expected_max_sharpe(V, N)`.

    The probability that the selected strategy's true per-period Sharpe ratio is above what
    the best of N trials reaches by luck (Bailey and Lopez de Prado 2014). All figures are
    per period: `sharpe` SR, `n_obs` T, `skew` g3, `kurtosis` g4 (non-excess), and
    `trial_sharpe_variance` V the variance of the N trials' per-period Sharpe ratios.

    Raises:
        ValueError: as `expected_max_sharpe`.
    """
    threshold = expected_max_sharpe(trial_sharpe_variance, n_trials)
    return probabilistic_sharpe_ratio_from_moments(sharpe, threshold, n_obs, skew, kurtosis)


def deflated_sharpe_ratio(
    returns: Sequence[float] | FloatArray, trial_sharpes: Sequence[float | None]
) -> float | None:
    """DSR of the selected strategy's per-period `returns` after N trials.

    DSR = PSR(returns, SR0), SR0 = sqrt(V) * ((1 - gamma) * Z^-1(1 - 1/N)
    + gamma * Z^-1(1 - 1/(N e))), where `trial_sharpes` are the per-period Sharpe ratios of
    every combination tried (the selected one included), N their count and V their sample
    variance (ddof = 1). A trial whose Sharpe ratio is undefined (None or NaN: flat equity)
    is not counted. N <= 1 leaves nothing selected: the DSR is then the PSR against 0. None
    when the PSR is undefined.
    """
    defined = [float(s) for s in trial_sharpes if s is not None and math.isfinite(s)]
    if len(defined) <= 1:
        return probabilistic_sharpe_ratio(returns, 0.0)
    variance = float(np.var(_array(defined), ddof=1))
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(variance, len(defined)))


def benchmark_comparison(
    returns: Sequence[float] | FloatArray,
    benchmark_returns: Sequence[float] | FloatArray,
    periods_per_year: float,
) -> dict[str, float | None]:
    """The run's per-period `returns` r against the benchmark's b over the same periods.

    With P = `periods_per_year`, means arithmetic, var / cov / std with ddof = 1:

    - beta = cov(r, b) / var(b)
    - alpha = (mean(r) - beta * mean(b)) * P: Jensen's alpha, risk-free rate 0, annualised,
      a fraction (0.05 = 5 % a year)
    - correlation = cov(r, b) / (std(r) * std(b)) (Pearson)
    - information_ratio = mean(r - b) / std(r - b) * sqrt(P)
    - tracking_error_pct = std(r - b) * sqrt(P) * 100

    Every figure is None with fewer than 2 periods or a non-finite return; beta, alpha and
    correlation with var(b) = 0; correlation with var(r) = 0; information_ratio with
    std(r - b) = 0 (tracking_error_pct is then 0).

    Raises:
        ValueError: the two sequences differ in length, or periods_per_year is not a
            positive finite number.
    """
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year: must be a positive number, got {periods_per_year}")
    run, bench = _array(returns), _array(benchmark_returns)
    if run.size != bench.size:
        raise ValueError(
            f"benchmark_returns: must have one return per period of returns ({run.size}), "
            f"got {bench.size}"
        )
    out: dict[str, float | None] = dict.fromkeys(
        ("alpha", "beta", "correlation", "information_ratio", "tracking_error_pct")
    )
    if run.size < 2 or not (np.all(np.isfinite(run)) and np.all(np.isfinite(bench))):
        return out
    annualiser = math.sqrt(periods_per_year)
    with np.errstate(all="ignore"):
        covariance = np.cov(run, bench, ddof=1)
        var_run, var_bench = float(covariance[0, 0]), float(covariance[1, 1])
        cov = float(covariance[0, 1])
        if var_bench > 0:
            beta = cov / var_bench
            out["beta"] = _finite(beta)
            alpha = (float(np.mean(run)) - beta * float(np.mean(bench))) * periods_per_year
            out["alpha"] = _finite(alpha)
            if var_run > 0:
                out["correlation"] = _finite(cov / math.sqrt(var_run * var_bench))
        active = run - bench
        tracking = float(np.std(active, ddof=1))
        out["tracking_error_pct"] = _finite(tracking * annualiser * 100.0)
        if tracking > 0:
            out["information_ratio"] = _finite(float(np.mean(active)) / tracking * annualiser)
    return out


def buy_and_hold_return_pct(closes: Sequence[float] | FloatArray) -> float | None:
    """(close_last / close_first - 1) * 100: bought at the first bar's close, held to the last.

    None without closes, or when the first close is not positive or a close is not finite.
    """
    series = _array(closes)
    if series.size == 0 or not series[0] > 0:
        return None
    with np.errstate(all="ignore"):
        return _finite((float(series[-1]) / float(series[0]) - 1.0) * 100.0)

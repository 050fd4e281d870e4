"""Research statistics against independent computations (pandas moments, numpy.polyfit, an
erf-based normal CDF and its inverse by bisection), the Deflated Sharpe Ratio's worked example
from its paper, and the undefined cases (None, never NaN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from backtest_sandbox.domain import statistics as st
from backtest_sandbox.domain.metric_names import METRIC_MEANINGS
from backtest_sandbox.domain.metrics import compute_metrics
from tests.conftest import SHARED_DATA

RESEARCH_KEYS = {
    "buy_and_hold_return_pct", "probabilistic_sharpe_ratio", "alpha", "beta", "correlation",
    "information_ratio", "tracking_error_pct",
}  # fmt: skip
BENCHMARK_KEYS = RESEARCH_KEYS - {"buy_and_hold_return_pct", "probabilistic_sharpe_ratio"}
INITIAL = 10_000.0
GAMMA = 0.5772156649015329  # Euler-Mascheroni


def phi(z: float) -> float:
    """The standard normal CDF from math.erf (the module uses statistics.NormalDist)."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def phi_inverse(p: float) -> float:
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if phi(middle) < p else (low, middle)
    return (low + high) / 2


def paper_moments(returns: pd.Series) -> tuple[float, float]:
    """(g3, g4) population skewness and non-excess kurtosis, from pandas' bias-corrected ones.

    pandas: G1 = g1 * sqrt(n (n - 1)) / (n - 2), G2 = (n - 1) / ((n - 2) (n - 3)) *
    ((n + 1) * (g4 - 3) + 6); solved here for g1 and g4.
    """
    n = len(returns)
    g3 = returns.skew() * (n - 2) / math.sqrt(n * (n - 1))
    excess = (returns.kurt() * (n - 2) * (n - 3) / (n - 1) - 6) / (n + 1)
    return g3, excess + 3


def psr_by_hand(returns: pd.Series, benchmark: float) -> float:
    sharpe = returns.mean() / returns.std()
    g3, g4 = paper_moments(returns)
    root = math.sqrt(1 - g3 * sharpe + (g4 - 1) / 4 * sharpe**2)
    return phi((sharpe - benchmark) * math.sqrt(len(returns) - 1) / root)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    """ORCL and YHOO daily closes on the dates both have (1996-2014)."""

    def close(name: str) -> pd.Series:
        path = SHARED_DATA / name
        return pd.read_csv(path, parse_dates=["Date"], index_col="Date")["Close"]

    frame = pd.concat({"orcl": close("orcl-1995-2014.txt"), "yhoo": close("yhoo-1996-2014.txt")},
                      axis=1, join="inner")  # fmt: skip
    assert len(frame) > 4000
    return frame


@pytest.fixture(scope="module")
def returns(prices: pd.DataFrame) -> pd.Series:
    return prices["orcl"].pct_change().dropna()


def test_moment_conversion_is_right() -> None:
    # The paper's moments straight from their definition, to check the pandas inversion.
    values = pd.Series([0.01, -0.02, 0.03, 0.0, -0.05, 0.04, 0.02])
    deviations = values - values.mean()
    m2, m3, m4 = ((deviations**k).mean() for k in (2, 3, 4))
    assert paper_moments(values) == pytest.approx((m3 / m2**1.5, m4 / m2**2))


def test_per_period_sharpe(returns: pd.Series) -> None:
    assert st.per_period_sharpe(returns.to_numpy()) == pytest.approx(
        returns.mean() / returns.std(), rel=1e-12
    )


def test_psr_matches_the_formula_on_orcl(returns: pd.Series) -> None:
    g3, g4 = paper_moments(returns)
    assert g3 > 0.3 and g4 > 10  # far from normal (normal: 0 and 3): the moments matter
    for benchmark in (0.0, 0.01, 0.05):
        assert st.probabilistic_sharpe_ratio(returns.to_numpy(), benchmark) == pytest.approx(
            psr_by_hand(returns, benchmark), rel=1e-9
        )


def test_psr_is_a_calibrated_probability_for_skewed_returns() -> None:
    """Returns with a true per-period Sharpe ratio of 0.2 and skew -2: PSR against 0.2 is
    uniform on (0, 1), so it passes 0.95 in 5 % of samples. Without the skewness and kurtosis
    term it would pass in about 10.6 %, with the skew's sign flipped in about 17 %."""
    rng = np.random.default_rng(7)
    samples = -(rng.exponential(1.0, size=(4000, 250)) - 1.0) + 0.2  # mean 0.2, std 1
    psr = np.array([st.probabilistic_sharpe_ratio(row, 0.2) for row in samples])
    assert abs(np.mean(psr > 0.95) - 0.05) < 0.012
    assert abs(np.mean(psr < 0.05) - 0.05) < 0.012


def test_dsr_worked_example_of_the_paper() -> None:
    """Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: the
    best of N = 100 trials has an annualised SR of 2.5 over T = 1250 daily returns (5 years
    of 250), skewness -3, kurtosis 10; the trials' annualised Sharpe ratios have variance 0.5.
    The paper finds E[max SR] ~ 0.1132 (per day) and DSR ~ 0.9004.

    By hand, per day: SR = 2.5 / sqrt(250) = 0.1581139, V = 0.5 / 250 = 0.002;
    Z^-1(1 - 1/100) = 2.3263479, Z^-1(1 - 1/(100 e)) = Z^-1(0.9963212) = 2.6802104;
    SR0 = sqrt(0.002) * (0.4227843 * 2.3263479 + 0.5772157 * 2.6802104)
        = 0.0447214 * 2.5306029 = 0.1131720;
    z = (0.1581139 - 0.1131720) * sqrt(1249) / sqrt(1 + 3 * 0.1581139 + 9/4 * 0.1581139^2)
      = 0.0449419 * 35.341194 / sqrt(1.5305916) = 1.2838160; Phi(1.2838160) = 0.9003968.
    """
    assert phi_inverse(0.99) == pytest.approx(2.3263479, abs=1e-7)
    assert phi_inverse(1 - 1 / (100 * math.e)) == pytest.approx(2.6802104, abs=1e-7)
    assert phi(1.2838160) == pytest.approx(0.9003968, abs=1e-7)

    sharpe, variance = 2.5 / math.sqrt(250), 0.5 / 250
    assert st.expected_max_sharpe(variance, 100) == pytest.approx(0.1131720, abs=1e-7)
    dsr = st.deflated_sharpe_ratio_from_moments(sharpe, 1250, -3.0, 10.0, variance, 100)
    assert dsr == pytest.approx(0.9003968, abs=1e-7)
    assert round(dsr, 4) == 0.9004  # the paper's figure


def test_expected_max_sharpe_formula_and_limits() -> None:
    for trials in (2, 10, 1000):
        by_hand = math.sqrt(0.3) * (
            (1 - GAMMA) * phi_inverse(1 - 1 / trials)
            + GAMMA * phi_inverse(1 - 1 / (trials * math.e))
        )
        assert st.expected_max_sharpe(0.3, trials) == pytest.approx(by_hand, rel=1e-9)
    assert st.expected_max_sharpe(0.3, 1) == 0.0  # nothing selected
    assert st.expected_max_sharpe(0.0, 50) == 0.0  # every trial alike
    with pytest.raises(ValueError, match="n_trials"):
        st.expected_max_sharpe(0.3, 0)
    with pytest.raises(ValueError, match="trial_sharpe_variance"):
        st.expected_max_sharpe(-1.0, 5)


def test_dsr_of_returns_against_the_trials(returns: pd.Series) -> None:
    trials = [0.01, 0.03, -0.02, None, 0.05, float("nan"), 0.04]  # None / NaN: flat runs
    defined = pd.Series([0.01, 0.03, -0.02, 0.05, 0.04])
    threshold = math.sqrt(defined.var()) * (
        (1 - GAMMA) * phi_inverse(1 - 1 / 5) + GAMMA * phi_inverse(1 - 1 / (5 * math.e))
    )
    dsr = st.deflated_sharpe_ratio(returns.to_numpy(), trials)
    assert dsr == pytest.approx(psr_by_hand(returns, threshold), rel=1e-9)
    psr = st.probabilistic_sharpe_ratio(returns.to_numpy())
    assert dsr is not None and psr is not None and dsr < psr  # selection costs confidence
    # One trial (or none) selects nothing: the DSR is the PSR against 0.
    assert st.deflated_sharpe_ratio(returns.to_numpy(), [0.05]) == psr
    assert st.deflated_sharpe_ratio(returns.to_numpy(), []) == psr


def test_benchmark_comparison_matches_pandas_and_polyfit(prices: pd.DataFrame) -> None:
    run, bench = prices["orcl"].pct_change().dropna(), prices["yhoo"].pct_change().dropna()
    result = st.benchmark_comparison(run.to_numpy(), bench.to_numpy(), 252.0)
    slope, intercept = np.polyfit(bench.to_numpy(), run.to_numpy(), 1)
    active = run - bench
    assert result["beta"] == pytest.approx(slope, rel=1e-9)
    assert result["beta"] == pytest.approx(run.cov(bench) / bench.var(), rel=1e-12)
    assert result["alpha"] == pytest.approx(intercept * 252, rel=1e-9)
    assert result["correlation"] == pytest.approx(run.corr(bench), rel=1e-12)
    assert result["information_ratio"] == pytest.approx(
        active.mean() / active.std() * math.sqrt(252), rel=1e-12
    )
    assert result["tracking_error_pct"] == pytest.approx(
        active.std() * math.sqrt(252) * 100, rel=1e-12
    )
    assert 0.2 < result["correlation"] < 0.7  # two tech stocks, related but not the same


def test_benchmark_comparison_undefined_cases() -> None:
    assert set(st.benchmark_comparison([0.01], [0.02], 252.0).values()) == {None}
    assert set(st.benchmark_comparison([], [], 252.0).values()) == {None}
    not_finite = st.benchmark_comparison([0.01, float("nan")], [0.0, 0.1], 252.0)
    assert set(not_finite.values()) == {None}
    flat = st.benchmark_comparison([0.01, 0.03, -0.02], [0.01, 0.01, 0.01], 252.0)
    assert flat["beta"] is None and flat["alpha"] is None and flat["correlation"] is None
    assert flat["tracking_error_pct"] is not None and flat["information_ratio"] is not None
    flat_run = st.benchmark_comparison([0.01, 0.01, 0.01], [0.01, 0.03, -0.02], 252.0)
    assert flat_run["beta"] == 0.0 and flat_run["correlation"] is None
    same = st.benchmark_comparison([0.01, 0.03, -0.02], [0.01, 0.03, -0.02], 252.0)
    assert same["tracking_error_pct"] == 0.0 and same["information_ratio"] is None
    assert same["beta"] == pytest.approx(1.0) and same["alpha"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="benchmark_returns"):
        st.benchmark_comparison([0.01, 0.02], [0.01], 252.0)
    with pytest.raises(ValueError, match="periods_per_year"):
        st.benchmark_comparison([0.01, 0.02], [0.01, 0.0], 0.0)


def test_undefined_sharpe_and_psr() -> None:
    for values in ([], [0.01], [0.01, 0.01, 0.01], [0.01, float("inf")]):
        assert st.per_period_sharpe(values) is None, values
        assert st.probabilistic_sharpe_ratio(values) is None, values
        assert st.deflated_sharpe_ratio(values, [0.1, 0.2]) is None, values
    # Two returns are enough: SR = 0.02 / (0.02 / sqrt(2)) = sqrt(2), T - 1 = 1, g3 = 0,
    # g4 = 1, so the root is 1 and z = sqrt(2).
    assert st.probabilistic_sharpe_ratio([0.01, 0.03]) == pytest.approx(phi(math.sqrt(2)))


def test_buy_and_hold(prices: pd.DataFrame) -> None:
    closes = prices["orcl"]
    expected = (closes.iloc[-1] / closes.iloc[0] - 1) * 100
    assert st.buy_and_hold_return_pct(closes.to_numpy()) == pytest.approx(expected, rel=1e-12)
    assert st.buy_and_hold_return_pct([5.0]) == 0.0
    assert st.buy_and_hold_return_pct([]) is None
    assert st.buy_and_hold_return_pct([0.0, 5.0]) is None
    assert st.buy_and_hold_return_pct([5.0, float("nan")]) is None


def run_metrics(equity: list[float], **kw: object) -> dict:
    result = compute_metrics(
        equity, [], initial_capital=INITIAL, periods_per_year=252.0, bars_in_market=0, **kw
    )
    json.dumps(result, allow_nan=False)  # never NaN or Infinity
    return result


def test_compute_metrics_gains_the_research_figures(prices: pd.DataFrame) -> None:
    """A run that holds ORCL from its first close less a 0.1 % cost, against YHOO."""
    orcl, yhoo = prices["orcl"], prices["yhoo"]
    equity = INITIAL * 0.999 * orcl / orcl.iloc[0]
    result = run_metrics(equity.tolist(), closes=orcl.tolist(), benchmark_closes=yhoo.tolist())
    assert result.keys() >= RESEARCH_KEYS
    assert METRIC_MEANINGS.keys() >= RESEARCH_KEYS

    values = pd.Series([INITIAL, *equity.tolist()])
    r = values.pct_change().dropna().reset_index(drop=True)  # r_1..r_N, r_1 against V0
    b = yhoo.pct_change().dropna().reset_index(drop=True)  # b_2..b_N
    aligned = r.iloc[1:].reset_index(drop=True)  # r_2..r_N
    assert len(aligned) == len(b) == len(orcl) - 1
    slope, intercept = np.polyfit(b.to_numpy(), aligned.to_numpy(), 1)
    active = aligned - b
    assert result["buy_and_hold_return_pct"] == pytest.approx(
        (orcl.iloc[-1] / orcl.iloc[0] - 1) * 100, rel=1e-12
    )
    assert result["probabilistic_sharpe_ratio"] == pytest.approx(psr_by_hand(r, 0.0), rel=1e-9)
    assert result["beta"] == pytest.approx(slope, rel=1e-9)
    assert result["alpha"] == pytest.approx(intercept * 252, rel=1e-9)
    assert result["correlation"] == pytest.approx(aligned.corr(b), rel=1e-12)
    assert result["information_ratio"] == pytest.approx(
        active.mean() / active.std() * math.sqrt(252), rel=1e-12
    )
    assert result["tracking_error_pct"] == pytest.approx(
        active.std() * math.sqrt(252) * 100, rel=1e-12
    )
    # Against itself, ORCL's equity moves with ORCL bar for bar from bar 2 on.
    itself = run_metrics(equity.tolist(), closes=orcl.tolist(), benchmark_closes=orcl.tolist())
    assert itself["beta"] == pytest.approx(1.0) and itself["correlation"] == pytest.approx(1.0)
    assert itself["tracking_error_pct"] == pytest.approx(0.0, abs=1e-9)


def test_compute_metrics_without_closes_has_the_names_as_null() -> None:
    equity = [10_100.0, 10_050.0, 10_200.0, 10_150.0, 10_400.0]
    result = run_metrics(equity)
    assert result.keys() >= RESEARCH_KEYS
    assert result["buy_and_hold_return_pct"] is None
    assert all(result[key] is None for key in BENCHMARK_KEYS)
    returns = pd.Series([INITIAL, *equity]).pct_change().dropna()  # pandas' kurt wants 4+
    assert result["probabilistic_sharpe_ratio"] == pytest.approx(psr_by_hand(returns, 0.0))


def test_compute_metrics_undefined_research_figures() -> None:
    # Two bars leave one aligned return: no comparison. A zero benchmark close: no return.
    short = run_metrics([10_100.0, 10_050.0], closes=[5.0, 6.0], benchmark_closes=[1.0, 2.0])
    assert all(short[key] is None for key in BENCHMARK_KEYS)
    assert short["buy_and_hold_return_pct"] == pytest.approx(20.0)
    broken = run_metrics([10_100.0, 10_050.0, 10_000.0, 10_300.0],
                         benchmark_closes=[1.0, 0.0, 2.0, 3.0])  # fmt: skip
    assert all(broken[key] is None for key in BENCHMARK_KEYS)
    flat = run_metrics([INITIAL] * 5, closes=[1.0] * 5, benchmark_closes=[1.0] * 5)
    assert flat["probabilistic_sharpe_ratio"] is None and flat["beta"] is None
    assert flat["buy_and_hold_return_pct"] == 0.0
    assert all(run_metrics([])[key] is None for key in RESEARCH_KEYS)


@pytest.mark.parametrize("field", ["closes", "benchmark_closes"])
def test_compute_metrics_wants_one_close_per_bar(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}: must have one close per bar \\(3\\), got 2"):
        run_metrics([1.0, 2.0, 3.0], **{field: [1.0, 2.0]})

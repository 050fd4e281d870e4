"""Every metric a result carries, by name, with what it means in one line: gates and
constraints check names against it, reports and docs show the meanings. (No numpy here: the
CLI checks a gate before it imports anything heavy; `metrics.py` computes them.)"""

from __future__ import annotations

METRIC_MEANINGS: dict[str, str] = {
    "bars": "bars in the run",
    "final_value": "the account's value after the last bar",
    "total_return_pct": "final value over initial capital, minus 1, in percent",
    "cagr_pct": "the yearly growth rate that compounds to the same final value",
    "volatility_pct": "the standard deviation of bar returns, annualised, in percent",
    "sharpe_ratio": "mean bar return over its standard deviation, annualised (risk-free 0)",
    "sortino_ratio": "like Sharpe, but only losing bars count as risk",
    "max_drawdown_pct": "the largest fall from a running peak of the equity, in percent",
    "max_drawdown_duration_bars": "the longest time under a previous peak, in bars",
    "calmar_ratio": "CAGR over the maximum drawdown",
    "exposure_pct": "the share of bars with a position open, in percent",
    "total_trades": "closed trades",
    "winning_trades": "closed trades with a profit after commission",
    "losing_trades": "closed trades with a loss after commission",
    "win_rate_pct": "winning trades over all closed trades, in percent",
    "gross_profit": "the sum of the winning trades' profits",
    "gross_loss": "the sum of the losing trades' losses, as a positive number",
    "net_profit": "the sum of every closed trade's profit or loss",
    "profit_factor": "gross profit over gross loss",
    "avg_trade_pnl": "the mean profit or loss of a closed trade",
    "avg_winning_trade": "the mean profit of a winning trade",
    "avg_losing_trade": "the mean loss of a losing trade",
    "largest_winning_trade": "the largest profit of one trade",
    "largest_losing_trade": "the largest loss of one trade",
    "avg_bars_held": "how long a trade was open on average, in bars",
    "total_commission": "commission paid on closed trades",
    "sqn": "System Quality Number: sqrt(trades) x mean / std of trade profits",
    "buy_and_hold_return_pct": "buying at the first bar's close, selling at the last's, in percent",
    "probabilistic_sharpe_ratio": "the probability that the true Sharpe ratio is above 0 (PSR)",
    "alpha": "the yearly return not explained by the benchmark (Jensen's alpha), a fraction",
    "beta": "how much the bar returns move with the benchmark's: cov / var of the benchmark",
    "correlation": "the Pearson correlation of bar returns with the benchmark's",
    "information_ratio": "mean bar return above the benchmark over its std, annualised",
    "tracking_error_pct": "the std of bar returns above the benchmark, annualised, in percent",
}

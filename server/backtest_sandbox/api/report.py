"""`run --output-dir DIR`: the files a reviewer opens (docs/interface.md section 10).

    result.json    the --json object
    trades.csv     one row per closed trade
    equity.csv     the equity curve
    equity.png, drawdown.png
    report.html    one self-contained page: the metrics with what each means, the price with
                   the entries and exits marked, equity, drawdown, monthly returns, the
                   trades, the integrity of the figures, where the data came from

Drawn on the host with matplotlib (Agg, no pyplot: no global state); images are inlined, so
the page loads without any request and without JavaScript. Every text that comes from the
run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from backtest_sandbox.domain.metric_names import METRIC_MEANINGS
from backtest_sandbox.domain.models import BacktestResult, Integrity
from backtest_sandbox.jobs.results import equity_csv, trades_csv
from backtest_sandbox.jobs.views import chart_series

from .charts import MAX_RENDERED_POINTS, render_chart
from .ci import Gate

WIDTH, HEIGHT, DPI = 11.0, 4.0, 100
MAX_TRADES_LISTED = 500  # the page stays light; trades.csv has them all


def write_output_dir(
    directory: Path,
    status: dict[str, Any],
    result: BacktestResult | None,
    *,
    initial_capital: float,
    prices: pd.Series | None,
    gates: Sequence[Gate],
) -> None:
    """Write every file of the output directory (only result.json when there is no result).

    Raises:
        OSError: the directory cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(status, indent=2) + "\n")
    if result is None:
        return
    (directory / "trades.csv").write_text(trades_csv(result.trade_log))
    (directory / "equity.csv").write_text(equity_csv(result))
    equity_png, drawdown_png = (
        render_chart(chart_series(result, name, max_points=MAX_RENDERED_POINTS))
        for name in ("equity", "drawdown")
    )
    (directory / "equity.png").write_bytes(equity_png)
    (directory / "drawdown.png").write_bytes(drawdown_png)
    page = _page(result, initial_capital, prices, gates, equity_png, drawdown_png)
    (directory / "report.html").write_text(page, encoding="utf-8")


# -- charts ------------------------------------------------------------------------------------


def _figure() -> Figure:
    figure = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _dates(stamps: Sequence[str]) -> Any:
    return np.array([datetime.fromisoformat(s) for s in stamps], dtype="datetime64[s]")


def _price_png(prices: pd.Series, trades: list[dict[str, Any]]) -> bytes:
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(prices.index.to_numpy(), prices.to_numpy(), color="#444", linewidth=0.8)
    for side, marker, color in (("long", "^", "#1a9850"), ("short", "v", "#d73027")):
        chosen = [t for t in trades if t.get("direction") == side]
        if chosen:
            axes.scatter(_dates([t["entry_time"] for t in chosen]),
                         [t["entry_price"] for t in chosen], marker=marker, color=color,
                         s=36, zorder=3, label=f"{side} entry")
    if trades:
        axes.scatter(_dates([t["exit_time"] for t in trades]), [t["exit_price"] for t in trades],
                     marker="x", color="#2166ac", s=30, zorder=3, label="exit")
        axes.legend(loc="upper left", fontsize=8)
    axes.set_title("price (close), entries and exits")
    axes.grid(alpha=0.3)
    return _png(figure)


def monthly_returns(
    stamps: Sequence[str], values: Sequence[float], initial: float
) -> pd.DataFrame:
    """Percent return of each calendar month (rows: years, columns: 1..12), from the equity
    at each month's last bar (the first month from the initial capital)."""
    index = pd.DatetimeIndex(list(stamps))
    series = pd.Series(list(values), index=index)
    ends = series.groupby([index.year, index.month]).last()
    before = ends.shift(1).fillna(initial)
    returns = (ends / before - 1.0) * 100.0
    table = returns.unstack()
    return table.reindex(columns=range(1, 13))


def _heatmap_png(table: pd.DataFrame) -> bytes:
    figure = Figure(figsize=(WIDTH, 0.5 + 0.35 * max(len(table), 1)), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    data = table.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    axes.imshow(data, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                                "Oct", "Nov", "Dec"])
    axes.set_yticks(range(len(table)), [str(year) for year in table.index])
    for (row, column), value in np.ndenumerate(data):
        if np.isfinite(value):
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=7)
    axes.set_title("monthly returns (%)")
    return _png(figure)


# -- the page ----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meaning { color: #666; } .held { color: #1a7f37; } .failed, .unknown { color: #cf222e; }
.note { background: #fff8c5; padding: .6em 1em; border-radius: 4px; }
img { max-width: 100%; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _number(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return html.escape(str(value))


def _page(
    result: BacktestResult,
    initial_capital: float,
    prices: pd.Series | None,
    gates: Sequence[Gate],
    equity_png: bytes,
    drawdown_png: bytes,
) -> str:
    e = html.escape
    data, provenance = result.data, result.provenance
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Backtest {e(result.backtest_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Backtest {e(result.backtest_id)}</h1>",
        f"<p>{data.bars} bars of {e(data.path or data.source)}, {e(data.first)} to "
        f"{e(data.last)}; run in {result.execution_time_seconds:.2f} s.</p>",
    ]
    if gates:
        parts.append("<h2>Gates</h2><table><tr><th>gate</th><th>value</th><th>result</th></tr>")
        for gate in gates:
            parts.append(f"<tr><td><code>{e(str(gate.condition))}</code></td>"
                         f"<td class=num>{_number(gate.value)}</td>"
                         f"<td class={gate.status}>{gate.status}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Metrics</h2><table>")
    for name, value in result.metrics.items():
        parts.append(f"<tr><td>{e(name)}</td><td class=num>{_number(value)}</td>"
                     f"<td class=meaning>{e(METRIC_MEANINGS.get(name, ''))}</td></tr>")
    parts.append("</table>")
    if prices is not None and len(prices):
        parts += ["<h2>Price</h2>", _img(_price_png(prices, result.trade_log), "price chart")]
    parts += ["<h2>Equity</h2>", _img(equity_png, "equity"),
              _benchmark_html(result),
              "<h2>Drawdown</h2>", _img(drawdown_png, "drawdown")]
    stamps = [p.timestamp for p in result.equity_curve]
    if stamps:
        values = [p.value for p in result.equity_curve]
        table = monthly_returns(stamps, values, initial_capital)
        parts += ["<h2>Monthly returns</h2>", _img(_heatmap_png(table), "monthly returns")]
    parts.append(_trades_html(result.trade_log))
    parts += ["<h2>Integrity</h2>", _integrity_html(result.integrity), "<h2>Provenance</h2><table>"]
    facts: dict[str, object] = {
        "data source": data.source, "data file": data.path or "-", "data sha256": data.sha256,
        "code sha256": provenance.code_sha256, "config sha256": provenance.config_sha256,
        "runner image": provenance.runner_image, "backtrader": provenance.backtrader_version,
        "runtime": provenance.runtime, "container": provenance.container_id,
        "warm container": provenance.warm,
    }
    for name, fact in facts.items():
        parts.append(f"<tr><td>{e(name)}</td><td><code>{e(str(fact))}</code></td></tr>")
    parts.append("</table>")
    if result.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f"<li>{e(w)}</li>" for w in result.warnings]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _integrity_html(integrity: Integrity) -> str:
    if not integrity.verified:
        return (
            "<p class=note>Not verified: a <b>fast</b> run. The figures come from the "
            "strategy's own process, which the host checks for shape and consistency (bars, one "
            "equity point per bar, finite numbers) but cannot re-compute.</p>"
        )
    matches = {True: "yes", False: "<b>no</b> (the strategy reported other numbers)", None: "-"}
    return (
        "<p class=note>Verified: the strategy saw each bar only once it had happened, and a "
        "referee that runs no user code computed these figures from the orders it committed."
        f"</p><table><tr><th>orders and cancels</th><td>{integrity.events}</td></tr>"
        f"<tr><th>refused</th><td>{integrity.rejected_events}</td></tr>"
        f"<tr><th>strategy's claim matched</th><td>{matches[integrity.claim_matches]}</td></tr>"
        "</table>"
    )


def _trades_html(trades: list[dict[str, Any]]) -> str:
    if not trades:
        return "<h2>Trades</h2><p>No closed trade.</p>"
    columns = ["symbol", "entry_time", "exit_time", "direction", "size", "entry_price",
               "exit_price", "pnl_net", "bars_held"]
    rows = ["<h2>Trades</h2>",
            f"<p>{len(trades)} closed trades" + (
                f"; the first {MAX_TRADES_LISTED} are listed (trades.csv has all)"
                if len(trades) > MAX_TRADES_LISTED else "") + ".</p>",
            "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for trade in trades[:MAX_TRADES_LISTED]:
        cells = "".join(f"<td class=num>{_number(trade.get(c))}</td>" for c in columns)
        rows.append(f"<tr>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _benchmark_html(result: BacktestResult) -> str:
    """The strategy against holding its symbol, and against the benchmark when it has one."""
    metrics, benchmark = result.metrics, result.data.benchmark
    hold = f"buy and hold: {_number(metrics.get('buy_and_hold_return_pct'))} %"
    if benchmark is None:
        return f"<p class=meaning>{hold}; benchmark: none (config.benchmark compares one).</p>"
    figures = ", ".join(
        f"{name} {_number(metrics.get(name))}"
        for name in ("alpha", "beta", "correlation", "information_ratio", "tracking_error_pct")
    )
    return f"<p class=meaning>{hold}; against {html.escape(benchmark.symbol)}: {figures}.</p>"

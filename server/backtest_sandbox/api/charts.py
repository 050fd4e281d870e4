"""PNG charts of a result's series, drawn on the host with matplotlib's Agg backend.

`Figure` with an Agg canvas, never pyplot: pyplot keeps global state and is not thread-safe,
and charts are drawn on worker threads. The series come from the host's own stored result,
already validated, so no strategy output reaches the renderer except as numbers and dates.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from backtest_sandbox.domain.models import EquityPoint
from backtest_sandbox.jobs.sweeps import Heatmap
from backtest_sandbox.jobs.views import ChartSeries, downsample

WIDTH_INCHES, HEIGHT_INCHES, DPI = 10.0, 4.5, 100  # 1000 x 450 px: readable, ~50 KB
MAX_RENDERED_POINTS = 2000  # more than the pixels across: callers downsample first


def _x_values(points: Sequence[EquityPoint]) -> npt.NDArray[Any]:
    """Dates for the x axis, or bar numbers when a timestamp is not ISO."""
    try:
        dates = [datetime.fromisoformat(point.timestamp) for point in points]
    except ValueError:
        return np.arange(len(points))
    return np.array(dates, dtype="datetime64[s]")


def render_png(points: Sequence[EquityPoint], *, title: str, ylabel: str, fill: bool) -> bytes:
    """One line chart as PNG bytes; `fill` shades the area between the line and zero.

    Raises:
        ValueError: more than MAX_RENDERED_POINTS points (downsample first).
    """
    if len(points) > MAX_RENDERED_POINTS:
        raise ValueError(f"{len(points)} points; downsample to {MAX_RENDERED_POINTS} first")
    figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    xs = _x_values(points)
    ys = np.array([point.value for point in points], dtype=float)
    axes.plot(xs, ys, linewidth=1.2, color="tab:red" if fill else "tab:blue")
    if fill and len(ys):
        axes.fill_between(xs, ys, 0.0, color="tab:red", alpha=0.25)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_chart(series: ChartSeries) -> bytes:
    """A result's equity or drawdown series as PNG (drawn from at most MAX_RENDERED_POINTS)."""
    return render_png(
        downsample(series.points, MAX_RENDERED_POINTS),
        title=f"{series.name} - {series.backtest_id}",
        ylabel="drawdown (%)" if series.name == "drawdown" else "equity",
        fill=series.name == "drawdown",
    )


def render_heatmap(heatmap: Heatmap) -> bytes:
    """A sweep's target over its two varying parameters as PNG: one cell per combination,
    its value written in it; a failed combination is an empty (grey) cell."""
    cells = np.array(
        [[np.nan if value is None else value for value in row] for row in heatmap.cells],
        dtype=float,
    )
    figure = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(heatmap.x_values)), 4.5), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor("0.85")  # shows through the NaN cells
    image = axes.imshow(np.ma.masked_invalid(cells), cmap="viridis", origin="lower", aspect="auto")
    figure.colorbar(image, ax=axes, label=heatmap.target)
    axes.set_xticks(range(len(heatmap.x_values)), [str(v) for v in heatmap.x_values])
    axes.set_yticks(range(len(heatmap.y_values)), [str(v) for v in heatmap.y_values])
    axes.set_xlabel(heatmap.x_name)
    axes.set_ylabel(heatmap.y_name)
    if cells.size <= 400:  # numbers stay legible up to about 20 x 20
        for (row, column), value in np.ndenumerate(cells):
            if np.isfinite(value):
                axes.text(column, row, f"{value:.3g}", ha="center", va="center", color="w")
    axes.set_title(f"{heatmap.target} by {heatmap.x_name} and {heatmap.y_name}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

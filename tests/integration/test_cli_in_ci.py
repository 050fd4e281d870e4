"""The CLI as a CI job runs it (docs/interface.md section 10): gates and exit code 5, a null
metric with and without --strict, GitHub's job summary and error annotations, the output
directory, and the report opened in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOCKER, REPO
from tests.strategies import strategy_with

pytestmark = DOCKER

SMA = REPO / "examples" / "sma_cross.py"
CONFIG = REPO / "examples" / "sma_cross.json"
NEVER_TRADES = "import backtrader as bt\n\nclass Idle(bt.Strategy):\n    pass\n"


def run_ci(cli: Any, *args: str, tmp_path: Path, **env: str) -> tuple[Any, str]:
    """`run` with GitHub's environment; the result and the step summary written."""
    summary = tmp_path / "summary.md"
    result = cli("run", *args, env={"GITHUB_ACTIONS": "true",
                                    "GITHUB_STEP_SUMMARY": str(summary), **env})
    return result, summary.read_text() if summary.exists() else ""


def test_gates_that_hold_exit_0(cli: Any, tmp_path: Path) -> None:
    result, summary = run_ci(
        cli, str(SMA), "--config", str(CONFIG), "--json",
        "--fail-if", "total_trades < 10", "--fail-if", "max_drawdown_pct > 50",
        tmp_path=tmp_path,
    )
    assert result.code == 0, result.stderr
    status = result.status
    metrics = status["result"]["metrics"]
    assert [(g["gate"], g["status"], g["value"]) for g in status["gates"]] == [
        ("total_trades < 10", "held", metrics["total_trades"]),
        ("max_drawdown_pct > 50", "held", metrics["max_drawdown_pct"]),
    ]
    assert "### Backtest of `sma_cross.py`: passed" in summary
    assert "| `total_trades < 10` |" in summary and "| held |" in summary
    assert f"| final_value | {metrics['final_value']:.6g} |" in summary


def test_a_gate_that_fails_exits_5(cli: Any, tmp_path: Path) -> None:
    result, summary = run_ci(
        cli, str(SMA), "--config", str(CONFIG),
        "--fail-if", "sharpe_ratio < 0.5", "--fail-if", "total_trades < 10",
        tmp_path=tmp_path,
    )
    assert result.code == 5, result.stderr
    assert "gate sharpe_ratio < 0.5: failed" in result.stdout  # SMA on ORCL 2000-09 loses
    assert "gate total_trades < 10: held" in result.stdout
    assert "gates failed" in summary and "| failed |" in summary


def test_a_null_metric_is_unknown_and_fails_only_when_strict(
    cli: Any, tmp_path: Path, write_strategy: Any
) -> None:
    idle = write_strategy(NEVER_TRADES)
    args = [str(idle), "--config", str(CONFIG), "--json", "--fail-if", "profit_factor < 1"]
    lenient, _ = run_ci(cli, *args, tmp_path=tmp_path)
    assert lenient.code == 0, lenient.stderr
    assert lenient.status["gates"][0] | {} == {
        "gate": "profit_factor < 1", "metric": "profit_factor", "op": "<", "threshold": 1.0,
        "value": None, "status": "unknown",
    }
    strict, _ = run_ci(cli, *args, "--strict", tmp_path=tmp_path)
    assert strict.code == 5


def test_a_malformed_gate_exits_2_naming_the_flag(cli: Any, tmp_path: Path) -> None:
    result, _ = run_ci(cli, str(SMA), "--config", str(CONFIG), "--fail-if", "sharpe <> 1",
                       tmp_path=tmp_path)
    assert result.code == 2
    assert result.stderr.startswith("error: --fail-if: 'sharpe <> 1' is not METRIC OP NUMBER")


def test_a_syntax_error_exits_3_with_an_annotation_on_its_line(
    cli: Any, tmp_path: Path, write_strategy: Any
) -> None:
    broken = write_strategy("import backtrader as bt\n\n\nclass S(bt.Strategy:\n    pass\n")
    result, summary = run_ci(cli, str(broken), "--config", str(CONFIG), tmp_path=tmp_path)
    assert result.code == 3
    annotation = next(line for line in result.stdout.splitlines() if line.startswith("::error"))
    assert annotation.startswith(f"::error file={broken},line=4,title=syntax_error::")
    assert "syntax_error" in summary


def test_a_runtime_error_is_annotated_at_the_raising_line(
    cli: Any, tmp_path: Path, write_strategy: Any
) -> None:
    raising = write_strategy(strategy_with("raise ValueError('no edge here')"))
    result, _ = run_ci(cli, str(raising), "--config", str(CONFIG), "--json", tmp_path=tmp_path)
    assert result.code == 3
    assert json.loads(result.stdout)["error"]["type"] == "runtime_error"  # stdout: JSON only
    annotation = next(x for x in result.stderr.splitlines() if x.startswith("::error"))
    assert annotation == (
        f"::error file={raising},line=6,title=runtime_error::ValueError: no edge here"
    )


def test_plain_progress_lines_when_stderr_is_not_a_terminal(cli: Any, tmp_path: Path) -> None:
    result = cli("run", str(SMA), "--config", str(CONFIG))
    assert result.code == 0
    lines = [x for x in result.stderr.splitlines() if x.startswith("progress: ")]
    assert lines and lines[-1].endswith("bars (100%)")  # at most every 5 s, and the end
    assert "\r" not in result.stderr


def test_the_output_directory_and_the_report_in_a_browser(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("run", str(SMA), "--config", str(CONFIG), "--output-dir", str(out),
                 "--fail-if", "total_trades < 10")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "drawdown.png", "equity.csv", "equity.png", "report.html", "result.json", "trades.csv",
    ]
    status = json.loads((out / "result.json").read_text())
    trades = (out / "trades.csv").read_text().splitlines()
    assert len(trades) == status["result"]["metrics"]["total_trades"] + 1
    equity = (out / "equity.csv").read_text().splitlines()
    assert len(equity) == status["result"]["data"]["bars"] + 1
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for section in ("Metrics", "Price", "Equity", "Drawdown", "Monthly returns", "Trades",
                    "Integrity", "Provenance", "Gates"):
        assert f"<h2>{section}</h2>" in page
    browse(out / "report.html", tmp_path / "report.png")


# Chromium's own background services (updates, time, dictionaries): not the page's requests.
BROWSER_SERVICES = re.compile(r"https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gvt1\.com)/")


def browse(page: Path, screenshot: Path) -> None:
    """Open the page in headless Chromium, in a network namespace with no network at all. The
    page may make no request (Chromium's net log lists every URL it asked for), log nothing
    to its console (a failed load would), and its screenshot must not be blank."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the report test needs Debian's chromium (.ci/run installs it)")
    net_log = screenshot.with_suffix(".netlog.json")
    command = [
        "unshare", "--net", chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--no-first-run", "--disable-background-networking", "--enable-logging=stderr",
        "--v=0", f"--log-net-log={net_log}", "--window-size=1200,4000",
        f"--screenshot={screenshot}", page.as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(screenshot.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The page's own console (Chromium's internal pages log to it too, about themselves).
    console = [line for line in proc.stderr.splitlines()
               if ":CONSOLE" in line and page.as_uri() in line]
    assert console == []
    asked = set(re.findall(r'"url":"([^"]+)"', net_log.read_text()))
    requests = {url for url in asked if url.startswith(("http:", "https:", "ws:", "wss:"))}
    assert {url for url in requests if not BROWSER_SERVICES.match(url)} == set()
    from PIL import Image

    image = Image.open(screenshot).convert("L")
    low, high = image.getextrema()
    assert high - low > 100  # text and charts, not a blank page
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram)  # not one colour all over


def test_a_benchmark_from_flags_reaches_the_result_and_the_report(
    cli: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli("run", str(SMA), "--config", str(CONFIG), "--benchmark", "NVDA",
                 "--mode", "fast", "--output-dir", str(out), "--json")
    assert result.code == 0, result.stderr
    status = json.loads(result.stdout)
    metrics = status["result"]["metrics"]
    assert status["result"]["data"]["benchmark"]["symbol"] == "NVDA"
    assert all(metrics[name] is not None for name in ("alpha", "beta", "correlation"))
    page = (out / "report.html").read_text()
    line = f"against NVDA: alpha {metrics['alpha']:,.4f}, beta {metrics['beta']:,.4f}"
    assert line in page
    assert f"buy and hold: {metrics['buy_and_hold_return_pct']:,.4f} %" in page

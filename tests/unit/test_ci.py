"""Gates, GitHub's job summary and annotations, without a run (the CLI tests run them)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from backtest_sandbox.api.ci import annotate, check_gates, gates_fail, write_step_summary
from backtest_sandbox.domain.conditions import parse_condition
from backtest_sandbox.domain.errors import ErrorType, InvalidRequest
from backtest_sandbox.domain.models import JobStatus, RunError, RunOutcome

METRICS = {"sharpe_ratio": 0.3, "max_drawdown_pct": 12.0, "profit_factor": None}


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("sharpe_ratio < 0.5", "failed"),
        ("sharpe_ratio >= 0.5", "held"),
        ("max_drawdown_pct > 25", "held"),
        ("max_drawdown_pct == 12", "failed"),
        ("max_drawdown_pct != 12", "held"),
        ("profit_factor < 1", "unknown"),
    ],
)
def test_a_gate_fails_when_its_condition_is_met(text: str, status: str) -> None:
    (gate,) = check_gates([parse_condition(text, field="--fail-if")], METRICS)
    assert gate.status == status


def test_unknown_fails_only_when_strict() -> None:
    gates = check_gates([parse_condition("profit_factor < 1", field="--fail-if")], METRICS)
    assert not gates_fail(gates, strict=False) and gates_fail(gates, strict=True)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("sharpe", "'sharpe' is not METRIC OP NUMBER"),
        ("sharpe < 1", "'sharpe' is not a metric; known: bars, final_value"),
        ("sharpe_ratio < nan", "'nan' is not a finite number"),
        ("sharpe_ratio =< 1", "is not METRIC OP NUMBER"),
    ],
)
def test_a_malformed_gate_names_the_flag_and_the_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_condition(text, field="--fail-if")
    assert refused.value.field == "--fail-if" and rule in refused.value.rule


def test_the_summary_escapes_what_the_run_said(tmp_path: Path) -> None:
    error = RunError(type=ErrorType.RUNTIME_ERROR, message="x | <img src=x> `y`\nz")
    outcome = RunOutcome(status=JobStatus.FAILED, error=error)
    summary = tmp_path / "summary.md"
    write_step_summary(summary, Path("s.py"), outcome, [], "runtime_error")
    text = summary.read_text()
    assert "**runtime_error**: x \\| &lt;img src=x> 'y' z" in text


def test_an_annotation_escapes_its_message_and_file() -> None:
    error = RunError(
        type=ErrorType.RUNTIME_ERROR,
        message="bad\nline 100%",
        details={"traceback": 'File "strategy.py", line 3\nFile "strategy.py", line 9'},
    )
    out = io.StringIO()
    annotate(out, Path("dir,x/s:1.py"), RunOutcome(status=JobStatus.FAILED, error=error))
    assert out.getvalue() == (
        "::error file=dir%2Cx/s%3A1.py,line=9,title=runtime_error::bad%0Aline 100%25\n"
    )

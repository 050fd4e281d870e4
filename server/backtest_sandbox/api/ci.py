"""The command line in CI (docs/interface.md section 10): gates on metrics, the GitHub job
summary, and error annotations.

A gate `--fail-if 'METRIC OP NUMBER'` fails when the completed run meets its condition; a null
metric (undefined for this run) meets no condition and is reported `unknown`, which fails only
with `--strict`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from backtest_sandbox.domain.conditions import Condition
from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.metric_names import METRIC_MEANINGS
from backtest_sandbox.domain.models import JobStatus, RunOutcome

GateStatus = Literal["held", "failed", "unknown"]
_TRACEBACK_LINE = re.compile(r'File "strategy\.py", line (\d+)')


@dataclass(frozen=True)
class Gate:
    condition: Condition
    value: float | int | None
    status: GateStatus

    def as_json(self) -> dict[str, Any]:
        return {
            "gate": str(self.condition),
            "metric": self.condition.metric,
            "op": self.condition.op,
            "threshold": self.condition.threshold,
            "value": self.value,
            "status": self.status,
        }


def check_gates(
    conditions: Sequence[Condition], metrics: Mapping[str, float | int | None]
) -> list[Gate]:
    met = {"met": "failed", "not_met": "held", "unknown": "unknown"}
    return [
        Gate(c, metrics.get(c.metric), met[c.evaluate(metrics)])  # type: ignore[arg-type]
        for c in conditions
    ]


def gates_fail(gates: Sequence[Gate], *, strict: bool) -> bool:
    failing = {"failed", "unknown"} if strict else {"failed"}
    return any(gate.status in failing for gate in gates)


# -- GitHub --------------------------------------------------------------------------------


def write_step_summary(
    path: Path, strategy: Path, outcome: RunOutcome, gates: Sequence[Gate], verdict: str
) -> None:
    """Append the run's markdown summary to GitHub's `GITHUB_STEP_SUMMARY` file."""
    lines = [f"### Backtest of `{_md(strategy.name)}`: {verdict}", ""]
    if outcome.result is not None:
        data = outcome.result.data
        lines += [f"{data.bars} bars, {data.first} to {data.last}, data: {data.source}", ""]
    if gates:
        lines += ["| gate | value | result |", "|---|---|---|"]
        for gate in gates:
            shown = "null" if gate.value is None else f"{gate.value:.6g}"
            lines.append(f"| `{gate.condition}` | {shown} | {gate.status} |")
        lines.append("")
    if outcome.result is not None:
        lines += ["| metric | value |", "|---|---|"]
        for name, value in outcome.result.metrics.items():
            shown = "null" if value is None else f"{value:.6g}"
            lines.append(f"| {name} | {shown} |")
    elif outcome.error is not None:
        lines += [f"**{outcome.error.type.value}**: {_md(outcome.error.message)}"]
    with path.open("a", encoding="utf-8") as summary:
        summary.write("\n".join(lines) + "\n\n")


def annotate(stream: TextIO, strategy: Path, outcome: RunOutcome) -> None:
    """`::error file=...,line=...::` for a syntax or runtime error, pointing at the line of
    the strategy that GitHub then marks in the pull request's diff."""
    error = outcome.error
    if outcome.status is not JobStatus.FAILED or error is None:
        return
    if error.type is ErrorType.SYNTAX_ERROR:
        line = error.details.get("line")
    elif error.type is ErrorType.RUNTIME_ERROR:
        found = _TRACEBACK_LINE.findall(str(error.details.get("traceback", "")))
        line = int(found[-1]) if found else None
    else:
        return
    where = f"file={_property(str(strategy))}" + (f",line={line}" if line else "")
    stream.write(f"::error {where},title={error.type.value}::{_data(error.message)}\n")
    stream.flush()


def in_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def meaning(metric: str) -> str:
    return METRIC_MEANINGS.get(metric, "")


def _data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped as GitHub reads them."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _md(text: str) -> str:
    """Text from the run, inert in markdown: no HTML, no table breaks, one line."""
    escaped = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(escaped.replace("`", "'").split())

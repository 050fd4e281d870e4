"""Conditions on a run's metrics, `METRIC OP NUMBER`: the CLI's gates (`--fail-if`), and
the constraints of a parameter sweep.

Pure: parsing names the argument and the rule when a condition is malformed; evaluating says
whether it is met, or that it cannot be told (the metric is null: undefined for this run).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidRequest
from .metric_names import METRIC_MEANINGS

Op = Literal["<", "<=", ">", ">=", "==", "!="]
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_FORM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*")

Status = Literal["met", "not_met", "unknown"]


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def evaluate(self, metrics: Mapping[str, float | int | None]) -> Status:
        value = metrics.get(self.metric)
        if value is None:
            return "unknown"
        return "met" if OPERATORS[self.op](float(value), self.threshold) else "not_met"


def parse_condition(
    text: str, *, field: str, ops: tuple[str, ...] = tuple(OPERATORS)
) -> Condition:
    """`METRIC OP NUMBER`, e.g. `sharpe_ratio < 0.5`.

    Raises:
        InvalidRequest: not of that form, an unknown metric, an operator not in `ops`, or a
            number that is not finite; `field` names the argument.
    """
    found = _FORM.fullmatch(text)
    if found is None:
        rule = f"{text!r} is not METRIC OP NUMBER (OP one of {' '.join(ops)})"
        raise InvalidRequest(field, rule)
    metric, op, number = found.groups()
    if metric not in METRIC_MEANINGS:
        known = ", ".join(METRIC_MEANINGS)
        raise InvalidRequest(field, f"{metric!r} is not a metric; known: {known}")
    if op not in ops:
        raise InvalidRequest(field, f"operator {op!r} is not one of {' '.join(ops)}")
    try:
        threshold = float(number)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise InvalidRequest(field, f"{number!r} is not a finite number")
    return Condition(metric, op, threshold)

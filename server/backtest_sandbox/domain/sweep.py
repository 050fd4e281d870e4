"""A parameter sweep (docs/interface.md section 9): the grid, the target, the constraints and
the out-of-sample split, validated; and the ranking of the combinations' metrics.

Pure: no I/O. The job layer (jobs/sweeps.py) runs the combinations and calls `rank`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from .conditions import Condition, parse_condition
from .config import BacktestConfig
from .errors import InvalidRequest
from .metric_names import METRIC_MEANINGS

Direction = Literal["max", "min"]
CONSTRAINT_OPS = ("<", "<=", ">", ">=")
MAX_CONSTRAINTS = 20
_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
Scalar = int | float | str | bool


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: the grid over the base config, how combinations are ranked, and
    where the out-of-sample part starts."""

    grid: dict[str, list[Scalar]]
    target: str
    direction: Direction
    constraints: tuple[Condition, ...]
    oos_start: date | None

    @property
    def varying(self) -> list[str]:
        """The parameters with more than one value (the heatmap's axes when there are two)."""
        return [name for name, values in self.grid.items() if len(values) > 1]

    def combinations(self) -> list[dict[str, Scalar]]:
        """The cartesian product of the grid, in grid order (the last parameter varies
        fastest), as itertools.product gives it."""
        names = list(self.grid)
        return [dict(zip(names, values, strict=True)) for values in self.product()]

    def product(self) -> itertools.product[tuple[Scalar, ...]]:
        return itertools.product(*self.grid.values())

    def tuning_config(self, base: BacktestConfig, params: Mapping[str, Scalar]) -> BacktestConfig:
        """One combination's config: the base with its params, ending before oos_start."""
        update: dict[str, Any] = {"params": {**base.params, **params}}
        if self.oos_start is not None:
            update["end_date"] = self.oos_start - timedelta(days=1)
        return _revalidated(base, update)

    def oos_config(self, base: BacktestConfig, params: Mapping[str, Scalar]) -> BacktestConfig:
        """The winner's run on [oos_start, end_date]."""
        assert self.oos_start is not None
        return _revalidated(
            base, {"params": {**base.params, **params}, "start_date": self.oos_start}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid,
            "target": self.target,
            "direction": self.direction,
            "constraints": [str(c) for c in self.constraints],
            "oos_start": None if self.oos_start is None else self.oos_start.isoformat(),
        }


def _revalidated(base: BacktestConfig, update: dict[str, Any]) -> BacktestConfig:
    # model_validate, not model_copy: the combination's params and dates obey every rule too.
    return BacktestConfig.model_validate({**base.model_dump(), **update})


def parse_sweep(
    *,
    base: BacktestConfig,
    grid: Any,
    target: Any = "sharpe_ratio",
    direction: Any = "max",
    constraints: Any = (),
    oos_start: Any = None,
    max_combinations: int,
) -> SweepSpec:
    """Validate a sweep request against its base config.

    Raises:
        InvalidRequest: naming the argument (`grid.fast`, `constraints[1]`, ...) and the rule.
    """
    checked_grid = _check_grid(grid, max_combinations)
    if not isinstance(target, str) or target not in METRIC_MEANINGS:
        raise InvalidRequest(
            "target", f"must be a metric name, one of: {', '.join(METRIC_MEANINGS)}"
        )
    if direction not in ("max", "min"):
        raise InvalidRequest("direction", "must be 'max' or 'min'")
    if isinstance(constraints, str) or not isinstance(constraints, list | tuple):
        raise InvalidRequest("constraints", "must be a list of 'METRIC OP NUMBER' strings")
    if len(constraints) > MAX_CONSTRAINTS:
        raise InvalidRequest("constraints", f"at most {MAX_CONSTRAINTS} constraints")
    parsed = []
    for index, text in enumerate(constraints):
        field = f"constraints[{index}]"
        if not isinstance(text, str):
            raise InvalidRequest(field, "must be a string 'METRIC OP NUMBER'")
        parsed.append(parse_condition(text, field=field, ops=CONSTRAINT_OPS))
    spec = SweepSpec(
        grid=checked_grid,
        target=target,
        direction=direction,
        constraints=tuple(parsed),
        oos_start=_check_oos_start(oos_start, base),
    )
    for params in spec.combinations():  # every combination's params obey the config's rules
        try:
            spec.tuning_config(base, params)
        except ValueError as e:  # pydantic's ValidationError is one
            raise InvalidRequest(
                "grid", f"combination {params} is not a valid config: {e}"
            ) from None
    return spec


def _check_grid(grid: Any, max_combinations: int) -> dict[str, list[Scalar]]:
    if not isinstance(grid, dict) or not grid:
        raise InvalidRequest("grid", "must be a non-empty object {param: [values]}")
    checked: dict[str, list[Scalar]] = {}
    for name, values in grid.items():
        field = f"grid.{name}"
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise InvalidRequest(field, "a parameter name is a letter, then letters, digits or _")
        if not isinstance(values, list) or not values:
            raise InvalidRequest(field, "must be a non-empty list of values")
        for value in values:
            if not isinstance(value, int | float | str | bool) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise InvalidRequest(field, f"{value!r} is not a number, string or boolean")
        encoded = [json.dumps(value) for value in values]
        if len(set(encoded)) != len(encoded):
            raise InvalidRequest(field, "must not repeat a value")
        checked[name] = list(values)
    total = math.prod(len(values) for values in checked.values())
    if total > max_combinations:
        raise InvalidRequest(
            "grid", f"has {total} combinations; this server runs at most {max_combinations}"
        )
    return checked


def _check_oos_start(value: Any, base: BacktestConfig) -> date | None:
    if value is None:
        return None
    try:
        start = value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError:
        raise InvalidRequest("oos_start", "must be an ISO date (YYYY-MM-DD) or null") from None
    if not base.start_date + timedelta(days=1) < start <= base.end_date:
        raise InvalidRequest(
            "oos_start",
            "must leave at least two days to tune on and lie within the config's range: "
            f"{base.start_date + timedelta(days=2)} <= oos_start <= {base.end_date}",
        )
    return start


# -- ranking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """One completed combination, placed."""

    rank: int
    index: int  # its place in the grid order
    params: dict[str, Scalar]
    metrics: dict[str, Any]
    constraints_passed: bool


def rank(
    spec: SweepSpec, completed: Sequence[tuple[int, dict[str, Scalar], Mapping[str, Any]]]
) -> list[Ranked]:
    """The completed combinations (grid index, params, metrics), best first.

    Those that pass every constraint come first; within each group the target decides, in the
    sweep's direction, a null target last; ties keep grid order. A constraint whose metric is
    null (undefined for that run) is not passed.
    """

    def passes(metrics: Mapping[str, Any]) -> bool:
        return all(c.evaluate(metrics) == "met" for c in spec.constraints)

    def key(
        item: tuple[int, dict[str, Scalar], Mapping[str, Any]],
    ) -> tuple[bool, bool, float, int]:
        index, _, metrics = item
        value = metrics.get(spec.target)
        score = 0.0 if value is None else float(value)
        missing = value is None
        return (not passes(metrics), missing, -score if spec.direction == "max" else score, index)

    ordered = sorted(completed, key=key)
    return [
        Ranked(
            rank=place,
            index=index,
            params=dict(params),
            metrics=dict(metrics),
            constraints_passed=passes(metrics),
        )
        for place, (index, params, metrics) in enumerate(ordered, start=1)
    ]


def heatmap_grid(
    spec: SweepSpec, ranked: Sequence[Ranked]
) -> tuple[str, list[Scalar], str, list[Scalar], list[list[float | None]]] | None:
    """With exactly two varying parameters: (x name, x values, y name, y values, the target
    per cell as rows[y][x], None where the run failed or the target is undefined)."""
    if len(spec.varying) != 2:
        return None
    x_name, y_name = spec.varying
    xs, ys = spec.grid[x_name], spec.grid[y_name]
    cells: list[list[float | None]] = [[None] * len(xs) for _ in ys]
    for entry in ranked:
        value = entry.metrics.get(spec.target)
        column = _position(xs, entry.params[x_name])
        row = _position(ys, entry.params[y_name])
        cells[row][column] = None if value is None else float(value)
    return x_name, xs, y_name, ys, cells


def _position(values: list[Scalar], value: Scalar) -> int:
    encoded = json.dumps(value)
    return next(i for i, candidate in enumerate(values) if json.dumps(candidate) == encoded)

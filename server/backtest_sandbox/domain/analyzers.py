"""Backtrader's built-in analyzers a config may add (`config.analyzers`), with the params each
takes, as Backtrader 1.9.78.123 (the runner image's) defines them.

The host checks a config against this table before anything runs, so that a misspelt name
or param is a one-line `invalid_request`, not a failed run. tests/unit/test_config.py checks
the table against Backtrader's own classes. Left out of each: `data` (a feed object, not JSON)
and the private params (`_doprenext`, `_pfheaders`).
"""

from __future__ import annotations

from typing import Any

MAX_ANALYZERS = 20  # in one config
MAX_ANALYZER_PARAMS = 16  # params of one

# The TimeFrame names a `timeframe` param takes (bt.TimeFrame.Names, without the empty one).
TIMEFRAMES = (
    "Ticks", "MicroSeconds", "Seconds", "Minutes", "Days", "Weeks", "Months", "Years",
    "NoTimeFrame",
)  # fmt: skip

_PERIOD = ("timeframe", "compression")
_SHARPE = (
    *_PERIOD, "riskfreerate", "factor", "convertrate", "annualize", "stddev_sample",
    "daysfactor", "legacyannual", "fund",
)  # fmt: skip
_VWR = (*_PERIOD, "tann", "tau", "sdev_max", "fund")

BUILTIN_ANALYZERS: dict[str, tuple[str, ...]] = {
    "AnnualReturn": (),
    "Calmar": (*_PERIOD, "period", "fund"),
    "DrawDown": ("fund",),
    "GrossLeverage": ("fund",),
    "LogReturnsRolling": (*_PERIOD, "firstopen", "fund"),
    "PeriodStats": (*_PERIOD, "zeroispos", "fund"),
    "PositionsValue": ("headers", "cash"),
    "PyFolio": _PERIOD,
    "Returns": (*_PERIOD, "tann", "fund"),
    "SQN": (),
    "SharpeRatio": _SHARPE,
    "SharpeRatio_A": _SHARPE,
    "TimeDrawDown": (*_PERIOD, "fund"),
    "TimeReturn": (*_PERIOD, "firstopen", "fund"),
    "TradeAnalyzer": (),
    "Transactions": ("headers",),
    "VWR": _VWR,
    "VariabilityWeightedReturn": _VWR,
}


def check_params(name: str, params: dict[str, Any]) -> None:
    """`params` are ones `name` takes, each a value the harness can hand Backtrader.

    Raises:
        ValueError: the first param that is not, naming it and the rule.
    """
    known = BUILTIN_ANALYZERS[name]
    if len(params) > MAX_ANALYZER_PARAMS:
        raise ValueError(f"params: at most {MAX_ANALYZER_PARAMS}")
    for key, value in params.items():
        if key not in known:
            takes = ", ".join(known) if known else "none"
            raise ValueError(f"params.{key}: {name} has no such param (it takes: {takes})")
        if key == "timeframe":
            if value is not None and value not in TIMEFRAMES:
                raise ValueError(f"params.timeframe: must be one of {', '.join(TIMEFRAMES)}")
        elif not _is_scalar(value):
            raise ValueError(f"params.{key}: must be a boolean, a finite number or null")


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    return isinstance(value, float) and value == value and abs(value) != float("inf")

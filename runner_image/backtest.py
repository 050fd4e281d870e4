"""What the harness and the referee share: the Cerebro the config describes, and the
`completed` result read back from a finished run (PROTOCOL.md). One definition, so that a
strategy's claim and the referee's numbers can only differ by what happened in the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import backtrader as bt

import analyses
import failure
import recorder

PROTOCOL = 1
RECORDER_NAME = "_sandbox_recorder"


def build_cerebro(
    broker: dict[str, Any], feeds: Sequence[tuple[str | None, Any]], **options: Any
) -> Any:
    """Cerebro with the feeds and the broker set as PROTOCOL.md says, each with Backtrader's
    own call. The sizer comes later (`add_sizer`): it may be a class of the strategy file.

    `feeds` are (name, feed) in the run's order: feed 0 is the run's symbol, and each feed's
    `_name` is its name (None: Backtrader's own), for `getdatabyname`. `options` go to
    Cerebro itself (a verified run's strategy side: no preload, no runonce).
    """
    # stdstats=False: the default observers cost time and feed nothing we report.
    # tradehistory=True: a closed trade's size and exit price come from its fills.
    options.setdefault("cheat_on_open", bool(broker.get("cheat_on_open", False)))
    cerebro = bt.Cerebro(stdstats=False, tradehistory=True, **options)
    for name, feed in feeds:
        cerebro.adddata(feed, name=name)
    cerebro.broker.setcash(float(broker["initial_capital"]))
    cerebro.broker.setcommission(**_commission(broker))
    cerebro.broker.set_slippage_perc(float(broker["slippage"]))
    if broker.get("coc"):
        cerebro.broker.set_coc(True)
    return cerebro


def _commission(broker: dict[str, Any]) -> dict[str, Any]:
    """setcommission's arguments for the spec's commission scheme (a spec without one is a
    percentage of traded value, as before)."""
    scheme = broker.get("commission_type", "percentage")
    arguments: dict[str, Any] = {
        "commission": float(broker["commission"]),
        "leverage": float(broker.get("leverage", 1.0)),
    }
    if scheme == "per_contract":  # an amount per unit, on a stock-like asset
        arguments.update(commtype=bt.CommInfoBase.COMM_FIXED, stocklike=True)
    elif scheme == "futures":  # an amount per contract; margin and multiplier, not cash
        arguments.update(
            commtype=bt.CommInfoBase.COMM_FIXED,
            margin=float(broker["margin"]),
            mult=float(broker["mult"]),
        )
    elif scheme != "percentage":
        raise ValueError(f"unknown commission_type {scheme!r}")
    return arguments


BUILTIN_SIZERS = {"fixed": None, "percent": "PercentSizer", "all_in": "AllInSizer"}


class SizerError(Exception):
    """The config names a sizer the strategy file does not define (a runtime_error)."""


def add_sizer(cerebro: Any, broker: dict[str, Any], module: Any = None) -> None:
    """The config's sizer: FixedSize of `stake` units, a built-in by name, or a Sizer class of
    the strategy's `module` (resolved in the strategy process, after its code loaded).

    Raises:
        SizerError: the named class is not a backtrader.Sizer subclass of the strategy file.
    """
    name = broker.get("sizer", "fixed")
    params = dict(broker.get("sizer_params") or {})
    if name == "fixed":
        cerebro.addsizer(bt.sizers.FixedSize, stake=float(broker["stake"]))
        return
    if name in BUILTIN_SIZERS:
        cerebro.addsizer(getattr(bt.sizers, BUILTIN_SIZERS[name]), **params)
        return
    found = getattr(module, name, None) if module is not None else None
    if not (isinstance(found, type) and issubclass(found, bt.Sizer)):
        raise SizerError(
            f"config.sizer names {name!r}, which the strategy file does not define as a "
            "backtrader.Sizer subclass; define it there, or use fixed, percent or all_in"
        )
    cerebro.addsizer(found, **params)


def add_analyzers(cerebro: Any, specs: Sequence[dict[str, Any]]) -> None:
    """The config's built-in analyzers (the host checked names and params against its table),
    each as `cerebro.addanalyzer(cls, _name=name, **params)`, a `timeframe` by its name.

    AnnualReturn reads the Broker observer (`strategy.stats.broker`), which Cerebro's default
    observers include and ours leave out (stdstats=False): it gets that observer, as at home.
    """
    for spec in specs:
        params = dict(spec.get("params") or {})
        if isinstance(params.get("timeframe"), str):
            params["timeframe"] = getattr(bt.TimeFrame, params["timeframe"])
        cerebro.addanalyzer(getattr(bt.analyzers, spec["name"]), _name=spec["name"], **params)
    if any(spec["name"] == "AnnualReturn" for spec in specs):
        cerebro.addobserver(bt.observers.Broker)


def add_recorder(cerebro: Any, progress: Any) -> None:
    cerebro.addanalyzer(recorder.Recorder, _name=RECORDER_NAME, progress=progress)


def completed_result(strategy: Any) -> dict[str, Any]:
    """The `completed` result object from the recorder and the broker, and the analyzers'
    results (none in the referee, which adds only the recorder)."""
    record: recorder.Recorder = strategy.analyzers.getbyname(RECORDER_NAME)
    timestamps = map(recorder.iso_timestamp, record.datetimes)
    result = {
        "protocol": PROTOCOL,
        "outcome": "completed",
        "backtrader_version": bt.__version__,
        "bars": len(record.values),
        "final_value": float(strategy.broker.getvalue()),
        "final_cash": float(strategy.broker.getcash()),
        "bars_in_market": record.bars_in_market,
        "equity_curve": [
            [stamp, float(value)] for stamp, value in zip(timestamps, record.values, strict=True)
        ],
        "trades": record.trades,
        "open_trades": record.open_trades,
        "orders": record.order_log(),
        "orders_total": record.orders_total,
        "open_positions": record.open_positions(),
    }
    # Last: a get_analysis of the strategy's own is user code, run after the figures are read.
    result["analyzers"], result["analyzer_errors"] = analyses.collect(strategy, RECORDER_NAME)
    return result


def encode_result(result: dict[str, Any]) -> bytes:
    """The result as compact JSON. A non-finite number cannot be reported (the protocol has
    no NaN, Infinity or null in a completed result): it becomes a runtime_error naming where.
    """
    try:
        return json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        where = _non_finite_path(result, "result") or "result"
        message = f"the backtest produced a non-finite number ({where}), which cannot be reported"
        error = failure.plain_error("ValueError", message)
        return json.dumps(failure.error_result(bt.__version__, error), allow_nan=False).encode()


def _non_finite_path(value: Any, path: str) -> str | None:
    """Where in `value` the first NaN or infinity is, as `result.trades[0].pnl`."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for sub, item in items if (found := _non_finite_path(item, sub))), None)

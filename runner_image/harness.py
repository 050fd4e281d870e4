"""The sandbox harness: runs one untrusted Backtrader strategy and writes its result.

Runs as `python3 -I /opt/runner/harness.py [--job-dir /job] [--out-dir /out]` inside the
runner container and implements runner_image/PROTOCOL.md, version 1. It imports nothing from
the host's package. It prints nothing: stdout and stderr belong to the strategy.

Exit status: 0 once result.json is written (`completed` or `runtime_error`); anything else is
a fault of the harness or of the host's input, left to crash with a traceback on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Any, NoReturn

# -I (isolated mode) leaves the script's own directory off sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# -I also ignores PYTHONDONTWRITEBYTECODE; never try to write __pycache__ next to the harness.
sys.dont_write_bytecode = True

import compat  # noqa: E402

compat.apply()  # before backtrader is imported (see compat.py)

import backtrader as bt  # noqa: E402

import datafeed  # noqa: E402
import discovery  # noqa: E402
import failure  # noqa: E402
import recorder  # noqa: E402

PROTOCOL = 1
SPEC_POLL_SECONDS = 0.005
DEFAULT_FILENAME = "strategy.py"
RECORDER_NAME = "_sandbox_recorder"

# Harness code that runs inside cerebro.run. An exception with one of these on its stack is
# the harness's own fault (it never calls back into user code): a crash, not a runtime_error.
_IN_RUN_FILES = frozenset({recorder.__file__, datafeed.__file__})

# The real streams, taken before user code can replace sys.stdout/sys.stderr.
_STREAMS = (sys.stdout, sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Wait for the job, run it, write result.json.

    Raises:
        Exception: a harness fault or a host/harness disagreement (bad spec, bad data.csv,
            a missing out file); the process then exits non-zero and the host says `crashed`.
    """
    args = _parse_args(argv)
    datafeed.warm_up()
    spec = wait_for_spec(os.path.join(args.job_dir, "spec.json"))
    result = run_job(spec, args.job_dir, args.out_dir)
    write_result(os.path.join(args.out_dir, "result.json"), result)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one backtest job (runner_image/PROTOCOL.md).")
    parser.add_argument("--job-dir", default="/job", help="holds data.csv, then spec.json")
    parser.add_argument("--out-dir", default="/out", help="holds result.json and progress")
    return parser.parse_args(argv)


def wait_for_spec(path: str) -> dict[str, Any]:
    """The job spec, once it exists. A warm-pool container waits here, imports done.

    The host renames spec.json into place, so once it exists it is complete.
    """
    while True:
        try:
            with open(path, "rb") as stream:
                spec: dict[str, Any] = json.loads(stream.read())
                return spec
        except FileNotFoundError:
            time.sleep(SPEC_POLL_SECONDS)


def run_job(spec: dict[str, Any], job_dir: str, out_dir: str) -> dict[str, Any]:
    """Load the data, run the strategy, and return the result object.

    Raises:
        Exception: see main(); never for what the user's code does.
    """
    if spec.get("protocol") != PROTOCOL:
        raise ValueError(f"unsupported protocol {spec.get('protocol')!r}, expected {PROTOCOL}")
    data = spec["data"]
    frame = datafeed.read_bars(os.path.join(job_dir, data["path"]))  # an absolute path wins
    cerebro = build_cerebro(spec["broker"], datafeed.make_feed(frame, data["timeframe"]))
    progress = recorder.Progress(_open_existing(os.path.join(out_dir, "progress")), len(frame))
    filename = spec.get("filename") or DEFAULT_FILENAME
    try:
        strategy = run_strategy(cerebro, spec["code"], filename, spec["params"], progress)
    except discovery.StrategyDiscoveryError as exc:
        result = failure.error_result(
            bt.__version__, failure.plain_error(type(exc).__name__, str(exc))
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: whatever the user raised
        if _raised_by_harness(exc):
            raise
        result = failure.error_result(bt.__version__, failure.error_info(exc, filename))
    else:
        result = completed_result(strategy) if strategy is not None else _skipped_result()
    progress.finish()
    return result


def _skipped_result() -> dict[str, Any]:
    # Cerebro drops a strategy whose __init__ raised StrategySkipError, and runs nothing.
    message = "the strategy raised StrategySkipError while being constructed, so nothing ran"
    return failure.error_result(bt.__version__, failure.plain_error("StrategySkipError", message))


def build_cerebro(broker: dict[str, Any], feed: Any) -> Any:
    """Cerebro with the feed, the broker and the default sizer set as PROTOCOL.md says."""
    # stdstats=False: the default observers cost time and feed nothing we report.
    # tradehistory=True: a closed trade's size and exit price come from its fills.
    cerebro = bt.Cerebro(stdstats=False, tradehistory=True)
    cerebro.adddata(feed)
    cerebro.broker.setcash(float(broker["initial_capital"]))
    cerebro.broker.setcommission(commission=float(broker["commission"]))
    cerebro.broker.set_slippage_perc(float(broker["slippage"]))
    cerebro.addsizer(bt.sizers.FixedSize, stake=float(broker["stake"]))
    return cerebro


def run_strategy(
    cerebro: Any, code: str, filename: str, params: dict[str, Any], progress: recorder.Progress
) -> Any:
    """Exec the code, pick its strategy, run it; the strategy instance, or None if it skipped.

    Raises:
        discovery.StrategyDiscoveryError: no usable strategy.
        BaseException: whatever the user's code raises, defining, constructing or running.
    """
    module = discovery.load_module(code, filename)
    cerebro.addstrategy(discovery.find_strategy(module), **params)
    cerebro.addanalyzer(recorder.Recorder, _name=RECORDER_NAME, progress=progress)
    strategies = cerebro.run()
    return strategies[0] if strategies else None


def completed_result(strategy: Any) -> dict[str, Any]:
    """The `completed` result object from the recorder and the broker."""
    record: recorder.Recorder = strategy.analyzers.getbyname(RECORDER_NAME)
    timestamps = map(recorder.iso_timestamp, record.datetimes)
    return {
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
    }


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


def write_result(path: str, result: dict[str, Any]) -> None:
    """Overwrite the result file the host created (the sandbox cannot create files in /out)."""
    data = encode_result(result)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC), "wb") as stream:
        stream.write(data)


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


def _open_existing(path: str) -> int:
    # No O_CREAT: the host pre-creates the out files, and /out itself is not writable.
    return os.open(path, os.O_WRONLY | os.O_TRUNC)


def _raised_by_harness(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _IN_RUN_FILES:
            return True
        tb = tb.tb_next
    return False


def _exit_now() -> NoReturn:
    """Exit 0 at once, once the result is written.

    os._exit: nothing the user's code left behind (a non-daemon thread, an atexit handler)
    can hold the process or change its exit status now. Only the buffered logs are flushed.
    """
    for stream in _STREAMS:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or None
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    _exit_now()

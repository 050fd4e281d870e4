"""The sandbox harness: runs one untrusted Backtrader strategy and writes its result.

Runs as `python3 -I /opt/runner/harness.py [--job-dir /job] [--out-dir /out]` inside the
runner container and implements runner_image/PROTOCOL.md, version 1. It imports nothing from
the host's package. It prints nothing: stdout and stderr belong to the strategy. Handed a
session instead of a job, it runs the session's jobs, each in a process forked from it
(session.py).

Exit status: 0 once result.json is written (`completed` or `runtime_error`); anything else is
a fault of the harness or of the host's input, left to crash with a traceback on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from typing import Any, NoReturn

# -I (isolated mode) leaves the script's own directory off sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# -I also ignores PYTHONDONTWRITEBYTECODE; never try to write __pycache__ next to the harness.
sys.dont_write_bytecode = True

import compat  # noqa: E402

compat.apply()  # before backtrader is imported (see compat.py)

import backtrader as bt  # noqa: E402

import analyses  # noqa: E402
import backtest  # noqa: E402
import datafeed  # noqa: E402
import discovery  # noqa: E402
import failure  # noqa: E402
import friendly  # noqa: E402
import pipefeed  # noqa: E402
import recorder  # noqa: E402
import session  # noqa: E402
import verified  # noqa: E402

PROTOCOL = backtest.PROTOCOL
friendly.install_standins()  # `import matplotlib.pyplot` and `cerebro.plot()` draw nothing
DEFAULT_FILENAME = "strategy.py"

# Harness code that runs inside cerebro.run. An exception with one of these on its stack is
# the harness's own fault (it never calls back into user code): a crash, not a runtime_error.
# (verified.py is not one: its hooks call the broker with the user's arguments.)
_IN_RUN_FILES = frozenset({recorder.__file__, datafeed.__file__, pipefeed.__file__})

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
    # The imports' objects live as long as the process: out of the collector's sight, its full
    # collections during the run walk only what the run made (and a session's forked runs
    # leave those pages shared).
    gc.collect()
    gc.freeze()
    spec = session.wait_for_spec(os.path.join(args.job_dir, "spec.json"))  # a warm one waits
    assert spec is not None  # no timeout: it waits as long as it takes
    if "session" in spec:  # several jobs of one sweep, each in a process forked from this one
        session.serve(spec["session"], args.job_dir, args.out_dir, run_and_write)
    else:
        run_and_write(spec, args.job_dir, args.out_dir)


def run_and_write(spec: dict[str, Any], job_dir: str, out_dir: str) -> None:
    """Run one job and write its result.json (raises as run_job does)."""
    write_result(os.path.join(out_dir, "result.json"), run_job(spec, job_dir, out_dir))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one backtest job (runner_image/PROTOCOL.md).")
    parser.add_argument("--job-dir", default="/job", help="holds data.csv, then spec.json")
    parser.add_argument("--out-dir", default="/out", help="holds result.json and progress")
    return parser.parse_args(argv)


def run_job(spec: dict[str, Any], job_dir: str, out_dir: str) -> dict[str, Any]:
    """Set the run up (fast: data.csv; verified: the bar pipe), run the strategy, and return
    the result object.

    Raises:
        Exception: see main(); never for what the user's code does.
    """
    if spec.get("protocol") != PROTOCOL:
        raise ValueError(f"unsupported protocol {spec.get('protocol')!r}, expected {PROTOCOL}")
    data = spec["data"]
    # A spec without `feeds` has one feed, data.path, that Backtrader names itself.
    feeds = data.get("feeds") or [{"name": None, "path": data.get("path")}]
    names = [feed["name"] for feed in feeds]
    is_verified = spec.get("mode", "fast") == "verified"
    if is_verified:
        events = verified.EventLog()
        channel = pipefeed.Channel(*verified.open_pipe(spec["pipe"]), spin=spec.get("spin", True))
        leader = pipefeed.make_feed(
            channel, events.commit, data["timeframe"], data["bars"], feeds=len(feeds)
        )
        made = [leader, *(pipefeed.step_feed(leader, i) for i in range(1, len(feeds)))]
        # One step per request: Cerebro must neither preload the pipe nor run at once.
        cerebro = backtest.build_cerebro(
            spec["broker"], list(zip(names, made, strict=True)), preload=False, runonce=False
        )
        verified.guard(cerebro, events)
    else:
        paths = [os.path.join(job_dir, feed["path"]) for feed in feeds]  # absolute paths win
        made = [datafeed.make_feed(datafeed.read_bars(path), data["timeframe"]) for path in paths]
        cerebro = backtest.build_cerebro(spec["broker"], list(zip(names, made, strict=True)))
    progress = recorder.Progress(_open_existing(os.path.join(out_dir, "progress")), data["bars"])
    filename = spec.get("filename") or DEFAULT_FILENAME
    load = friendly.CerebroWatch()
    analyzers = spec.get("analyzers") or []
    try:
        strategy = run_strategy(
            cerebro,
            spec["code"],
            filename,
            spec["params"],
            spec["broker"],
            progress,
            load,
            analyzers,
        )
    except (discovery.StrategyDiscoveryError, backtest.SizerError) as exc:
        result = failure.error_result(
            bt.__version__, failure.plain_error(type(exc).__name__, str(exc))
        )
    except verified.UnsupportedFeature as exc:
        result = failure.unsupported_result(bt.__version__, exc.feature, str(exc))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: whatever the user raised
        if _raised_by_harness(exc):
            raise
        error = failure.error_info(exc, filename)
        advice = friendly.hint(exc, load) or analyses.failure_hint(exc, analyzers)
        if is_verified and verified.is_lookahead(exc):
            advice = verified.LOOKAHEAD_HINT
        if advice is not None:
            error["message"] = f"{error['message']}: {advice}"
        result = failure.error_result(bt.__version__, error)
    else:
        result = _skipped_result() if strategy is None else backtest.completed_result(strategy)
    progress.finish()
    return result


def _skipped_result() -> dict[str, Any]:
    # Cerebro drops a strategy whose __init__ raised StrategySkipError, and runs nothing.
    message = "the strategy raised StrategySkipError while being constructed, so nothing ran"
    return failure.error_result(bt.__version__, failure.plain_error("StrategySkipError", message))


def run_strategy(
    cerebro: Any,
    code: str,
    filename: str,
    params: dict[str, Any],
    broker: dict[str, Any],
    progress: recorder.Progress,
    load: friendly.CerebroWatch,
    analyzers: list[dict[str, Any]] | None = None,
) -> Any:
    """Exec the code (under `load`, which sees what its module-level code does), pick its
    strategy, run it with the config's `analyzers` (spec objects {name, params}); the strategy
    instance, or None if it skipped.

    Raises:
        discovery.StrategyDiscoveryError: no usable strategy.
        verified.UnsupportedFeature: a verified run cannot honour what the strategy asks for.
        BaseException: whatever the user's code raises, defining, constructing or running.
    """
    with load:
        module = discovery.load_module(code, filename)
    strategy_class = discovery.find_strategy(module)
    backtest.add_sizer(cerebro, broker, module)
    if isinstance(cerebro.datas[0], pipefeed.PipeFeed):
        verified.check_strategy(strategy_class, cerebro)
    cerebro.addstrategy(strategy_class, **params)
    backtest.add_analyzers(cerebro, analyzers or [])
    backtest.add_recorder(cerebro, progress)
    strategies = cerebro.run()
    return strategies[0] if strategies else None


def write_result(path: str, result: dict[str, Any]) -> None:
    """Overwrite the result file the host created (the sandbox cannot create files in /out)."""
    data = backtest.encode_result(result)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC), "wb") as stream:
        stream.write(data)


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

"""The `backtest-sandbox` command (docs/interface.md section 5).

Exit codes of `run`: 0 completed; 2 invalid usage or config; 3 the run failed (any error type
but sandbox_error); 4 sandbox_error; 5 completed, but a --fail-if gate failed; 128 + N when
signal N (SIGTERM, SIGINT, SIGHUP) cancelled the run, whose container was then killed and
removed.

Imports are lazy past this module's own: `--help`, `--version` and a syntax-error verdict load
neither pandas, numpy, docker nor mcp (each command imports what it needs when it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from backtest_sandbox import __version__
from backtest_sandbox.domain.code import check_code, check_syntax, new_backtest_id
from backtest_sandbox.domain.conditions import parse_condition
from backtest_sandbox.domain.config import BacktestConfig, config_rules, parse_config
from backtest_sandbox.domain.errors import (
    BacktestSandboxError,
    DataError,
    ErrorType,
    InvalidRequest,
)
from backtest_sandbox.domain.models import JobStatus, RunOutcome
from backtest_sandbox.domain.settings import Settings

from .ci import (
    Gate,
    annotate,
    check_gates,
    gates_fail,
    in_github_actions,
    write_step_summary,
)
from .progress import ProgressBar

EXIT_COMPLETED = 0
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_SANDBOX_ERROR = 4
EXIT_GATES_FAILED = 5  # completed, but a --fail-if gate was met (or unknown, with --strict)
# A run cancelled by one of these exits 128 + its number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).
CANCELLING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

def _symbols(text: str) -> list[str]:
    """`NVDA,YHOO` as a list (the config checks each symbol)."""
    return [part.strip() for part in text.split(",") if part.strip()]


# Config fields settable by flag: flag name -> (config field, type for argparse).
CONFIG_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--symbol": ("symbol", str),
    "--timeframe": ("timeframe", str),
    "--start": ("start_date", str),
    "--end": ("end_date", str),
    "--initial-capital": ("initial_capital", float),
    "--commission": ("commission", float),
    "--slippage": ("slippage", float),
    "--position-size": ("position_size", float),
    "--contract-size": ("contract_size", float),
    "--timeout": ("timeout_seconds", float),
    "--memory-mb": ("memory_mb", int),
    "--data-source": ("data_source", str),
    "--mode": ("mode", str),
    "--extra-symbols": ("extra_symbols", _symbols),
    "--benchmark": ("benchmark", str),
}

# Settings that docs/interface.md section 6 names, and the tenancy ones, each also a flag (the flag
# wins over the env).
SETTING_FLAGS: dict[str, tuple[str, type]] = {
    "--data-dir": ("data_dir", Path),
    "--state-dir": ("state_dir", Path),
    "--max-workers": ("max_workers", int),
    "--runtime": ("runtime", str),
    "--pool-size": ("pool_size", int),
    "--api-tokens": ("api_tokens", str),
    "--api-tokens-file": ("api_tokens_file", Path),
    "--tenant-max-running": ("tenant_max_running", int),
    "--tenant-max-queued": ("tenant_max_queued", int),
    "--allowed-hosts": ("allowed_hosts", str),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backtest-sandbox",
        description="Run untrusted Backtrader strategies in hardened single-use containers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for flag, (name, kind) in SETTING_FLAGS.items():
        parser.add_argument(flag, dest=f"setting_{name}", type=kind, default=None,
                            help=f"overrides BACKTEST_{name.upper()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one backtest in the sandbox and wait")
    run.add_argument("strategy", type=Path, help="the strategy's Python source file")
    run.add_argument("--config", type=Path, help="a JSON file with the config (section 3)")
    rules = config_rules()
    for flag, (name, convert) in CONFIG_FLAGS.items():
        run.add_argument(flag, dest=f"config_{name}", type=convert, default=None,
                         help=f"config.{name}: {rules[name]}".replace("%", "%%"))
    run.add_argument("--params", help="the strategy's params, as a JSON object")
    run.add_argument("--json", action="store_true",
                     help="print the final status object on stdout, and nothing else there")
    run.add_argument("--fail-if", action="append", default=[], metavar="'METRIC OP NUMBER'",
                     help="a gate: exit 5 when the completed run meets it (OP: < <= > >= == "
                          "!=); repeatable")
    run.add_argument("--strict", action="store_true",
                     help="a gate whose metric is null (undefined for this run) fails too")
    run.add_argument("--output-dir", type=Path, metavar="DIR",
                     help="write result.json, trades.csv, equity.csv, equity.png, "
                          "drawdown.png and report.html there")

    sweep = commands.add_parser(
        "sweep", help="run a strategy over a grid of parameters and rank the combinations"
    )
    sweep.add_argument("strategy", type=Path, help="the strategy's Python source file")
    sweep.add_argument("--config", type=Path, help="a JSON file with the base config")
    for flag, (name, convert) in CONFIG_FLAGS.items():
        sweep.add_argument(flag, dest=f"config_{name}", type=convert, default=None,
                           help=f"config.{name}")
    sweep.add_argument("--params", help="the strategy's base params, as a JSON object")
    sweep.add_argument("--grid", required=True, metavar="JSON",
                       help='{"param": [values], ...}: every combination runs once')
    sweep.add_argument("--target", default="sharpe_ratio", help="the metric to rank by")
    sweep.add_argument("--direction", choices=["max", "min"], default="max")
    sweep.add_argument("--constraint", action="append", default=[], metavar="'METRIC OP NUMBER'",
                       help="combinations failing it rank last (OP: < <= > >=); repeatable")
    sweep.add_argument("--oos-start", metavar="DATE",
                       help="tune before DATE, then run the best from DATE to the end")
    sweep.add_argument("--json", action="store_true",
                       help="print get_sweep_status's object on stdout, and nothing else there")
    sweep.add_argument("--output-dir", type=Path, metavar="DIR",
                       help="write sweep.json (and heatmap.png for a two-parameter grid) there")

    serve = commands.add_parser("serve", help="start the MCP server")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                       help="stdio (one local client) or streamable HTTP (tenants by token)")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: the address to listen on")
    serve.add_argument("--port", type=int, default=8765, help="HTTP: the port")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="HTTP without BACKTEST_API_TOKENS, on a loopback --host only: one local tenant",
    )

    worker = commands.add_parser(
        "worker",
        help="run backtests on this Docker host for Temporal (BACKTEST_BACKEND=temporal)",
    )
    worker.add_argument("--slots", type=int, default=None,
                        help="runs at once on this host (default: BACKTEST_MAX_WORKERS)")

    build = commands.add_parser("build-image", help="build the runner image (air-gapped)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is current")

    commands.add_parser("doctor", help="check the daemon, the image, the runtime and the limits")

    data = commands.add_parser("data", help="the market data catalog")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_import = data_commands.add_parser("import", help="validate a file and add it")
    data_import.add_argument("file", type=Path, help="a CSV or Parquet file of bars")
    data_import.add_argument("--symbol", required=True, help="the symbol it holds")
    data_import.add_argument("--timeframe", required=True, help="its MT5 timeframe (D1, M5...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**{
            name: getattr(args, f"setting_{name}")
            for _, (name, _) in SETTING_FLAGS.items()
            if getattr(args, f"setting_{name}") is not None
        })
    except ValidationError as e:
        return _usage_error(f"settings: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
    if args.setting_api_tokens is not None:
        print(
            "warning: --api-tokens shows the tokens to every local user (ps, /proc); prefer "
            "BACKTEST_API_TOKENS_FILE",
            file=sys.stderr,
        )
    handlers = {
        "run": _cmd_run,
        "sweep": _cmd_sweep,
        "serve": _cmd_serve,
        "worker": _cmd_worker,
        "build-image": _cmd_build_image,
        "doctor": _cmd_doctor,
        "data": _cmd_data,
    }
    try:
        return handlers[args.command](args, settings)
    except InvalidRequest as e:
        return _usage_error(str(e))
    except BacktestSandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _read_config(args: argparse.Namespace, settings: Settings) -> BacktestConfig:
    raw: dict[str, Any] = {}
    if args.config is not None:
        try:
            raw = json.loads(args.config.read_text())
        except (OSError, ValueError) as e:
            raise InvalidRequest("--config", f"must be a readable JSON file ({e})") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("--config", "must hold a JSON object")
    for _, (name, _) in CONFIG_FLAGS.items():
        value = getattr(args, f"config_{name}")
        if value is not None:
            raw[name] = value
    if args.params is not None:
        try:
            raw["params"] = json.loads(args.params)
        except ValueError as e:
            raise InvalidRequest("--params", f"must be a JSON object ({e})") from None
    return parse_config(
        raw,
        max_timeout_seconds=settings.max_timeout_seconds,
        max_memory_mb=settings.max_memory_mb,
    )


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = args.strategy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest("STRATEGY", f"must be a readable UTF-8 file ({e})") from None
    code = check_code(text, settings.max_code_bytes, field="STRATEGY")
    config = _read_config(args, settings)
    conditions = [parse_condition(gate, field="--fail-if") for gate in args.fail_if]
    backtest_id = new_backtest_id()
    syntax_error = check_syntax(code)
    stopped_by: int | None = None
    if syntax_error is not None:  # decided here: no container, no Docker, no data
        outcome = RunOutcome(status=JobStatus.FAILED, error=syntax_error)
    else:
        with _signals_cancel() as cancel:
            outcome = _run_sandboxed(
                backtest_id, code, config, settings, cancel, show_progress=not args.json
            )
        stopped_by = cancel.signal
    gates = check_gates(conditions, outcome.result.metrics) if outcome.result else []
    status = {**status_object(backtest_id, outcome), "gates": [g.as_json() for g in gates]}
    code_ = _exit_code(outcome, stopped_by, gates_fail(gates, strict=args.strict))
    _report(args, settings, config, outcome, status, gates, code_)
    if args.json:
        print(json.dumps(status))
    else:
        _print_outcome(outcome)
        _print_gates(gates)
    return code_


def _cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from .sweep_command import parse_grid, print_sweep, run_sweep

    try:
        text = args.strategy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest("STRATEGY", f"must be a readable UTF-8 file ({e})") from None
    code = check_code(text, settings.max_code_bytes, field="STRATEGY")
    config = _read_config(args, settings)
    grid = parse_grid(args.grid)
    with _signals_cancel() as cancel:
        status, code_ = run_sweep(
            code,
            config,
            settings,
            cancel,
            grid=grid,
            target=args.target,
            direction=args.direction,
            constraints=args.constraint,
            oos_start=args.oos_start,
            show_progress=not args.json,
            output_dir=args.output_dir,
        )
    if cancel.signal is not None and status["status"] == JobStatus.CANCELLED.value:
        code_ = 128 + cancel.signal
    if args.json:
        print(json.dumps(status))
    else:
        print_sweep(status)
    return code_


def _exit_code(outcome: RunOutcome, stopped_by: int | None, gates_failed: bool) -> int:
    """2 (usage, raised before), 4, 3, 5, 0 in that order; 128 + N when signal N cancelled."""
    if outcome.status is JobStatus.CANCELLED and stopped_by is not None:
        return 128 + stopped_by  # the shell's convention for "ended by this signal"
    code = exit_code(outcome)
    if code == EXIT_COMPLETED and gates_failed:
        return EXIT_GATES_FAILED
    return code


def _report(
    args: argparse.Namespace,
    settings: Settings,
    config: BacktestConfig,
    outcome: RunOutcome,
    status: dict[str, Any],
    gates: list[Gate],
    code: int,
) -> None:
    """The files of --output-dir, GitHub's job summary and annotations."""
    if args.output_dir is not None:
        from .report import write_output_dir  # matplotlib and pandas: only when asked

        write_output_dir(
            args.output_dir,
            status,
            outcome.result,
            initial_capital=config.initial_capital,
            prices=_prices(config, settings) if outcome.result else None,
            gates=gates,
        )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        verdict = {EXIT_COMPLETED: "passed", EXIT_GATES_FAILED: "gates failed"}.get(
            code, outcome.error.type.value if outcome.error else outcome.status.value
        )
        write_step_summary(Path(summary), args.strategy, outcome, gates, verdict)
    if in_github_actions():
        # Workflow commands are read from both streams; stdout is the JSON's under --json.
        annotate(sys.stderr if args.json else sys.stdout, args.strategy, outcome)


def _prices(config: BacktestConfig, settings: Settings) -> Any:
    """The closes of the bars the run used, for the report's price chart (None if the
    catalog cannot give them again)."""
    from backtest_sandbox.data.catalog import prepare

    try:
        return prepare(config, settings.data_dir).frame["close"]
    except DataError:
        return None


def _print_gates(gates: list[Gate]) -> None:
    for gate in gates:
        value = "null" if gate.value is None else f"{gate.value:,.4f}"
        print(f"gate {gate.condition}: {gate.status} (value {value})")


class _Cancel(threading.Event):
    """Set by SIGTERM, SIGINT or SIGHUP; remembers which one came first."""

    signal: int | None = None


@contextmanager
def _signals_cancel() -> Iterator[_Cancel]:
    """While the block runs, SIGTERM, SIGINT and SIGHUP cancel the run instead of killing this
    process: the container is killed and removed, and the status printed (a CI job that is
    cancelled, a terminal closed, Ctrl-C). Each signal after the first only repeats it."""
    cancel = _Cancel()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if cancel.signal is None:
            cancel.signal = signum
        cancel.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in CANCELLING_SIGNALS}
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_sandboxed(
    backtest_id: str,
    code: str,
    config: BacktestConfig,
    settings: Settings,
    cancel: threading.Event,
    *,
    show_progress: bool,
) -> RunOutcome:
    from backtest_sandbox.jobs.engine import Engine, RunRequest

    request = RunRequest(backtest_id=backtest_id, code=code, config=config)
    # One run, then exit: a warm pool would only start a container nobody uses.
    engine = Engine(settings.model_copy(update={"pool_size": 0}))
    bar = ProgressBar(sys.stderr) if show_progress else None
    try:
        return engine.run(request, cancel=cancel, on_progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
        engine.close()


def status_object(backtest_id: str, outcome: RunOutcome) -> dict[str, Any]:
    """get_backtest_status's shape (docs/interface.md section 1) for a finished run."""
    return {
        "backtest_id": backtest_id,
        "status": outcome.status.value,
        "progress_percent": 100.0,
        "estimated_completion": None,
        "result": outcome.result.model_dump(mode="json") if outcome.result else None,
        "error": outcome.error.model_dump(mode="json") if outcome.error else None,
        "execution_time_seconds": outcome.execution_time_seconds,
        # A failed run's output (a completed one has it in `result.logs`): what it printed
        # before it failed is often the only clue.
        "logs": outcome.logs if outcome.result is None else None,
    }


def exit_code(outcome: RunOutcome) -> int:
    if outcome.status is JobStatus.COMPLETED:
        return EXIT_COMPLETED
    if outcome.error is not None and outcome.error.type is ErrorType.SANDBOX_ERROR:
        return EXIT_SANDBOX_ERROR
    return EXIT_RUN_FAILED


def _print_outcome(outcome: RunOutcome) -> None:
    """The outcome for a person at a terminal. What the strategy wrote (its logs, messages,
    tracebacks) is shown escaped: it cannot move the cursor, clear the screen, set the
    clipboard or fake a line of ours."""
    if outcome.result is None:
        error = outcome.error
        print(f"{outcome.status.value}: {error.type.value if error else ''}")
        if error is not None:
            print(f"  {terminal_safe(error.message)}")
            traceback = error.details.get("traceback")
            if traceback:
                print(terminal_safe(str(traceback).rstrip()))
        if outcome.logs:
            print("--- logs ---\n" + terminal_safe(outcome.logs.rstrip()))
        return
    result = outcome.result
    print(f"completed in {outcome.execution_time_seconds:.2f} s "
          f"({result.data.bars} bars, data: {result.data.source})")
    for name, value in result.metrics.items():
        shown = "n/a" if value is None else f"{value:,.4f}" if isinstance(value, float) else value
        print(f"  {name:<28} {shown}")
    for warning in result.warnings:
        print(f"warning: {terminal_safe(warning)}")


# C0 controls but newline and tab, DEL, C1 controls (ESC, CSI and OSC start sequences), and the
# Unicode bidirectional overrides that reorder what a line appears to say.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with every character that a terminal would act on shown as an escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def _check_temporal(settings: Settings) -> None:
    """Raises:
    InvalidRequest: the temporal backend without the shared database it keeps jobs in.
    """
    if settings.backend == "temporal" and not settings.database_url.get_secret_value():
        raise InvalidRequest(
            "BACKTEST_DATABASE_URL",
            "is required with BACKTEST_BACKEND=temporal (the job store every server and "
            "worker shares)",
        )


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from backtest_sandbox.jobs.temporal.worker import run_worker

    from .mcp_server import configure_logging

    if settings.backend != "temporal":
        raise InvalidRequest("BACKTEST_BACKEND", "must be temporal for `worker`")
    _check_temporal(settings)
    slots = settings.max_workers if args.slots is None else args.slots
    if not 1 <= slots <= 64:
        raise InvalidRequest("--slots", "must be between 1 and 64")
    configure_logging()
    asyncio.run(run_worker(settings, slots=slots))
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .mcp_server import serve  # imported here: the MCP stack is only needed by `serve`

    _check_temporal(settings)

    serve(
        settings,
        transport=args.transport,
        host=args.host,
        port=args.port,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def _cmd_build_image(args: argparse.Namespace, settings: Settings) -> int:
    from backtest_sandbox.image.build import ensure_image
    from backtest_sandbox.sandbox.containers import docker_client

    client = docker_client(timeout=600)
    try:
        tag = ensure_image(client, settings, force=args.force)
    finally:
        client.close()
    print(tag)
    return 0


def _cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from .doctor import run_doctor

    return 0 if run_doctor(settings, sys.stdout) else 1


def _cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    from backtest_sandbox.data.catalog import import_file
    from backtest_sandbox.domain.timeframes import Timeframe

    try:
        timeframe = Timeframe.parse(args.timeframe)
    except ValueError as e:
        raise InvalidRequest("--timeframe", str(e)) from None
    try:
        path = import_file(args.file, args.symbol, timeframe, settings.data_dir)
    except DataError as e:
        print(f"data_error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    print(path)
    return 0

"""Every verdict through `backtest-sandbox run --json`, against the real daemon and image."""

from __future__ import annotations

import time

import pytest

from tests.conftest import DOCKER, left_behind
from tests.strategies import SMA_CROSS, strategy_with

pytestmark = DOCKER

RANGE = ["--symbol", "IDX", "--timeframe", "D1", "--start", "2006-01-01", "--end", "2006-12-31"]

def test_valid_strategy_completes_with_metrics(cli, write_strategy):
    run = cli("run", str(write_strategy(SMA_CROSS)), *RANGE, "--json")
    assert run.code == 0, run.stderr
    status = run.status
    assert status["status"] == "completed"
    assert status["error"] is None
    result = status["result"]
    assert result["data"]["bars"] == 255
    assert len(result["equity_curve"]) == 255
    assert result["metrics"]["total_trades"] == len(result["trade_log"]) > 0
    assert result["metrics"]["final_value"] == pytest.approx(result["equity_curve"][-1]["value"])
    provenance = result["provenance"]
    assert provenance["runtime"] == "runc" and len(provenance["container_id"]) == 64
    assert provenance["backtrader_version"] == "1.9.78.123"
    assert left_behind() == []


def test_syntax_error_needs_no_container(cli, write_strategy):
    run = cli(
        "run", str(write_strategy("import backtrader as bt\ndef broken(:\n")), *RANGE, "--json",
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},  # proves no daemon was needed
    )
    assert run.code == 3, run.stderr
    error = run.status["error"]
    assert error["type"] == "syntax_error"
    assert error["details"]["line"] == 2
    assert error["details"]["column"] >= 1


def test_raising_strategy_is_runtime_error(cli, write_strategy):
    body = "print('dividing by nothing', flush=True)\nx = 1 / 0"
    run = cli("run", str(write_strategy(strategy_with(body))), *RANGE, "--json")
    assert run.code == 3, run.stderr
    assert "dividing by nothing" in run.status["logs"]  # what it printed before it failed
    error = run.status["error"]
    assert error["type"] == "runtime_error"
    assert error["details"]["exception_type"] == "ZeroDivisionError"
    assert "strategy.py" in error["details"]["traceback"]
    assert "harness" not in error["details"]["traceback"]


def assert_killed_soon_after_the_limit(run, started: float, limit: float) -> None:
    assert run.status["error"]["type"] == "timeout"
    # The engine's own wall time, from the container's start to its removal: the limit, the
    # 1 s SIGTERM grace, and Docker's stop and removal.
    assert run.status["execution_time_seconds"] < limit + 3
    # The whole CLI process also pays Python's start-up, slow on a loaded machine.
    assert time.monotonic() - started < limit + 15


def test_busy_loop_times_out_near_the_limit(cli, write_strategy):
    started = time.monotonic()
    run = cli("run", str(write_strategy(strategy_with("while True: pass"))), *RANGE,
              "--timeout", "3", "--json")
    assert run.code == 3, run.stderr
    assert_killed_soon_after_the_limit(run, started, limit=3)


def test_sigterm_ignoring_strategy_is_killed_all_the_same(cli, write_strategy):
    code = strategy_with(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass", imports="import signal"
    )
    started = time.monotonic()
    run = cli("run", str(write_strategy(code)), *RANGE, "--timeout", "3", "--json")
    assert run.code == 3, run.stderr
    assert_killed_soon_after_the_limit(run, started, limit=3)


def test_memory_bomb_is_memory_limit(cli, write_strategy):
    code = strategy_with("hoard = []\nwhile True: hoard.append(bytearray(8 << 20))")
    run = cli("run", str(write_strategy(code)), *RANGE, "--memory-mb", "256", "--json")
    assert run.code == 3, run.stderr
    assert run.status["error"]["type"] == "memory_limit"


@pytest.mark.parametrize(
    "body,imports",
    [
        pytest.param("os._exit(0)", "import os", id="os._exit(0)"),
        pytest.param("os._exit(137)", "import os", id="os._exit(137)"),
        pytest.param("os._exit(124)", "import os", id="os._exit(124)"),
        pytest.param("ctypes.string_at(0)", "import ctypes", id="segfault"),
    ],
)
def test_abnormal_exits_are_crashed(cli, write_strategy, body, imports):
    run = cli("run", str(write_strategy(strategy_with(body, imports))), *RANGE, "--json")
    assert run.code == 3, run.stderr
    assert run.status["error"]["type"] == "crashed"
    assert run.status["result"] is None


def test_unreachable_daemon_is_sandbox_error(cli, write_strategy):
    run = cli("run", str(write_strategy(SMA_CROSS)), *RANGE, "--json",
              env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert run.code == 4, run.stderr
    assert run.status["error"]["type"] == "sandbox_error"
    assert "Docker daemon unreachable" in run.status["error"]["message"]


@pytest.mark.parametrize(
    "args,field",
    [
        pytest.param(["--symbol", "IDX", "--timeframe", "D1", "--start", "2006-12-31",
                      "--end", "2006-01-01"], "end_date", id="end-before-start"),
        pytest.param([*RANGE, "--timeframe", "D7"], "config.timeframe", id="bad-timeframe"),
        pytest.param([*RANGE, "--commission", "-1"], "config.commission", id="negative-commission"),
        pytest.param(["--timeframe", "D1", "--start", "2006-01-01", "--end", "2006-02-01"],
                     "config.symbol", id="missing-symbol"),
    ],
)
def test_bad_config_exits_2_naming_the_field(cli, write_strategy, args, field):
    run = cli("run", str(write_strategy(SMA_CROSS)), *args, "--json")
    assert run.code == 2
    assert field in run.stderr
    assert run.stdout == ""


def test_no_container_is_left_by_any_verdict():
    # Runs after the verdict tests above (file order). Every CLI run above has exited, so any
    # container of theirs still here would be one that nobody removes.
    assert left_behind() == []


def test_the_strategys_escape_sequences_reach_the_terminal_escaped(cli, write_strategy):
    """Clear screen, cursor home, an OSC 52 clipboard write and a forged report line: shown
    as text, never acted on."""
    forged = "\x1b[2J\x1b[H\x1b]52;c;ZXZpbA==\x07completed in 0.01 s\r\x9b1A"
    body = f"print({forged!r}, flush=True)\nraise RuntimeError({forged!r})"
    run = cli("run", str(write_strategy(strategy_with(body))), "--symbol", "ORCL",
              "--timeframe", "D1", "--start", "2010-01-01", "--end", "2010-12-31")
    assert run.code == 3, run.stderr
    assert not any(ch in run.stdout for ch in "\x1b\x07\r\x9b")
    shown = "\\x1b[2J\\x1b[H\\x1b]52;c;ZXZpbA==\\x07completed in 0.01 s\\x0d\\x9b1A"
    assert run.stdout.count(shown) == 2  # in the error message and in the logs

"""The verdict order: what the host observed always beats what the sandbox wrote."""

from __future__ import annotations

import json

import pytest

from backtest_sandbox.domain.errors import ErrorType
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.sandbox.supervisor import Observation, decide

COMPLETED = {
    "protocol": 1,
    "outcome": "completed",
    "backtrader_version": "1.9.78.123",
    "bars": 2,
    "final_value": 101.0,
    "final_cash": 101.0,
    "bars_in_market": 1,
    "equity_curve": [["2006-01-02T00:00:00", 100.0], ["2006-01-03T00:00:00", 101.0]],
    "trades": [],
    "open_trades": 0,
    "orders": [],
    "orders_total": 0,
    "open_positions": [],
}
VALID = json.dumps(COMPLETED).encode()


def observe(**overrides: object) -> Observation:
    fields: dict[str, object] = {
        "timed_out": False,
        "cancelled": False,
        "exit_code": 0,
        "oom_killed": False,
        "elapsed_seconds": 1.0,
        "result": VALID,
        "result_problem": None,
    }
    fields.update(overrides)
    return Observation(**fields)  # type: ignore[arg-type]


def verdict_type(observation: Observation) -> ErrorType | None:
    verdict = decide(observation, timeout_seconds=3, expected_bars=2)
    return verdict.error.type if verdict.error else None


def test_clean_exit_with_valid_result_completes():
    verdict = decide(observe(), timeout_seconds=3, expected_bars=2)
    assert verdict.status is JobStatus.COMPLETED
    assert verdict.claim is not None and verdict.claim.final_value == 101.0


@pytest.mark.parametrize(
    "observation,expected",
    [
        pytest.param(
            observe(timed_out=True, exit_code=137, oom_killed=True),
            ErrorType.TIMEOUT,
            id="the clock wins over everything",
        ),
        pytest.param(observe(oom_killed=True, exit_code=137), ErrorType.MEMORY_LIMIT, id="oom"),
        pytest.param(observe(oom_killed=True), ErrorType.MEMORY_LIMIT, id="oom-even-with-result"),
        pytest.param(observe(exit_code=137), ErrorType.CRASHED, id="exit-137-is-not-oom"),
        pytest.param(observe(exit_code=124), ErrorType.CRASHED, id="exit-124-is-not-timeout"),
        pytest.param(observe(exit_code=139), ErrorType.CRASHED, id="segfault"),
        pytest.param(observe(exit_code=1), ErrorType.CRASHED, id="valid-result-nonzero-exit"),
        pytest.param(observe(result=b""), ErrorType.CRASHED, id="exit-0-without-result"),
        pytest.param(
            observe(result=None, result_problem="not a regular file"),
            ErrorType.RESULT_INVALID,
            id="unreadable",
        ),
        pytest.param(observe(result=b"{"), ErrorType.RESULT_INVALID, id="not-json"),
        pytest.param(
            observe(result=json.dumps({**COMPLETED, "outcome": "timeout"}).encode()),
            ErrorType.RESULT_INVALID,
            id="claims-its-own-verdict",
        ),
        pytest.param(
            observe(result=json.dumps({**COMPLETED, "bars": 3}).encode()),
            ErrorType.RESULT_INVALID,
            id="wrong-bar-count",
        ),
        pytest.param(
            observe(result=VALID.replace(b"101.0,", b"NaN,", 1)), ErrorType.RESULT_INVALID, id="nan"
        ),
        pytest.param(
            observe(result=json.dumps({**COMPLETED, "extra": 1}).encode()),
            ErrorType.RESULT_INVALID,
            id="unknown-field",
        ),
    ],
)
def test_verdict_order(observation: Observation, expected: ErrorType):
    assert verdict_type(observation) is expected


def test_cancel_beats_everything():
    verdict = decide(observe(cancelled=True, timed_out=True), timeout_seconds=3, expected_bars=2)
    assert verdict.status is JobStatus.CANCELLED and verdict.error is None


def test_runtime_error_report_carries_the_exception():
    report = {
        "protocol": 1,
        "outcome": "runtime_error",
        "backtrader_version": "x",
        "error": {"exc_type": "KeyError", "message": "'x'", "traceback": "strategy.py"},
    }
    verdict = decide(
        observe(result=json.dumps(report).encode()), timeout_seconds=3, expected_bars=2
    )
    assert verdict.error is not None
    assert verdict.error.type is ErrorType.RUNTIME_ERROR
    assert verdict.error.message == "KeyError: 'x'"
    assert verdict.error.details == {"exception_type": "KeyError", "traceback": "strategy.py"}

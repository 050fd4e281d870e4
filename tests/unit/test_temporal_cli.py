"""The temporal backend's command-line rules: what `worker` and `serve` refuse before
starting anything (the backend itself: tests/integration/test_temporal_backend.py)."""

from __future__ import annotations

import pytest

from backtest_sandbox.api.cli import EXIT_USAGE, main


def test_worker_needs_the_temporal_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BACKTEST_BACKEND", raising=False)
    assert main(["worker"]) == EXIT_USAGE
    assert "BACKTEST_BACKEND: must be temporal" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["worker"], ["serve", "--transport", "http"]])
def test_the_temporal_backend_needs_the_shared_database(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKTEST_BACKEND", "temporal")
    monkeypatch.delenv("BACKTEST_DATABASE_URL", raising=False)
    assert main(command) == EXIT_USAGE
    assert "BACKTEST_DATABASE_URL: is required with BACKTEST_BACKEND=temporal" in (
        capsys.readouterr().err
    )


def test_slots_are_bounded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKTEST_BACKEND", "temporal")
    monkeypatch.setenv("BACKTEST_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["worker", "--slots", "0"]) == EXIT_USAGE
    assert "--slots: must be between 1 and 64" in capsys.readouterr().err

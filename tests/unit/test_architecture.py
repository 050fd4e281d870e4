"""The house's rules, checked as a reader would: the layers hold, a broken layer fails the lint,
and the CLI's edges import nothing heavy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "server" / "backtest_sandbox"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
HEAVY = ("pandas", "numpy", "docker", "mcp", "starlette", "uvicorn", "matplotlib")


def _imported_modules(*args: str, cwd: Path) -> tuple[int, set[str]]:
    """Run the CLI under `-X importtime`; its exit code and the top-level modules it loaded."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "backtest_sandbox", *args],
        capture_output=True, text=True, cwd=cwd, timeout=60,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            modules.add(name.split(".")[0])
    return proc.returncode, modules


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_the_cli_edges_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    code, modules = _imported_modules(*args, cwd=tmp_path)
    assert code == 0
    assert "backtest_sandbox" in modules  # the probe sees our own imports, so it can fail
    assert modules.isdisjoint(HEAVY), sorted(modules & set(HEAVY))


def test_a_syntax_error_verdict_imports_nothing_heavy(tmp_path: Path) -> None:
    strategy = tmp_path / "broken.py"
    strategy.write_text("import backtrader as bt\nclass S(bt.Strategy:\n    pass\n")
    code, modules = _imported_modules(
        "run", str(strategy), "--symbol", "ORCL", "--timeframe", "D1",
        "--start", "2010-01-01", "--end", "2010-12-31", "--json",
        cwd=tmp_path,
    )
    assert code == 3
    assert modules.isdisjoint(HEAVY), sorted(modules & set(HEAVY))


def _lint(package_root: Path, pyproject: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(pyproject), "--no-cache"],
        capture_output=True, text=True, env=env, timeout=120,
    )


@pytest.mark.slow
def test_the_layers_contract_holds_and_a_break_fails_it(tmp_path: Path) -> None:
    assert _lint(REPO / "server", REPO / "pyproject.toml").returncode == 0
    # The same package with one import against the layers: domain reaching up into jobs.
    copy = tmp_path / "server" / "backtest_sandbox"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "domain" / "config.py"
    config.write_text(config.read_text() + "\nfrom backtest_sandbox.jobs import store  # noqa\n")
    broken = _lint(tmp_path / "server", REPO / "pyproject.toml")
    assert broken.returncode != 0
    assert "backtest_sandbox.domain.config -> backtest_sandbox.jobs.store" in broken.stdout

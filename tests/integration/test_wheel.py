"""A wheel works anywhere: built from the repository, installed (not editable) into a fresh
virtualenv, it builds its runner image and runs a backtest from an empty directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DOCKER, REPO

pytestmark = [*DOCKER, pytest.mark.slow]

RUNNER_FILES = [
    "backtest_sandbox/image/runner/Dockerfile.runner",
    "backtest_sandbox/image/runner/runner_image/harness.py",
    "backtest_sandbox/image/runner/runner_image/requirements.lock",
    "backtest_sandbox/sandbox/seccomp.json",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out), str(REPO)],
        check=True, timeout=300,
    )
    (built,) = out.glob("backtest_sandbox-*.whl")
    return built


def test_the_wheel_carries_the_runner(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in RUNNER_FILES if name not in names]
    assert not missing
    runner = {n for n in names if n.startswith("backtest_sandbox/image/runner/runner_image/")}
    expected = {p.name for p in (REPO / "runner_image").glob("*.py")}
    assert {Path(n).name for n in runner} >= expected


def test_an_installed_wheel_builds_its_image_and_runs(
    wheel: Path, tmp_path: Path, data_dir: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300,
    )
    # The dependencies come from this interpreter's site-packages, appended after the fresh
    # venv's own (a .pth line is a path, and the editable install's own .pth there is not
    # processed): the package itself is the installed wheel's copy, not the checkout.
    fresh_site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {
        **os.environ,
        "BACKTEST_DATA_DIR": str(data_dir),
        "BACKTEST_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("PYTHONPATH", None)
    where = subprocess.check_output(
        [str(python), "-c", "import backtest_sandbox; print(backtest_sandbox.__file__)"],
        text=True, cwd=empty, env=env,
    )
    assert where.startswith(str(fresh_site)), where

    command = venv / "bin" / "backtest-sandbox"
    build = subprocess.run(
        [str(command), "build-image"], capture_output=True, text=True, cwd=empty, env=env,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    strategy = empty / "sma_cross.py"
    strategy.write_bytes((REPO / "examples" / "sma_cross.py").read_bytes())
    run = subprocess.run(
        [str(command), "run", str(strategy), "--symbol", "ORCL", "--timeframe", "D1",
         "--start", "2010-01-01", "--end", "2011-12-31", "--json"],
        capture_output=True, text=True, cwd=empty, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    status = json.loads(run.stdout)
    assert status["status"] == "completed"
    assert status["result"]["data"]["bars"] > 400

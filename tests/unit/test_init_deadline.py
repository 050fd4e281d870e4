"""runner_image/init.py's own deadline, the container's last line when no host is left: a
job's spec sets it, and in a session each run's spec moves it on, however briefly the run's
directory was there."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from types import ModuleType

import pytest

INIT = Path(__file__).resolve().parents[2] / "runner_image" / "init.py"


@pytest.fixture(scope="module")
def init() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sandbox_init", INIT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, spec: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))


def test_an_idle_container_keeps_its_idle_deadline_then_the_job_sets_its_own(
    init: ModuleType, tmp_path: Path
) -> None:
    idle_deadline = time.monotonic() + 300
    clock = init.Deadline(str(tmp_path / "spec.json"), idle_deadline)
    assert clock.update() == idle_deadline
    write(tmp_path / "spec.json", {"deadline_seconds": 20})
    before = time.monotonic()
    assert before + 20 <= clock.update() <= time.monotonic() + 20


def test_a_session_deadline_follows_the_newest_run_even_one_already_gone(
    init: ModuleType, tmp_path: Path
) -> None:
    clock = init.Deadline(str(tmp_path / "spec.json"), time.monotonic() + 300)
    write(tmp_path / "spec.json", {"session": {"idle_seconds": 5}, "deadline_seconds": 5})
    first = clock.update()
    assert first <= time.monotonic() + 5  # until the first run comes

    write(tmp_path / "runs" / "1" / "spec.json", {"deadline_seconds": 100})
    after_one = clock.update()
    assert after_one >= time.monotonic() + 100  # the run's deadline plus the session's idle

    # Runs 2 and 3 come and go between two looks (each is removed once over); run 4 is there.
    shutil.rmtree(tmp_path / "runs" / "1")
    write(tmp_path / "runs" / "4" / "spec.json", {"deadline_seconds": 200})
    assert clock.update() >= time.monotonic() + 200

    shutil.rmtree(tmp_path / "runs" / "4")
    kept = clock.update()  # between runs: nothing new, the deadline stays
    assert kept == clock.update() >= time.monotonic() + 199

"""Fixtures of the adversarial corpus: the runtime (runc, and runsc when the daemon has it),
the settings the corpus runs with, the host canaries, and one concurrent run of the corpus per
runtime whose results the per-case tests assert on.

The corpus runs once per mode: runc and runsc, each with the warm pool on and off
(`runc-pool`, `runc-cold`, `runsc-pool`, `runsc-cold`).

Environment knobs (none needed by default):
    SECURITY_CORPUS_SECCOMP   path of the seccomp profile (default: the package's built-in profile),
                              `docker-default` for Docker's own, `settings` for BACKTEST_*'s
    SECURITY_CORPUS_POOL      `both` (default), `pool` or `cold`: which pool modes to run
    SECURITY_CORPUS_PARALLEL  cases run at once (default 2)
    SECURITY_CORPUS_LOGS      a directory: each case's verdict, error and logs are written
                              there as <mode>/<case>.txt (for reading what an attack saw)
    BACKTEST_*                every other setting applies as it does to the server
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import data_dir, docker_ready, leaked_containers  # noqa: F401 (fixtures)

from security.corpus_runner import (
    CANARY_ENV,
    CANARY_PREFIX,
    SECCOMP_PROFILE,
    Canaries,
    CaseRun,
    CorpusRunner,
    load_corpus,
    project_containers,
    survivors,
)

POOL_WAIT_SECONDS = 60.0  # a refill takes about a second; far more means the pool is broken
MODES = [(runtime, pool) for runtime in ("runc", "runsc") for pool in ("pool", "cold")]
_RESULTS: dict[str, CorpusResult] = {}  # for the terminal summary


@dataclass
class CorpusResult:
    """One mode's run of the corpus (`runc-pool`, `runsc-cold`, ...)."""

    mode: str
    runs: dict[str, CaseRun]
    trivial: Any  # RunOutcome of a plain strategy run after the whole corpus
    leftover_processes: list[str]
    leftover_containers: list[str]
    seconds: float


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def parallel() -> int:
    return int(os.environ.get("SECURITY_CORPUS_PARALLEL", "2"))


def corpus_settings(runtime: str, pool: str, data_dir: Path, state_dir: Path) -> Any:  # noqa: F811
    """The server's settings (every BACKTEST_* as usual) with the corpus's data and state dirs,
    the runtime and pool mode under test, and the seccomp profile."""
    from backtest_sandbox.domain.settings import Settings

    overrides: dict[str, Any] = {"data_dir": data_dir, "state_dir": state_dir, "runtime": runtime}
    choice = os.environ.get("SECURITY_CORPUS_SECCOMP", str(SECCOMP_PROFILE))
    if choice == "docker-default":
        overrides["seccomp_profile"] = None
    elif choice != "settings":
        overrides["seccomp_profile"] = Path(choice)
    # The pool: off, or one warm container more than the cases running at once. A run that
    # finds the pool empty waits for the refill (up to POOL_WAIT_SECONDS) instead of going cold,
    # so that every run of the pool mode really is a warm one, and the tests can say so.
    overrides["pool_size"] = 0 if pool == "cold" else max(Settings().pool_size or 0, parallel() + 1)
    overrides["pool_wait_seconds"] = POOL_WAIT_SECONDS
    return Settings(**overrides)


@pytest.fixture(scope="session")
def host_canary_secret() -> Iterator[str]:
    """A secret in the host process's environment for the whole session: no sandbox may see
    it (the sandbox's environment is an allowlist)."""
    value = f"{CANARY_PREFIX}{os.urandom(8).hex()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CANARY_ENV, value)
        yield value


def _wanted_pool_modes() -> set[str]:
    choice = os.environ.get("SECURITY_CORPUS_POOL", "both")
    return {"pool", "cold"} if choice == "both" else {choice}


@pytest.fixture(scope="session", params=MODES, ids=[f"{r}-{p}" for r, p in MODES])
def mode(request: pytest.FixtureRequest, docker_ready: None) -> tuple[str, str]:  # noqa: F811
    """(runtime, pool). runc always; runsc when the daemon has it. In CI a missing runsc fails
    (.ci/run installs it with security/install_runsc.sh); elsewhere it is skipped, saying how."""
    from backtest_sandbox.sandbox.containers import docker_client

    name, pool = request.param
    if pool not in _wanted_pool_modes():
        pytest.skip(f"pool mode {pool} not selected (SECURITY_CORPUS_POOL)")
    if name == "runsc":
        client = docker_client()
        try:
            available = set(client.info().get("Runtimes", {}))
        finally:
            client.close()
        if "runsc" not in available:
            message = "the Docker daemon has no runsc runtime; run security/install_runsc.sh"
            if in_ci():
                pytest.fail(f"CI: {message}", pytrace=False)
            pytest.skip(message)
    return name, pool


def _selected_stems(session: pytest.Session) -> set[str]:
    """The cases whose tests this session runs (all, unless -k or a node id narrowed it)."""
    stems = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "case" in callspec.params:
            stems.add(callspec.params["case"].stem)
    return stems


@pytest.fixture(scope="session")
def corpus_result(
    request: pytest.FixtureRequest,
    mode: tuple[str, str],
    data_dir: Path,  # noqa: F811
    host_canary_secret: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CorpusResult]:
    """Runs the (selected) corpus once for this mode, two cases at a time."""
    from backtest_sandbox.jobs.engine import Engine
    from backtest_sandbox.sandbox.containers import docker_client
    from backtest_sandbox.sandbox.runner import SandboxRunner

    runtime, pool = mode
    label = f"{runtime}-{pool}"
    root = tmp_path_factory.mktemp(f"corpus-{label}")
    state_dir = root / "state"
    canaries = Canaries.plant(data_dir, state_dir, root / "scratch")
    settings = corpus_settings(runtime, pool, data_dir, state_dir)
    cases = load_corpus()
    wanted = _selected_stems(request.session) or {case.stem for case in cases}
    if any(case.pair and case.stem in wanted for case in cases):  # a pair runs whole
        wanted |= {case.stem for case in cases if case.pair}
    client = docker_client()
    engine = Engine(settings, SandboxRunner(settings, client))
    runner = CorpusRunner(engine, client, runtime, canaries, parallel=parallel())
    started = time.monotonic()
    try:
        runs = runner.run_all([case for case in cases if case.stem in wanted])
        trivial = runner.trivial_run()
    finally:
        runner.close()
        engine.close()  # removes the warm pool's idle containers
    try:
        result = CorpusResult(
            mode=label,
            runs=runs,
            trivial=trivial,
            leftover_processes=survivors(
                lambda: [], lambda: [c["Id"] for c in project_containers(client)]
            ),
            leftover_containers=[str(c.labels) for c in leaked_containers(client)],
            seconds=time.monotonic() - started,
        )
    finally:
        client.close()
    _RESULTS[label] = result
    if os.environ.get("SECURITY_CORPUS_LOGS"):
        _write_logs(Path(os.environ["SECURITY_CORPUS_LOGS"]) / label, result)
    yield result


def _write_logs(directory: Path, result: CorpusResult) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, run in result.runs.items():
        error = run.outcome.error.model_dump_json() if run.outcome.error else "-"
        text = f"{run.summary()}\nerror: {error}\n\n{run.outcome.logs}"
        (directory / f"{stem}.txt").write_text(text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The verdict of every case and how long it took, per mode: the report's table."""
    for label, result in _RESULTS.items():
        terminalreporter.section(
            f"security corpus under {label}: {len(result.runs)} cases in {result.seconds:.0f} s"
        )
        for stem in sorted(result.runs):
            terminalreporter.write_line(result.runs[stem].summary())

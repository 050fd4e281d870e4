"""The adversarial corpus against the real daemon, under runc and (when present) runsc.

The whole corpus runs once per runtime, two cases at a time (conftest.py `corpus_result`);
each test below asserts on one case: the verdict the host decided, proof that the attack
really ran, and the host after it (no container, no process, no changed file).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from tests.conftest import DOCKER

from backtest_sandbox.sandbox.containers import (
    LABEL_OWNER,
    LABEL_PROJECT,
    LABEL_RUN,
    process_owner_id,
)
from backtest_sandbox.sandbox.runner import DEFAULT_MEMORY_MB
from security.conftest import CorpusResult, corpus_settings
from security.corpus_runner import (
    CANARY_PREFIX,
    SANDBOX_UID,
    Canaries,
    CaseRun,
    CorpusRunner,
    lingering_containers,
    load_corpus,
    survivors,
)

# The corpus runs inside the first test's fixture: give it the time a whole run takes.
pytestmark = [*DOCKER, pytest.mark.timeout(1200)]

CASES = load_corpus()
THREAT_MODEL = Path(__file__).resolve().parent / "THREAT_MODEL.md"
LOG_CAP_SLACK = 200  # cap_logs adds a "[... N bytes cut ...]" line between head and tail


def _context(run: CaseRun) -> str:
    error = run.outcome.error
    return (
        f"\n  case {run.case.stem} under {run.runtime}: verdict {run.verdict}"
        f"\n  error: {error.model_dump() if error else None}"
        f"\n  logs (tail): {run.outcome.logs[-1500:]!r}"
    )


def test_the_corpus_covers_the_issue() -> None:
    assert len(CASES) >= 40
    assert len({case.stem for case in CASES}) == len(CASES)
    assert {case.pair for case in CASES if case.pair} == {"victim", "searcher"}


def test_the_threat_model_maps_every_case() -> None:
    """THREAT_MODEL.md section 5 has a row for every case: the model and the corpus move
    together."""
    table = THREAT_MODEL.read_text()
    missing = [case.stem for case in CASES if f"| `{case.stem}` |" not in table]
    assert missing == [], f"cases without a row in {THREAT_MODEL.name}: {missing}"


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_case(case, corpus_result: CorpusResult, host_canary_secret: str) -> None:
    run = corpus_result.runs[case.stem]
    expected = case.expected(run.runtime)
    context = _context(run)

    # The verdict: decided by the host, one of the expected set.
    assert run.verdict in expected, f"expected {sorted(expected)}{context}"
    error = run.outcome.error
    if run.verdict == "runtime_error":
        raised, wanted = error.details.get("exception_type", ""), case.raises(run.runtime)
        assert re.fullmatch(wanted, raised), f"raised {raised}, not {wanted}{context}"
    exit_code = case.exit_code(run.runtime)
    if run.verdict == "crashed" and exit_code is not None:
        assert error.details.get("exit_code") == exit_code, context

    # The attack really ran: its own markers are in the logs the host captured.
    for proof in case.proofs(run.runtime):
        assert re.search(proof, run.outcome.logs), f"no proof {proof!r} in the logs{context}"

    if case.message() is not None:
        assert re.search(case.message(), error.message), f"message {error.message!r}{context}"

    # A forged result is never believed, except for the documented residual risk (fast mode).
    if "forged-final-value" in case.header:
        forged = float(case.header["forged-final-value"][0])
        assert run.outcome.result is not None, context
        published = run.outcome.result.metrics["final_value"]
        assert (published == forged) is case.residual, f"published {published}{context}"
    for name, wanted in case.integrity().items():
        assert run.outcome.result is not None, context
        actual = getattr(run.outcome.result.integrity, name)
        assert actual == wanted, f"integrity.{name} is {actual}, not {wanted}{context}"

    # The mode under test really ran: in pool mode, a warm container served the run.
    check_warm(run, corpus_result.mode)

    # The host after the run.
    assert run.containers_left == [], f"containers survive the run{context}"
    assert run.survivors == [], f"host processes survive the run: {run.survivors}{context}"
    assert run.canaries_changed == [], f"host files changed: {run.canaries_changed}{context}"
    logs = run.outcome.logs
    assert len(logs) <= 64 * 1024 + LOG_CAP_SLACK, f"logs not bounded: {len(logs)} chars"
    assert "\x00" not in logs
    assert host_canary_secret not in logs and f"{CANARY_PREFIX}file" not in logs, context


def check_warm(run: CaseRun, mode: str) -> None:
    """Pool mode: the run was served by a warm container, unless it could not be by design
    (gVisor cannot change a running container's memory, so a case asking for other memory
    than the pool's runs cold there). Cold mode: never a warm one."""
    pooled = mode.endswith("-pool")
    memory = run.case.config_overrides().get("memory_mb", DEFAULT_MEMORY_MB)
    wanted = pooled and (memory == DEFAULT_MEMORY_MB or run.runtime != "runsc")
    assert run.outcome.warm is wanted, (
        f"{run.case.stem} under {mode}: provenance.warm is {run.outcome.warm}, not {wanted}"
        " (a warm start that failed fell back to a cold one)"
    )


def test_a_broken_pool_fails_the_pool_mode(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool mode's check is live: with every warm start failing, its runs go cold, and
    `check_warm` says so."""
    from backtest_sandbox.jobs.engine import Engine
    from backtest_sandbox.sandbox.containers import docker_client
    from backtest_sandbox.sandbox.pool import WarmPool
    from backtest_sandbox.sandbox.runner import SandboxRunner

    monkeypatch.setattr(WarmPool, "_start_one", lambda self: False)  # as a failed start does
    settings = corpus_settings("runc", "pool", data_dir, tmp_path / "state")
    settings = settings.model_copy(update={"pool_wait_seconds": 1.0})
    client = docker_client()
    engine = Engine(settings, SandboxRunner(settings, client))
    canaries = Canaries.plant(data_dir, tmp_path / "state", tmp_path / "scratch")
    runner = CorpusRunner(engine, client, "runc", canaries, parallel=1)
    try:
        (case,) = [c for c in CASES if c.stem == "exit_124"]
        run = runner.run_case(case)
    finally:
        runner.close()
        engine.close()
        client.close()
    assert run.verdict == "crashed"  # the case itself ran, cold
    with pytest.raises(AssertionError, match="provenance.warm is False, not True"):
        check_warm(run, "runc-pool")
    check_warm(run, "runc-cold")


def test_the_host_checks_see_a_leak() -> None:
    """The checks are live: a process of the sandbox uid outside any container, and a stopped
    container of this process that nobody removed, are both reported."""
    from backtest_sandbox.domain.settings import Settings
    from backtest_sandbox.image import build as image
    from backtest_sandbox.sandbox.containers import docker_client

    if os.geteuid() != 0:
        pytest.skip("starting a process as the sandbox uid needs root")
    orphan = subprocess.Popen(
        ["sleep", "60"], user=SANDBOX_UID, group=SANDBOX_UID, stdout=subprocess.DEVNULL
    )
    client = docker_client()
    container = client.containers.run(
        image.expected_tag(Settings()),
        ["true"],
        detach=True,
        network_mode="none",
        labels={LABEL_PROJECT: "1", LABEL_RUN: "leak-check", LABEL_OWNER: process_owner_id()},
    )
    try:
        container.wait(timeout=60)
        leaked = survivors(lambda: [], lambda: [], patience=1.0)
        assert any(f"pid {orphan.pid} " in line for line in leaked), leaked
        lingering = lingering_containers(client, "some-other-run", patience=1.0)
        assert any(container.id[:12] in line for line in lingering), lingering
    finally:
        orphan.kill()
        orphan.wait()
        container.remove(force=True)
        client.close()


def test_isolation_runs_overlapped(corpus_result: CorpusResult) -> None:
    """The searcher looked while the victim was running, so its "not found" means something."""
    victim = corpus_result.runs.get("isolation_victim")
    searcher = corpus_result.runs.get("isolation_searcher")
    if victim is None or searcher is None:
        pytest.skip("the isolation pair was not selected")
    assert victim.started < searcher.started and searcher.ended < victim.ended, (
        f"victim {victim.started:.1f}..{victim.ended:.1f}, "
        f"searcher {searcher.started:.1f}..{searcher.ended:.1f}"
    )


def test_engine_still_answers(corpus_result: CorpusResult) -> None:
    outcome = corpus_result.trivial
    assert outcome.status.value == "completed", outcome.error


def test_nothing_survives_the_corpus(corpus_result: CorpusResult) -> None:
    assert corpus_result.leftover_processes == []
    assert corpus_result.leftover_containers == []

"""Transient Docker API failures are retried: a run still completes, and leaves nothing.

A proxy in front of the Docker socket (tests/docker_proxy.py) fails the first requests of
the calls a run makes: a 500 on create, a create that happens but whose reply is lost, a
reset connection on inspect and on start, a 500 on remove. Three of them hit the create (docker-py
inspects what it created), which is as many as the retries allow. The CLI runs through it as users
run it (DOCKER_HOST names the proxy).
"""

from __future__ import annotations

import pytest

from tests.conftest import DOCKER, REPO, left_behind
from tests.docker_proxy import DockerFaultProxy, Fault

pytestmark = DOCKER

CONTAINER = r"/containers/[0-9a-f]{64}"
ARGS = ["--symbol", "ORCL", "--timeframe", "D1", "--start", "2010-01-01", "--end", "2010-12-31"]


def test_a_run_survives_transient_docker_failures(cli, tmp_path) -> None:
    faults = [
        Fault(r"POST /containers/create", "500", times=1),
        Fault(r"POST /containers/create", "lose_reply", times=1),
        Fault(rf"POST {CONTAINER}/start", "reset", times=1),
        Fault(rf"GET {CONTAINER}/json", "reset", times=1),
        Fault(rf"DELETE {CONTAINER}", "500", times=1),
    ]
    with DockerFaultProxy(tmp_path / "docker.sock", faults) as proxy:
        result = cli(
            "run", str(REPO / "examples" / "sma_cross.py"), *ARGS, "--json",
            env={"DOCKER_HOST": proxy.url},
        )
    assert result.code == 0, result.stderr[-2000:]
    assert result.status["status"] == "completed"
    # Every fault was really injected: the run met them and went on.
    assert [(f.pattern, f.done) for f in faults] == [(f.pattern, f.times) for f in faults]
    # The container whose create reply was lost was found and removed, as was the run's own.
    assert left_behind() == []


def test_a_daemon_that_keeps_failing_is_a_sandbox_error(cli, tmp_path) -> None:
    faults = [Fault(r"POST /containers/create", "500", times=1000)]
    with DockerFaultProxy(tmp_path / "docker.sock", faults) as proxy:
        result = cli(
            "run", str(REPO / "examples" / "sma_cross.py"), *ARGS, "--json",
            env={"DOCKER_HOST": proxy.url},
        )
    assert result.code == 4, result.stderr[-2000:]
    error = result.status["error"]
    assert error["type"] == "sandbox_error"
    assert "injected fault" in error["message"]
    assert 1 < faults[0].done <= 10  # retried, and boundedly
    assert left_behind() == []


@pytest.fixture(autouse=True)
def _library_volumes_ready(cli) -> None:
    """Seed the library volumes outside the proxy first, so the faults hit the run's calls."""
    cli("run", str(REPO / "examples" / "sma_cross.py"), *ARGS, "--json")

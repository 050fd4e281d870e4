"""Shared fixtures. Docker test modules declare `pytestmark = DOCKER`: the real daemon and the
real runner image, and when either is missing they fail, never skip, so CI cannot go green
without the sandbox. Tests of the PostgreSQL job store (marked `postgres`) take `postgres_url`:
an empty database on a server the session starts, and they fail likewise without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("BACKTEST_SHARED_DATA", REPO.parent / "shared" / "data" / "backtrader")
)
# The general suite runs on runc so that its timings are the same on every machine; the security
# corpus runs under each runtime explicitly. `BACKTEST_RUNTIME=runsc make test`: all on gVisor.
os.environ.setdefault("BACKTEST_RUNTIME", "runc")

LABEL = "io.backtest-sandbox"
DOCKER = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]

# The catalog every docker test reads: real bars from ../shared/data/backtrader/.
CATALOG_FILES = {
    ("ORCL", "D1"): "orcl-1995-2014.txt",
    ("NVDA", "D1"): "nvda-1999-2014.txt",
    ("YHOO", "D1"): "yhoo-1996-2014.txt",
    ("IDX", "D1"): "2006-day-001.txt",
    ("IDX", "W1"): "2006-week-001.txt",
    ("IDX", "M5"): "2006-min-005.txt",
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog holding the shared files, imported through the real `data import` path."""
    from backtest_sandbox.data.catalog import import_file
    from backtest_sandbox.domain.timeframes import Timeframe

    root = tmp_path_factory.mktemp("catalog")
    for (symbol, timeframe), name in CATALOG_FILES.items():
        import_file(SHARED_DATA / name, symbol, Timeframe.parse(timeframe), root)
    return root


# A service test with this mark runs over each job store: SQLite, then PostgreSQL. Its service
# fixture takes `database_url`.
BOTH_STORES = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """BACKTEST_DATABASE_URL for a service under test: empty (SQLite) unless the test is
    parametrized with BOTH_STORES and this is its PostgreSQL run."""
    if getattr(request, "param", "sqlite") == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return ""


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database for the session (tests/postgres.py): its URL. No binaries and
    no BACKTEST_TEST_DATABASE_URL is a failure that says what to install, never a skip."""
    from tests import postgres

    missing = None
    try:
        with postgres.server() as server, postgres.database(server) as url:
            yield url
    except postgres.PostgresMissing as e:
        missing = str(e)
    if missing is not None:
        pytest.fail(missing, pytrace=False)


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's database, emptied for this test: its postgresql:// URL."""
    from tests import postgres

    return postgres.empty(postgres_database)


@pytest.fixture(scope="session")
def docker_ready() -> Iterator[None]:
    """The daemon and the runner image, or a failure that says which is missing.

    At the end of the session, no container of this project may be left.
    """
    from backtest_sandbox.domain.errors import SandboxError
    from backtest_sandbox.domain.settings import Settings
    from backtest_sandbox.image import build as image
    from backtest_sandbox.sandbox.containers import docker_client

    try:
        client = docker_client()
    except SandboxError as e:
        pytest.fail(f"docker tests need the Docker daemon: {e}", pytrace=False)
    if not image.image_present(client, Settings()):
        pytest.fail(
            f"docker tests need the runner image {image.expected_tag(Settings())}: "
            "run `make image`",
            pytrace=False,
        )
    # Left by a process that died before this session (a killed earlier test run on the same
    # daemon): not this session's leak, and removed first, as the server does when it starts,
    # so that no check of this session counts them.
    for listed in leaked_containers(client):
        sys.stderr.write(f"removing a container left before these tests: {listed['Labels']}\n")
        client.api.remove_container(listed["Id"], force=True)
    yield
    left = leaked_containers(client)
    for listed in left:
        client.api.remove_container(listed["Id"], force=True)
    client.close()
    assert not left, f"containers left behind: {[c['Labels'] for c in left]}"


def leaked_containers(client: Any) -> list[dict[str, Any]]:
    """Our containers that nobody will remove: their owner died, or it is this test process.

    Containers of other live processes (a developer's server) are theirs, not a leak. Listed
    with the low-level API: no per-container inspect that a concurrent removal could fail.
    """
    from backtest_sandbox.sandbox.containers import LABEL_OWNER, owner_is_alive, process_owner_id

    me = process_owner_id()
    leaked = []
    for listed in client.api.containers(all=True, filters={"label": LABEL}):
        owner = (listed.get("Labels") or {}).get(LABEL_OWNER, "")
        if owner == me or not owner_is_alive(owner):
            leaked.append(listed)
    return leaked


def left_behind() -> list[str]:
    """Names of our containers nobody will remove (see `leaked_containers`)."""
    from backtest_sandbox.sandbox.containers import docker_client

    client = docker_client()
    try:
        return [c["Names"][0] for c in leaked_containers(client)]
    finally:
        client.close()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


@pytest.fixture
def cli(data_dir: Path, tmp_path: Path) -> Any:
    """Runs `backtest-sandbox` as users do, in a subprocess, with the test catalog."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        full_env = {
            **os.environ,
            "BACKTEST_DATA_DIR": str(data_dir),
            "BACKTEST_STATE_DIR": str(tmp_path / "state"),
            **(env or {}),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "backtest_sandbox", *args],
            capture_output=True, text=True, env=full_env, timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def write_strategy(tmp_path: Path) -> Any:
    def write(code: str, name: str = "strategy.py") -> Path:
        path = tmp_path / name
        path.write_text(code)
        return path

    return write


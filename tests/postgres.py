"""A real PostgreSQL server for the tests: a throw-away cluster in a temporary directory, or the
server `BACKTEST_TEST_DATABASE_URL` names (CI may start one). Each test starts on an empty
database.

The cluster listens on a unix socket in its directory and on a free loopback port, runs
without fsync (its data dies with the test session anyway), and is stopped and removed at the
end. initdb refuses to run as root, so as root the server runs as the `postgres` system user.
Missing binaries are a failure that says what to install, never a skip: CI must not go green
without the PostgreSQL store having been tested.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

URL_VARIABLE = "BACKTEST_TEST_DATABASE_URL"
BIN_VARIABLE = "BACKTEST_TEST_POSTGRES_BIN"  # a directory holding initdb and pg_ctl
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root
START_SECONDS = 30
_names = itertools.count()


class PostgresMissing(Exception):
    """No server to test against; the message says what to install or set."""


def find_binaries() -> Path:
    """The directory of initdb and pg_ctl: `BACKTEST_TEST_POSTGRES_BIN` if set, else Debian's
    newest /usr/lib/postgresql/<version>/bin, else the PATH's.

    Raises:
        PostgresMissing: no such directory holds both.
    """
    if os.environ.get(BIN_VARIABLE):
        candidates = [Path(os.environ[BIN_VARIABLE])]
    else:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(versions, key=lambda p: _version(p.parent.name), reverse=True)
        if (on_path := shutil.which("initdb")) is not None:
            candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise PostgresMissing(
        "the PostgreSQL tests need a PostgreSQL server: install its binaries (Debian: "
        "`apt-get install postgresql`; .ci/run does), point "
        f"{BIN_VARIABLE} at the directory of initdb and pg_ctl, or set {URL_VARIABLE} to a "
        "server where this user may CREATE DATABASE"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PREFIX = "backtest-pg-"  # /tmp/backtest-pg-<pid of the test process>-<random>


class TemporaryCluster:
    """initdb, pg_ctl start and stop, as the `postgres` user when we are root. `root`: a
    cluster directory left by another process, to stop and remove."""

    def __init__(self, binaries: Path, root: Path | None = None) -> None:
        self._bin = binaries
        self._as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresMissing(
                    f"the tests run as root and initdb refuses root: create the system user "
                    f"{SYSTEM_USER!r} (Debian's postgresql package does)"
                ) from None
            self._as_user = ["runuser", "-u", SYSTEM_USER, "--"]
        if root is None:
            # /tmp rather than pytest's temporary directory: that one is private to root, and
            # the server runs as another user.
            root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
            if owner is not None:
                os.chown(root, owner.pw_uid, owner.pw_gid)
        self.root = root
        self.data = root / "data"
        self.port = 0

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=START_SECONDS
        )
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stderr.strip()}\n{tail}")

    def start(self) -> str:
        """Create and start the cluster; the URL of its superuser's database, through the
        socket (`?host=` names the socket's directory)."""
        initdb = [str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        self._run(*initdb, "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(3):  # the port probed free may be taken before the server binds
            self.port = _free_port()
            options = (
                f"-c port={self.port} -c listen_addresses=127.0.0.1"
                f" -c unix_socket_directories={self.root} -c max_connections=300"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            log = str(self.root / "server.log")
            try:
                self._run(
                    str(self._bin / "pg_ctl"), "start", "-w", "-t", str(START_SECONDS),
                    "-D", str(self.data), "-l", log, "-o", options,
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return f"postgresql://postgres@/postgres?host={quote(str(self.root))}&port={self.port}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                pg_ctl = str(self._bin / "pg_ctl")
                self._run(pg_ctl, "stop", "-D", str(self.data), "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def reap_orphans(binaries: Path) -> None:
    """Stop and remove the clusters of test processes that died before stopping theirs (a
    killed pytest): pg_ctl starts the server as a daemon, which outlives its starter."""
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = root.name.removeprefix(PREFIX).split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        # Another session's reaper may get there first, or it was no cluster.
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            TemporaryCluster(binaries, root).stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def server() -> Iterator[str]:
    """The URL of a server where we may create databases, for the whole session.

    Raises:
        PostgresMissing: no server and no binaries to start one.
    """
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    binaries = find_binaries()
    reap_orphans(binaries)
    cluster = TemporaryCluster(binaries)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{quote(name)}"))


@contextmanager
def database(admin: str) -> Iterator[str]:
    """A new database on the server of `admin` (a URL), for the session: its URL. Dropped
    afterwards, with any connection a test left open."""
    name = f"backtest_test_{os.getpid()}_{next(_names)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty(url: str) -> str:
    """Empty the database of `url` for the next test, as if new: every table goes (a test
    starts on no schema at all) and any connection a failed test left open is ended. Several times
    quicker than a new database (which copies a template and checkpoints)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return url

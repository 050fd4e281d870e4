"""Strategy containers: the hardened container spec, start, wait, kill, reap.

docker-py's and requests' errors are caught here and re-raised as `SandboxError`, so the rest
of the package never sees them. A transient Docker API failure (a reset connection, a 5xx) is
retried a few times with a short backoff before it becomes one.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import LogConfig, Mount, Ulimit

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.settings import Settings

from .library_volumes import library_mounts
from .logs import LogStream
from .rundir import RunDir, new_run_dir

LABEL_PROJECT = "io.backtest-sandbox"  # on every container we start: how orphans are found
LABEL_RUN = "io.backtest-sandbox.run"  # the backtest id the container serves
LABEL_OWNER = "io.backtest-sandbox.owner"  # the host process that started it
LABEL_ATTEMPT = "io.backtest-sandbox.attempt"  # one create call: finds what a lost reply made

# Transient Docker API failures: retried after 0.1, 0.2, 0.4 s (about 0.7 s at most), then
# reported. Errors that say something about the request (4xx) are never retried.
RETRY_DELAYS_SECONDS = (0.1, 0.2, 0.4)
# An idle warm container outlives the pool's max age by this much before it ends itself: the
# pool recycles it first whenever the host is alive.
IDLE_SLACK_SECONDS = 10.0
DOCKER_LOG_BYTES = 8 * 1024 * 1024  # the json-file log's bound on disk, per container
OWN_MEMORY_MB = 512  # the host's own probes: importing pandas and backtrader fits
OWN_TIMEOUT_SECONDS = 120.0

# Under gVisor the container's cgroup also holds gVisor's own Go threads (the Sentry, the
# gofer); without headroom for them, gVisor cannot start and exits with code 2. The strategy's
# processes are still bounded, by gVisor's own accounting and by the sum.
RUNSC_PIDS_HEADROOM = 128

# Only these variables reach the sandbox; the host's environment (tokens, paths) never does.
SANDBOX_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "OPENBLAS_NUM_THREADS": "1",  # BLAS thread pools would eat the pids limit
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


def _process_start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 is the start time; the command name (field 2) may hold spaces, so split after it.
    return stat_line.rpartition(")")[2].split()[19]


def process_owner_id(pid: int | None = None) -> str:
    """`host:pid:start`: names the host process that started a container."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid)}"


def owner_is_alive(owner: str) -> bool:
    """Whether the process named by a container's owner label still runs on this host.

    Containers of other hosts (a shared daemon) count as alive: never ours to remove.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True
    if not pid_text.isdigit():
        return False
    return _process_start_ticks(int(pid_text)) == start


def docker_client(timeout: float = 30.0) -> docker.DockerClient:
    """A client for the daemon that DOCKER_HOST (or the default socket) names.

    Raises:
        SandboxError: the daemon cannot be reached.
    """
    try:
        client = docker.from_env(version="auto", timeout=int(timeout))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxError(f"Docker daemon unreachable: {e}") from e
    return client


@dataclass(frozen=True)
class ExitState:
    """What Docker saw of a container that has stopped."""

    exit_code: int
    oom_killed: bool


class Sandbox:
    """Starts and controls hardened single-use containers from the runner image."""

    def __init__(self, settings: Settings, client: docker.DockerClient, image: str) -> None:
        self.settings = settings
        self.client = client
        self.image = image
        self.runtime = self._choose_runtime()
        self.owner = process_owner_id()
        self.library_mounts: list[Mount] = []
        if settings.library_volumes:
            self.library_mounts = library_mounts(client, image, settings.cache_dir, self.run_own)

    def _choose_runtime(self) -> str | None:
        """The OCI runtime to ask for: None for the daemon's default (runc)."""
        if self.settings.runtime == "runc":
            return None
        available = set(self._call(self.client.info).get("Runtimes", {}))
        if "runsc" in available:
            return "runsc"
        if self.settings.runtime == "runsc":
            raise SandboxError(
                "BACKTEST_RUNTIME=runsc but the daemon has no runsc runtime; "
                "see `backtest-sandbox doctor`"
            )
        return None

    def container_spec(
        self, run_dir: RunDir, memory_mb: int, backtest_id: str, command: list[str] | None = None
    ) -> dict[str, Any]:
        """Every hardening default, in one place (docs/security.md "Container defaults").

        A strategy's container runs runner_image/init.py as PID 1 (it starts the harness and
        ends the container at its own deadline, host or no host). `command` replaces both,
        with docker-init as PID 1, only for the host's own probes.
        """
        s = self.settings
        security_opt = ["no-new-privileges:true"]  # setuid binaries cannot raise privileges
        if s.seccomp_profile is not None:  # else Docker's default profile applies
            security_opt.append(f"seccomp={s.seccomp_profile.read_text()}")
        spec: dict[str, Any] = {
            "image": self.image,
            "user": f"{s.sandbox_uid}:{s.sandbox_uid}",  # never root inside
            "network_mode": "none",  # no interface but loopback
            "read_only": True,  # the image cannot be changed
            # nr_inodes: one inode per 4 KiB page of the cap. tmpfs's default is half the host's
            # RAM pages, so an inode flood (empty files) would otherwise grow unreclaimable
            # kernel memory until an OOM kill or the timeout, instead of a plain ENOSPC.
            "tmpfs": {
                "/tmp": f"rw,noexec,nosuid,nodev,size={s.tmpfs_mb}m,nr_inodes={s.tmpfs_mb * 256},"
                "mode=1777"
            },
            "shm_size": f"{s.tmpfs_mb}m",  # /dev/shm is a tmpfs too; cap it the same
            "ipc_mode": "private",
            "cap_drop": ["ALL"],  # no capability at all, not even CHOWN or NET_RAW
            "security_opt": security_opt,
            "pids_limit": s.pids_limit,  # fork and thread bombs stop here
            "mem_limit": f"{memory_mb}m",
            "memswap_limit": f"{memory_mb}m",  # equal to memory: no swap to hide in
            "oom_score_adj": 1000,  # if the host runs short, the sandbox dies first
            "nano_cpus": int(s.cpus * 1e9),
            "ulimits": [
                Ulimit(name="nofile", soft=s.nofile, hard=s.nofile),
                Ulimit(name="fsize", soft=s.fsize_mb << 20, hard=s.fsize_mb << 20),
                Ulimit(name="core", soft=0, hard=0),  # no core dumps of hostile memory
            ],
            # PID 1: our init (see above), or docker-init for a probe; either forwards signals,
            # reaps zombies, and when it ends every process of the container ends.
            "init": command is not None,
            "command": command or self._strategy_command(),
            "environment": dict(SANDBOX_ENVIRONMENT),
            # Open, so that a verified run's bar pipe can be attached to it (stdio.py); a fast
            # run never reads it. Never a TTY: output stays framed, stdout apart from stderr.
            "stdin_open": True,
            "mounts": [
                Mount("/job", str(run_dir.input_dir), type="bind", read_only=True),
                Mount("/out", str(run_dir.output_dir), type="bind", read_only=False),
                *self.library_mounts,  # read-only: the image's own libraries, faster
            ],
            "labels": {LABEL_PROJECT: "1", LABEL_RUN: backtest_id, LABEL_OWNER: self.owner},
            "hostname": "sandbox",
            # The json-file log is on the host's disk: cap it so an output flood cannot fill it.
            # What users see is read by the host from an attach (logs.py, `log_stream`); this
            # log is only the fallback when the attach broke.
            "log_config": LogConfig(
                type="json-file",
                config={
                    "max-size": str(max(s.log_cap_bytes * 4, DOCKER_LOG_BYTES)),
                    "max-file": "1",
                },
            ),
            "detach": True,
        }
        if self.runtime is not None:
            spec["runtime"] = self.runtime
        if self.runtime == "runsc":
            spec["pids_limit"] = s.pids_limit + RUNSC_PIDS_HEADROOM
        return spec

    def _strategy_command(self) -> list[str]:
        """The init, then the harness; an idle container ends itself past the pool's max age
        (a cold one is handed its job at once, so its spec's deadline applies)."""
        idle = self.settings.pool_max_age_seconds + IDLE_SLACK_SECONDS
        return [
            "python3", "-I", "/opt/runner/init.py", "--idle-seconds", f"{idle:g}", "--",
            "python3", "-I", "/opt/runner/harness.py",
        ]

    def start(
        self, run_dir: RunDir, memory_mb: int, backtest_id: str, command: list[str] | None = None
    ) -> Container:
        """Create and start one container. The caller must `remove` it, whatever happens.

        Raises:
            SandboxError: the image is missing or the daemon refused the container.
        """
        container = self.create(run_dir, memory_mb, backtest_id, command)
        self.start_created(container)
        return container

    def create(
        self, run_dir: RunDir, memory_mb: int, backtest_id: str, command: list[str] | None = None
    ) -> Container:
        """Create one container, not started yet (so that its output can be attached to from
        the first byte). The caller must `remove` it, whatever happens.

        Raises:
            SandboxError: the image is missing or the daemon refused the container.
        """
        return self._create(self.container_spec(run_dir, memory_mb, backtest_id, command))

    def start_created(self, container: Container) -> None:
        """Start a container made by `create`; removed again if it cannot start.

        Raises:
            SandboxError: the daemon refused to start it.
        """
        try:
            self._call(container.start)
        except SandboxError:
            self.remove(container)
            raise

    def _create(self, spec: dict[str, Any]) -> Container:
        """`containers.create`, retried on transient failures without leaving a container."""
        created: Container = self._call(self._create_once, spec)
        return created

    def _create_once(self, spec: dict[str, Any]) -> Container:
        """One create attempt. A create whose reply was lost may still have made its
        container: each attempt carries its own label, and on a transient failure what the
        attempt made is removed before the error goes on (to `_retrying`)."""
        attempt = uuid.uuid4().hex
        labels = {**spec["labels"], LABEL_ATTEMPT: attempt}
        try:
            created: Container = self.client.containers.create(**{**spec, "labels": labels})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if _is_transient(e):
                self._remove_attempt(attempt)
            raise
        return created

    def _remove_attempt(self, attempt: str) -> None:
        listed = self._call(
            self.client.api.containers, all=True, filters={"label": f"{LABEL_ATTEMPT}={attempt}"}
        )
        for container in listed:
            self.remove(str(container["Id"]))

    def run_own(self, command: list[str], mounts: list[Mount]) -> str:
        """Our own code (never a strategy's) to completion in a container of the hardened
        spec, with `mounts` in place of the library volumes; its output.

        Raises:
            SandboxError: Docker failed, the command failed, or it ran past a minute.
        """
        run_dir = new_run_dir(self.settings)
        try:
            spec = self.container_spec(run_dir, OWN_MEMORY_MB, "host-probe", command)
            spec["mounts"] = [*spec["mounts"][:2], *mounts]  # /job and /out, then these
            container = self._create(spec)
            try:
                self._call(container.start)
                code = self.wait(container, OWN_TIMEOUT_SECONDS)
                output = self.logs(container).decode(errors="replace")
            finally:
                self.remove(container)
        finally:
            run_dir.remove()
        if code != 0:
            raise SandboxError(f"{command[-1][:60]!r} exited with {code}: {output[-500:]}")
        return output

    def is_running(self, container: Container) -> bool:
        self._call(container.reload)
        return bool(container.attrs["State"]["Running"])

    @property
    def can_update_memory(self) -> bool:
        """runc can change a running container's limits; gVisor's runsc has no `update`."""
        return self.runtime != "runsc"

    def set_memory(self, container: Container, memory_mb: int) -> None:
        """Change a running container's memory limit (memory + swap stay equal: no swap)."""
        self._call(container.update, mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m")

    def wait(self, container: Container, timeout: float) -> int | None:
        """The exit code once the container stops, or None if it still runs after `timeout`."""
        try:
            response = container.wait(timeout=max(timeout, 0.01))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return None
        except docker.errors.DockerException as e:
            raise SandboxError(f"waiting for container {container.short_id}: {e}") from e
        return int(response["StatusCode"])

    def kill(self, container: Container, signal: str = "SIGKILL") -> None:
        """Send a signal; a container that already stopped is not an error."""
        try:
            _retrying(container.kill, signal=signal)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if not isinstance(e, docker.errors.APIError):
                raise SandboxError(f"killing container {container.short_id}: {e}") from e
            if e.status_code not in (404, 409):  # gone, or not running any more
                raise SandboxError(f"killing container {container.short_id}: {e}") from e

    def exit_state(self, container: Container) -> ExitState:
        """The exit code and the OOM flag, read from Docker's own record of the container."""
        self._call(container.reload)
        state = container.attrs["State"]
        return ExitState(exit_code=int(state["ExitCode"]), oom_killed=bool(state["OOMKilled"]))

    def log_stream(self, container: Container) -> LogStream:
        """stdout and stderr as they come, from the start, until the container stops.

        An attach, not a follow of the json-file log: it carries the raw bytes straight from
        the container's pipes (a slow reader slows the writer rather than losing lines), where
        the log file is re-encoded and rotated under a flood.
        """
        stream = self._call(container.attach, stdout=True, stderr=True, stream=True, logs=True)
        # A run may print nothing for as long as it lasts: no read timeout on this socket
        # (docker-py does the same for a followed log, with these same helpers).
        api = self.client.api
        api._disable_socket_timeout(api._get_raw_response_socket(stream._response))
        return _AttachStream(stream)

    def attach_stdio(self, container: Container) -> Any:
        """One connection to the container's stdin, stdout and stderr, from the start (the
        verified run's bar pipe, stdio.py): docker-py's socket object (over a Unix socket, a
        SocketIO whose `_sock` is the socket itself).
        """
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "logs": 1}
        return self._call(self.client.api.attach_socket, container.id, params)

    def logs(self, container: Container) -> bytes:
        """stdout and stderr, interleaved; bounded by the json-file log cap."""
        data: bytes = self._call(container.logs, stdout=True, stderr=True)
        return data

    def remove(self, container: Container | str) -> None:
        """Force-remove a container (killing it if needed), by object or id; gone is fine."""
        container_id = container if isinstance(container, str) else container.id
        try:
            _retrying(self.client.api.remove_container, container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409 or "already in progress" not in str(e):
                raise SandboxError(f"removing container {container_id[:12]}: {e}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise SandboxError(f"removing container {container_id[:12]}: {e}") from e

    def labelled_containers(self) -> list[dict[str, Any]]:
        """Every container of this project on the daemon, running or not, as listed.

        The low-level list carries the labels: no per-container inspect, so a container that
        another process removes meanwhile cannot fail the listing.
        """
        found: list[dict[str, Any]] = self._call(
            self.client.api.containers, all=True, filters={"label": LABEL_PROJECT}
        )
        return found

    def remove_orphans(self) -> int:
        """Remove this project's containers whose owning process has died; returns how many.

        Containers of live processes (another server, a CLI run beside us) are left alone.
        """
        removed = 0
        for listed in self.labelled_containers():
            if not owner_is_alive((listed.get("Labels") or {}).get(LABEL_OWNER, "")):
                self.remove(str(listed["Id"]))
                removed += 1
        return removed

    @contextmanager
    def running(
        self, run_dir: RunDir, memory_mb: int, backtest_id: str, command: list[str] | None = None
    ) -> Iterator[Container]:
        """A started container that is removed when the block ends, however it ends."""
        container = self.start(run_dir, memory_mb, backtest_id, command)
        try:
            yield container
        finally:
            self.remove(container)

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call docker-py (`_retrying`); its errors become `SandboxError`."""
        try:
            return _retrying(fn, *args, **kwargs)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise _sandbox_error(e) from e


def _retrying(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call docker-py, again after a transient failure; the last error is raised as it came.

    Only for calls that may be repeated safely (a create through `Sandbox._create_once`).
    """
    for delay in RETRY_DELAYS_SECONDS:
        try:
            return fn(*args, **kwargs)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if not _is_transient(e):
                raise
        time.sleep(delay)
    return fn(*args, **kwargs)


class _AttachStream:
    """docker-py's attach stream, closed whole: its `close` shuts the socket down, and only
    closing the response as well releases the descriptor."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def close(self) -> None:
        self._stream.close()
        self._stream._response.close()


def _is_transient(error: Exception) -> bool:
    """A failure worth one more try: the connection broke, or the daemon answered 5xx."""
    broken = requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
    if isinstance(error, broken):
        return True
    if isinstance(error, docker.errors.APIError):
        return error.status_code is not None and error.status_code >= 500
    return False


def _sandbox_error(error: Exception) -> SandboxError:
    if isinstance(error, docker.errors.ImageNotFound):
        return SandboxError(
            f"runner image missing ({error.explanation}); run `backtest-sandbox build-image`"
        )
    return SandboxError(f"Docker: {error}")

"""Server settings: every one from a `BACKTEST_*` environment variable; the CLI's global flags
(`backtest-sandbox --help`) override the ones people change most.

Every container hardening default lives here as a setting, so that none of them is weakened
silently: changing one is an explicit, visible act.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .tenants import parse_api_tokens


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "backtest-sandbox"


# Docker's default profile tightened where Backtrader needs nothing (security/SECCOMP.md):
# no ptrace, io_uring, AF_VSOCK, personality changes or modify_ldt among others.
BUILTIN_SECCOMP_PROFILE = Path(__file__).resolve().parents[1] / "sandbox" / "seccomp.json"


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 10))


class Settings(BaseSettings):
    """Host-side settings. Read once at start-up; never mutated afterwards."""

    model_config = SettingsConfigDict(env_prefix="BACKTEST_", frozen=True, extra="ignore")

    # docs/interface.md section 6.
    data_dir: Path = Field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "data")
    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    # The job store: empty keeps it in SQLite in state_dir (one machine); a postgresql:// URL
    # puts it in that database, which several processes may share. Secret: it may hold a
    # password.
    database_url: SecretStr = SecretStr("")
    max_workers: int = Field(default_factory=default_workers, ge=1, le=64)
    runtime: Literal["auto", "runc", "runsc"] = "auto"
    pool_size: int | None = Field(None, ge=0, le=64)  # None: the worker count
    # "token1:tenant_a,token2:tenant_b". Secret: a repr or a log of the settings shows stars.
    api_tokens: SecretStr = SecretStr("")
    # The same, read from a file (one per line or comma-separated): tokens in the environment
    # or in argv (--api-tokens) can be read by other local users through /proc or ps.
    api_tokens_file: Path | None = None
    # HTTP: connections served at once (beyond it, 503 at once): slow clients cannot hold
    # every socket. Header timeouts belong to the reverse proxy in front (docs/security.md).
    http_max_connections: int = Field(64, ge=1)
    pool_max_age_seconds: float = Field(300.0, gt=0)  # idle warm containers are recycled
    # How long a run waits for a warm container when the pool is empty before it starts a
    # cold one: 0 never waits (a cold start costs about a second; waiting may cost more).
    pool_wait_seconds: float = Field(0.0, ge=0)

    # Tenants (README "Multi-tenant HTTP").
    tenant_max_running: int | None = Field(None, ge=1)  # None: max_workers (no per-tenant cap)
    tenant_max_queued: int = Field(100, ge=1)  # a submission beyond it is refused
    # Parameter sweeps (README "Parameter sweeps"): the largest grid, and how many of its
    # combinations one tenant may have waiting across its sweeps.
    max_sweep_combinations: int = Field(500, ge=1)
    # How long a worker keeps a sweep's container after one of its combinations, for the
    # next (a session: README "Parameter sweeps"); 0 runs each in a container of its own.
    session_keep_seconds: float = Field(5.0, ge=0)
    tenant_max_queued_combinations: int = Field(1000, ge=1)
    # What a tenant may keep (README "Storage"): jobs of every status, cache hits included,
    # and the bytes of its stored results. None: no limit.
    tenant_max_stored_jobs: int | None = Field(10_000, ge=1)
    tenant_max_stored_bytes: int | None = Field(2 * 1024**3, ge=1)
    retention_days: float | None = Field(30.0, gt=0)  # finished jobs older go; None keeps all
    cache_max_entries: int = Field(10_000, ge=0)  # the least recently used go first
    # The largest whole result one answer carries (read_backtest full=true); bigger ones are
    # read in pages (orders) and from the CSV resources.
    max_full_read_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    allowed_hosts: str = ""  # extra Host header values for HTTP, comma-separated

    # Past one machine (docs/SCALING.md): `local` runs jobs on threads of this server; with
    # `temporal`, `serve` only starts one workflow per backtest and `backtest-sandbox worker`
    # processes on the Docker hosts run them; the job store is then BACKTEST_DATABASE_URL's.
    backend: Literal["local", "temporal"] = "local"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "backtest-sandbox"
    # A worker heartbeats every third of this; a run not heard of for this long is given to
    # another worker, and its worker, if it is alive but cut off, kills the container itself.
    temporal_heartbeat_seconds: float = Field(10.0, ge=1)
    # How many times a run is started in all when its workers are lost (never for a run that
    # ended, whatever its status: a strategy's fault is not retried).
    temporal_max_attempts: int = Field(3, ge=1, le=10)

    # The runner image.
    image_repository: str = "backtest-sandbox-runner"
    base_image: str = "python:3.11-slim"  # used when present or pullable; else debootstrap
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))

    # Limits a config may ask for at most.
    max_timeout_seconds: float = Field(600.0, gt=0)
    max_memory_mb: int = Field(4096, ge=128)

    # Container hardening defaults (docs/security.md).
    sandbox_uid: int = Field(10001, ge=1)  # never 0: the strategy runs unprivileged
    pids_limit: int = Field(64, ge=8)  # stops fork and thread bombs
    cpus: float = Field(1.0, gt=0)  # CPU quota per container
    tmpfs_mb: int = Field(64, ge=1)  # /tmp size; counts towards the memory limit
    nofile: int = Field(256, ge=16)  # open files per process
    fsize_mb: int = Field(64, ge=1)  # largest file the sandbox may write
    # A seccomp profile (JSON file); "docker-default" (or empty) for Docker's own, looser one.
    seccomp_profile: Path | None = BUILTIN_SECCOMP_PROFILE
    kill_grace_seconds: float = Field(1.0, ge=0)  # SIGTERM to SIGKILL on timeout or cancel
    # A container ends itself this long after its run's timeout if no host has ended it (the
    # host that started it was killed): runner_image/init.py, PID 1, enforces it.
    self_deadline_grace_seconds: float = Field(10.0, gt=0)
    library_volumes: bool = True  # serve the image's Python libraries from read-only volumes

    # Verified mode's pipe (docs/security.md "Verified mode"): what one commit may hold, and
    # how long the strategy may take over one bar before the run ends as a timeout.
    # A message holds up to the events limit (an order is ~300 bytes of JSON).
    verified_max_message_bytes: int = Field(1024 * 1024, ge=1024)
    verified_max_events_per_bar: int = Field(1000, ge=1)
    verified_bar_seconds: float = Field(30.0, gt=0)

    # What the host reads back, capped before it is read.
    log_cap_bytes: int = Field(64 * 1024, ge=1024)
    result_cap_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_code_bytes: int = Field(1024 * 1024, ge=1)

    @field_validator("seccomp_profile", mode="before")
    @classmethod
    def _docker_default_profile(cls, value: object) -> object:
        return None if value in ("", "docker-default") else value

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("postgresql://", "postgres://")):
            # The value may hold a password: the message names the rule, never the value.
            raise ValueError("must be empty (SQLite) or a postgresql:// URL")
        return value

    @field_validator("data_dir", "state_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_pool_size(self) -> int:
        return self.max_workers if self.pool_size is None else self.pool_size

    @property
    def effective_tenant_max_running(self) -> int:
        return self.max_workers if self.tenant_max_running is None else self.tenant_max_running

    def tenant_tokens(self) -> dict[str, str]:
        """token -> tenant, from `api_tokens`.

        Raises:
            ValueError: an entry breaks a rule of `tenants.parse_api_tokens` (the message names
                the entry by its position, never its token).
        """
        spec = self.api_tokens.get_secret_value()
        if self.api_tokens_file is not None:
            try:
                text = self.api_tokens_file.read_text()
            except OSError as e:
                why = f"cannot be read ({e.strerror})"
                raise ValueError(f"BACKTEST_API_TOKENS_FILE: {why}") from None
            spec = ",".join(filter(None, [spec, *text.replace("\n", ",").split(",")]))
        return parse_api_tokens(spec)

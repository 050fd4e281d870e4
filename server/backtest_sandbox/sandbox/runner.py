"""The sandbox's one entry point: one `SandboxJob` in, one `Verdict` out.

It owns the Docker connection, the hardened `Sandbox` and the warm pool, and the life of one
run's container: taken (warm) or started (cold), handed its inputs, watched, read back, and
removed whatever raises on the way. It knows nothing of configs, data catalogs or jobs: the
layers above hand it bytes and limits.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import docker
from docker.models.containers import Container

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.image import build as image

from .containers import Sandbox, docker_client
from .conversation import BarChannel, Conversation, ConversationThread
from .fifo import FifoChannel
from .logs import LogCollector, cap_logs
from .pool import WarmPool
from .rundir import BARS_PIPE, COMMITS_PIPE, RunDir, new_run_dir
from .session import Session, Sessions, oom_counter
from .stdio import StdioChannel
from .supervisor import Observation, Verdict, decide, watch

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]  # (bars done, bars total)
DEFAULT_MEMORY_MB = 512  # what warm containers start with (the config's default)
# A session's harness ends itself when no run comes for this long past the host's own keep
# time: the host removes an idle session first whenever it is alive.
SESSION_IDLE_SLACK_SECONDS = 30.0


@dataclass(frozen=True)
class SandboxJob:
    """One run as the sandbox sees it: files for /job, the job spec, and its limits."""

    backtest_id: str
    spec: Mapping[str, Any]  # the job spec of runner_image/PROTOCOL.md; written last
    inputs: Mapping[str, bytes] = field(default_factory=dict)  # e.g. data.csv, written first
    memory_mb: int = DEFAULT_MEMORY_MB
    timeout_seconds: float = 120.0
    expected_bars: int = 0
    # Verified mode: the conversation held over the container's stdin and stdout while it
    # runs (the bar gate); None for a fast run, whose output is all logs.
    conversation: Conversation | None = None
    # Runs with the same session (a sweep's combinations: one tenant, one code) may run one
    # after another in one container, each in a process of its own (session.py).
    session: str | None = None


class SandboxRunner:
    """Runs `SandboxJob`s in single-use containers. One per process; thread-safe."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._sandbox: Sandbox | None = None
        self._pool: WarmPool | None = None
        self._sessions: Sessions | None = None
        self._lock = threading.Lock()
        self._closed = False

    def sandbox(self) -> Sandbox:
        """The sandbox, connected on first use (so a run refused early needs no daemon).

        Raises:
            SandboxError: no daemon, no runner image, or the runner was closed.
        """
        with self._lock:
            if self._closed:
                # Final: a run after close would start a new pool that nobody closes.
                raise SandboxError("the sandbox runner is closed")
            if self._sandbox is None:
                client = self._client = self._client or docker_client()  # close() releases it
                tag = image.expected_tag(self.settings)
                if not image.image_present(client, self.settings):
                    raise SandboxError(
                        f"runner image {tag} is missing; run `backtest-sandbox build-image`"
                    )
                self._sandbox = Sandbox(self.settings, client, tag)
                if self.settings.effective_pool_size > 0:
                    self._pool = WarmPool(
                        self._sandbox,
                        self.settings,
                        self.settings.effective_pool_size,
                        memory_mb=DEFAULT_MEMORY_MB,
                    )
                # Sessions need the FIFOs of a run directory, which gVisor's build cannot open.
                if self.settings.session_keep_seconds > 0 and self._sandbox.runtime != "runsc":
                    self._sessions = Sessions(
                        self.settings.session_keep_seconds, self.settings.max_workers
                    )
            return self._sandbox

    @property
    def pool(self) -> WarmPool | None:
        return self._pool

    def run(
        self,
        job: SandboxJob,
        *,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Verdict:
        """Run one job to its verdict. Blocks.

        The container, warm or cold, is removed and the run directory deleted however the run
        ends, an exception included.

        Raises:
            SandboxError: Docker failed (the run's container is gone all the same).
        """
        sandbox = self.sandbox()
        if cancel is not None and cancel.is_set():  # cancelled while it was being prepared
            return Verdict(JobStatus.CANCELLED)
        sessions = self._sessions
        if job.session is not None and sessions is not None:
            key = f"{job.session}/{job.memory_mb}"
            session = sessions.take(key) or self._open_session(sandbox, job, key)
            if session is not None:
                return self._run_in_session(sandbox, sessions, session, job, cancel, on_progress)
        warm = None
        if self._pool is not None:
            warm = self._pool.acquire(job.memory_mb, self.settings.pool_wait_seconds)
        with ExitStack() as cleanup:
            run_dir = warm.run_dir if warm else new_run_dir(self.settings)
            cleanup.callback(run_dir.remove)
            if warm is not None:
                container = warm.container
            else:
                container = sandbox.create(run_dir, job.memory_mb, job.backtest_id)
            cleanup.callback(sandbox.remove, container)
            # Attached before the job can start (a warm harness starts the moment the spec
            # lands, a cold one when the container starts): no output is missed.
            spec = dict(job.spec)
            talk = None
            if job.conversation is not None:  # verified: the bar pipe
                channel, spec["pipe"] = self._bar_channel(sandbox, container, run_dir)
                talk = ConversationThread(
                    channel, job.conversation, functools.partial(sandbox.kill, container)
                )
            collector = None
            if talk is None or channel.logs is None:  # else the output comes on the channel
                collector = LogCollector(sandbox.log_stream(container), self.settings.log_cap_bytes)
            self._hand_over(job, spec, run_dir)
            if warm is None:
                sandbox.start_created(container)
            observation = watch(
                sandbox,
                container,
                run_dir,
                timeout_seconds=job.timeout_seconds,
                result_cap_bytes=self.settings.result_cap_bytes,
                kill_grace_seconds=self.settings.kill_grace_seconds,
                cancel=cancel,
                on_progress=on_progress,
            )
            # From the stream; if it broke, what Docker's (rotated) log still holds.
            kept = talk.result() if talk is not None else None
            if collector is not None:
                kept = collector.result()
            logs, logs_cut = kept or cap_logs(sandbox.logs(container), self.settings.log_cap_bytes)
        return self._verdict(
            job, observation, talk, sandbox, container, warm is not None, logs, logs_cut
        )

    def _run_in_session(
        self,
        sandbox: Sandbox,
        sessions: Sessions,
        session: Session,
        job: SandboxJob,
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
    ) -> Verdict:
        """Run one job in its session's container. The container is kept for the session's
        next run unless this run ended it, or anything here raised.

        Raises:
            SandboxError: Docker failed (the session's container is gone then).
        """
        warm = session.runs > 0 or session.warm
        with ExitStack() as cleanup:
            cleanup.callback(sessions.give_back, session)  # closes it unless still alive
            run_dir = session.next_run()
            cleanup.callback(run_dir.remove)
            spec = dict(job.spec)
            talk = None
            if job.conversation is not None:
                channel, spec["pipe"] = _fifo_channel(run_dir)
                stop = functools.partial(sandbox.kill, session.container)
                talk = ConversationThread(channel, job.conversation, stop)
            collector, log_stream = session.collect_logs(run_dir, self.settings.log_cap_bytes)
            cleanup.callback(log_stream.close)
            self._hand_over(job, spec, run_dir)
            try:
                observation = session.watch(
                    run_dir,
                    timeout_seconds=job.timeout_seconds,
                    result_cap_bytes=self.settings.result_cap_bytes,
                    cancel=cancel,
                    on_progress=on_progress,
                )
                if talk is not None:
                    talk.result()  # raises what the host's side of the conversation raised
            except BaseException:
                session.alive = False  # what state it is in is unknown: never reused
                raise
            log_stream.end()
            logs, logs_cut = collector.result() or ("", False)
        return self._verdict(
            job, observation, talk, sandbox, session.container, warm, logs, logs_cut
        )

    def _hand_over(self, job: SandboxJob, spec: dict[str, Any], run_dir: RunDir) -> None:
        """Write the job into its run directory: the inputs first and the spec last (the
        harness starts when the spec appears)."""
        for name, data in job.inputs.items():
            run_dir.write_input(name, data)
        # The container's own deadline (runner_image/init.py): the host's clock ends the run
        # at its timeout; this ends it a grace later if the host is gone.
        grace = self.settings.self_deadline_grace_seconds
        spec["deadline_seconds"] = job.timeout_seconds + grace
        run_dir.write_spec(spec)

    def _open_session(self, sandbox: Sandbox, job: SandboxJob, key: str) -> Session | None:
        """A container for a new session: a warm one if the pool has one, else started now.
        None, and sessions off from then on, where the host cannot read a container's OOM
        kills (the run then gets a container of its own).

        Raises:
            SandboxError: Docker failed, or the harness did not become the session's parent.
        """
        warm = None
        if self._pool is not None:
            warm = self._pool.acquire(job.memory_mb, self.settings.pool_wait_seconds)
        if warm is not None:
            container, run_dir = warm.container, warm.run_dir
        else:
            run_dir = new_run_dir(self.settings)
            try:
                container = sandbox.start(run_dir, job.memory_mb, job.backtest_id)
            except SandboxError:
                run_dir.remove()
                raise
        oom_kills = oom_counter(container.id or "")
        if oom_kills is None:
            log.warning("sessions off: no memory cgroup file of the container counts OOM kills")
            sessions, self._sessions = self._sessions, None
            if sessions is not None:  # none was ever opened: this only stops its reaper
                sessions.close()
            sandbox.remove(container)
            run_dir.remove()
            return None
        session = Session(sandbox, container, run_dir, key, warm is not None, oom_kills)
        idle = self.settings.session_keep_seconds + SESSION_IDLE_SLACK_SECONDS
        try:
            session.open(idle_seconds=idle)
        except BaseException:
            session.close()
            raise
        return session

    def _verdict(
        self,
        job: SandboxJob,
        observation: Observation,
        talk: ConversationThread | None,
        sandbox: Sandbox,
        container: Container,
        warm: bool,
        logs: str,
        logs_cut: bool,
    ) -> Verdict:
        verdict = decide(
            observation,
            timeout_seconds=job.timeout_seconds,
            expected_bars=job.expected_bars,
            problem=talk.problem if talk is not None else None,
        )
        return replace(
            verdict,
            logs=logs,
            logs_cut=logs_cut,
            image=sandbox.image,
            runtime=sandbox.runtime or "runc",
            container_id=container.id,
            warm=warm,
        )

    def _bar_channel(
        self, sandbox: Sandbox, container: Container, run_dir: RunDir
    ) -> tuple[BarChannel, Any]:
        """The verified run's bar pipe and how the job spec names it (PROTOCOL.md): two FIFOs
        in the run directory, or, under gVisor (whose 2022 build cannot open a FIFO on a
        host mount), the container's stdin and stdout on one attach connection."""
        if sandbox.runtime == "runsc":
            stdio = StdioChannel(sandbox.attach_stdio(container), self.settings.log_cap_bytes)
            return stdio, "stdio"
        return _fifo_channel(run_dir)

    def remove_orphans(self) -> int:
        """Remove this project's containers whose owner process has died.

        Raises:
            SandboxError: the daemon cannot be reached.
        """
        return self.sandbox().remove_orphans()

    def close(self) -> None:
        """Remove the warm pool's containers and release the Docker client. Final."""
        with self._lock:
            self._closed = True
            if self._sessions is not None:
                self._sessions.close()
                self._sessions = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._client is not None:
                self._client.close()
            self._client = None
            self._sandbox = None


def _fifo_channel(run_dir: RunDir) -> tuple[FifoChannel, dict[str, str]]:
    """The bar pipe as two FIFOs in the run's directory, and how the job spec names them."""
    bars, commits = run_dir.make_bar_pipes()
    names = {
        "bars": f"{run_dir.job_path}/{BARS_PIPE}",
        "commits": f"{run_dir.out_path}/{COMMITS_PIPE}",
    }
    return FifoChannel(bars, commits), names

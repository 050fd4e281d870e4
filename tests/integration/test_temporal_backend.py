"""BACKTEST_BACKEND=temporal with a real Temporal dev server and a real PostgreSQL store, the
engine faked (no Docker): the service starts workflows, workers run them, the store answers.

What the fake engine stands for is tested with the real sandbox in test_temporal_e2e.py; here
the backend's own rules: one run per submission, a strategy's fault recorded and never
retried, a cancel reaching the run, a retried start doing nothing new, and a worker cut off
from Temporal killing its own run, which another worker then completes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs.service import BacktestService
from backtest_sandbox.jobs.store import open_store
from backtest_sandbox.jobs.temporal.worker import run_worker
from tests.unit.fake_engine import FakeEngine, config, make_result

pytestmark = pytest.mark.slow

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
BLOCK = CODE + "# block\n"
HEARTBEAT = 2.0  # seconds: short, so that a lost worker is noticed quickly
WAIT = 30.0


class WorkerThread:
    """`run_worker` on an event loop of its own, in a thread; `close` stops it as SIGTERM
    would."""

    def __init__(self, settings: Settings, engine: FakeEngine, slots: int = 1) -> None:
        self.engine = engine
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await run_worker(settings, slots=slots, engine=engine, stop=self._stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as e:  # reported by close()
                self.error = e
                self._ready.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the worker did not stop"
        assert self.error is None, self.error


@pytest.fixture
def settings(tmp_path: Path, temporal_address: str, postgres_url: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        backend="temporal",
        temporal_address=temporal_address,
        # A task queue per test: workflows a test leaves never reach the next test's workers.
        temporal_task_queue=f"test-{tmp_path.name}",
        temporal_heartbeat_seconds=HEARTBEAT,
        database_url=postgres_url,
        max_workers=2,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[BacktestService]:
    service = BacktestService(settings, FakeEngine(), open_store(settings))
    service.start()
    yield service
    service.close()


@pytest.fixture
def workers(settings: Settings) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(engine: FakeEngine | None = None, slots: int = 1, **changes: object) -> WorkerThread:
        # A state directory of its own, as on another machine: results reach the service
        # through PostgreSQL alone.
        own = {"state_dir": settings.state_dir.with_name(f"worker-{len(started)}"), **changes}
        worker = WorkerThread(settings.model_copy(update=own), engine or FakeEngine(), slots)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.engine.release.set()
        worker.close()


def wait_for(service: BacktestService, backtest_id: str, *statuses: JobStatus) -> JobStatus:
    job = service.wait("local", backtest_id, lambda job: job.status in statuses, timeout=WAIT)
    assert job.status in statuses, f"{backtest_id} still {job.status}, not one of {statuses}"
    return job.status


def submit(service: BacktestService, code: str = CODE, **cfg: object) -> str:
    return service.submit("local", code, "python", config(**cfg)).backtest_id


def test_a_submission_runs_on_a_worker_and_the_store_answers(
    service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    worker = workers()
    backtest_id = submit(service, CODE + "# bars: 40\n")
    assert wait_for(service, backtest_id, JobStatus.COMPLETED) is JobStatus.COMPLETED
    status = service.status("local", backtest_id, full=True)
    assert status.progress_percent == 100
    assert status.result is not None
    expected = make_result(backtest_id, bars=40)
    assert [p.value for p in status.result.equity_curve] == [p.value for p in expected.equity_curve]
    assert worker.engine.runs == [backtest_id]


def test_a_strategy_fault_is_recorded_and_never_retried(
    service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    worker = workers()
    backtest_id = submit(service, CODE + "# fail: runtime_error\n")
    assert wait_for(service, backtest_id, JobStatus.FAILED, JobStatus.COMPLETED) is (
        JobStatus.FAILED
    )
    status = service.status("local", backtest_id)
    assert status.error is not None and status.error.type.value == "runtime_error"
    time.sleep(HEARTBEAT * 2)  # a retry would have started by now
    assert worker.engine.runs == [backtest_id]


def test_a_cancel_reaches_the_running_run(
    service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    worker = workers()
    backtest_id = submit(service, BLOCK)
    worker.engine.wait_started(1, timeout=WAIT)
    running = service.wait(
        "local", backtest_id, lambda job: job.progress_done is not None, timeout=WAIT
    )
    assert running.status is JobStatus.RUNNING
    assert service.status("local", backtest_id).progress_percent == 50  # the worker's write
    asked = time.monotonic()
    assert service.cancel("local", backtest_id).status is JobStatus.CANCELLED
    worker.engine.wait_idle(timeout=WAIT)  # the fake run returns once its cancel event is set
    assert time.monotonic() - asked < HEARTBEAT + 2
    assert service.status("local", backtest_id).status is JobStatus.CANCELLED


def test_a_queued_cancel_never_runs(
    service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    worker = workers()
    first = submit(service, BLOCK)
    worker.engine.wait_started(1, timeout=WAIT)
    second = submit(service, CODE)  # waits: the only slot is taken
    assert service.cancel("local", second).status is JobStatus.CANCELLED
    worker.engine.release.set()
    wait_for(service, first, JobStatus.COMPLETED)
    time.sleep(1.0)
    assert worker.engine.runs == [first]
    assert service.status("local", second).status is JobStatus.CANCELLED


def test_a_retried_start_does_nothing_new(
    settings: Settings, service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    from backtest_sandbox.jobs.temporal.dispatch import TemporalDispatcher

    worker = workers()
    backtest_id = submit(service)
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    job = service._store.job(backtest_id)  # noqa: SLF001 - the row the submit wrote
    assert job is not None
    again = job.queued_again()
    dispatcher = TemporalDispatcher(settings)
    dispatcher.start()
    try:
        dispatcher.submitted(again)  # after it ended
    finally:
        dispatcher.stop()
    time.sleep(1.0)
    assert worker.engine.runs == [backtest_id]


def test_a_run_whose_server_died_before_starting_its_workflow_is_started_by_the_next(
    settings: Settings, workers: Callable[..., WorkerThread]
) -> None:
    """A server writes a run's row, then starts its workflow. One that died in between left a
    queued row that no worker would ever see; the next server to start hands it over."""
    from backtest_sandbox.domain.config import parse_config
    from backtest_sandbox.jobs.store import NewJob

    parsed = parse_config(config(), max_timeout_seconds=600, max_memory_mb=4096)
    orphan = NewJob(
        id="bt_" + "d1ed" * 8,
        tenant="local",
        language="python",
        code=CODE,
        config_json=parsed.canonical_json(),
        symbol=parsed.symbol,
        timeframe=parsed.timeframe.name,
    )
    store = open_store(settings)
    try:
        store.insert(orphan)  # and the server died here: no workflow
    finally:
        store.close()
    worker = workers()
    time.sleep(2.0)
    assert worker.engine.runs == []  # a worker alone never finds it
    service = BacktestService(settings, FakeEngine(), open_store(settings))
    service.start()
    try:
        assert wait_for(service, orphan.id, JobStatus.COMPLETED) is JobStatus.COMPLETED
        assert worker.engine.runs == [orphan.id]
        assert service.redispatch(queued_for=0.0) == 0  # nothing is queued any more
    finally:
        service.close()


class Partition:
    """A TCP relay to Temporal that can be cut: every connection through it stops moving
    bytes at once, as a partitioned host's would (nothing is refused: calls time out)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._sockets.append(client)
                if self.cut.is_set():
                    continue  # accepted and left unanswered
                upstream = socket.create_connection(self._target)
                self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data or self.cut.is_set():
                return  # dropped: nothing more goes through, nothing is closed either
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Close everything: the cut-off worker's calls then fail at once, and it can stop."""
        with self._lock:
            self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_worker_cut_off_from_temporal_kills_its_run_and_another_completes_it(
    settings: Settings, service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    partition = Partition(settings.temporal_address)
    try:
        cut_off = workers(temporal_address=partition.address)
        backtest_id = submit(service, BLOCK)
        cut_off.engine.wait_started(1, timeout=WAIT)
        rescuer_engine = FakeEngine()
        rescuer_engine.release.set()  # its run completes at once
        partition.cut.set()
        cut_at = time.monotonic()
        workers(engine=rescuer_engine)
        cut_off.engine.wait_idle(timeout=HEARTBEAT + 10)  # killed by its own worker
        killed_after = time.monotonic() - cut_at
        assert killed_after < HEARTBEAT + 3, killed_after
        assert wait_for(service, backtest_id, JobStatus.COMPLETED) is JobStatus.COMPLETED
        assert rescuer_engine.runs == [backtest_id]
        job = service._store.job(backtest_id)  # noqa: SLF001
        assert job is not None and job.attempts == 2 and job.result_digest is not None
    finally:
        partition.cut.set()
        partition.close()


def test_a_sweep_runs_as_workflows_and_one_of_two_servers_starts_its_out_of_sample_run(
    settings: Settings, service: BacktestService, workers: Callable[..., WorkerThread]
) -> None:
    from tests.unit.test_sweeps import CODE as SWEEP_CODE
    from tests.unit.test_sweeps import ParamEngine

    # A second server following the same sweep, on a machine of its own.
    other = BacktestService(
        settings.model_copy(update={"state_dir": settings.state_dir.with_name("other")}),
        FakeEngine(),
    )
    other.start()
    try:
        engines = [ParamEngine(), ParamEngine()]
        for engine in engines:
            workers(engine)
        grid = {"fast": [5, 10], "slow": [20, 30, 40]}
        sweep_id = service.submit_sweep(
            "local", SWEEP_CODE, "python", config(), grid=grid, oos_start="2020-07-01"
        ).sweep_id
        job = other.wait("local", sweep_id, lambda job: job.status.is_terminal, timeout=WAIT)
        assert job.status is JobStatus.COMPLETED, job.error_json
        for answering in (service, other):
            answer, heatmap = answering.sweep_status("local", sweep_id)
            assert answer.best is not None and answer.out_of_sample is not None
            assert answer.best.params == {"fast": 10, "slow": 30}  # the engine's best score
            assert answer.out_of_sample.params == answer.best.params
            assert answer.out_of_sample.metrics["bars"] == 7  # from July: the held-out range
            assert heatmap is not None
        # Six combinations and one out-of-sample run, each run once, on either worker.
        runs = [run for engine in engines for run in engine.runs]
        assert len(runs) == len(set(runs)) == 7
    finally:
        other.close()

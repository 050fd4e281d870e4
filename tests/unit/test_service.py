"""The service over a real job store and scheduler, with a fake engine (no Docker)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from backtest_sandbox.api.charts import MAX_RENDERED_POINTS, render_chart
from backtest_sandbox.api.config_document import config_document
from backtest_sandbox.domain.errors import ErrorType, InvalidRequest, NotFound, SandboxError
from backtest_sandbox.domain.models import EquityPoint, JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.engine import RunRequest
from backtest_sandbox.jobs.service import BacktestService
from backtest_sandbox.jobs.store import open_store
from tests.conftest import BOTH_STORES
from tests.unit.fake_engine import NO_DATA_SYMBOL, FakeEngine, config, make_result

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
BLOCK = CODE + "# block\n"


def settings_for(tmp_path: Path, workers: int = 2, database_url: str = "") -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        max_workers=workers,
        database_url=database_url,
    )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_service(
    tmp_path: Path, engine: FakeEngine, database_url: str
) -> Iterator[Callable[..., BacktestService]]:
    started: list[BacktestService] = []

    def make(workers: int = 2) -> BacktestService:
        service = BacktestService(settings_for(tmp_path, workers, database_url), engine)
        service.start()
        started.append(service)
        return service

    yield make
    engine.release.set()
    for service in started:
        service.close()


@pytest.fixture
def service(make_service: Callable[..., BacktestService]) -> BacktestService:
    return make_service()


WAIT = 10.0  # seconds: an upper bound on an event wait, never a pause


def wait_for(
    service: BacktestService, backtest_id: str, *statuses: JobStatus, tenant: str = "local"
) -> views.StatusResponse:
    """The job's status once it is one of `statuses`: woken by the store's writes."""
    job = service.wait(tenant, backtest_id, lambda job: job.status in statuses, timeout=WAIT)
    assert job.status in statuses, f"{backtest_id} still {job.status}, not one of {statuses}"
    return service.status(tenant, backtest_id)


def submit(service: BacktestService, code: str = CODE, tenant: str = "local", **cfg: object) -> str:
    return service.submit(tenant, code, "python", config(**cfg)).backtest_id


# -- submit, run, status -----------------------------------------------------------------------


@BOTH_STORES
def test_a_submission_runs_to_completion(service: BacktestService, engine: FakeEngine) -> None:
    submitted = service.submit("local", CODE, "python", config())
    assert submitted.model_dump() == {
        "backtest_id": ANY,
        "status": JobStatus.QUEUED,
        "cached": False,
        "error": None,
    }
    status = wait_for(service, submitted.backtest_id, JobStatus.COMPLETED)
    expected = make_result(submitted.backtest_id)
    assert status.model_dump(mode="json") == {
        "backtest_id": submitted.backtest_id,
        "status": "completed",
        "progress_percent": 100.0,
        "estimated_completion": status.finished_at,
        "result": {
            **expected.model_dump(mode="json"),
            "equity_curve_total": 10,
            "equity_curve_downsampled": False,
            "trade_log_total": 3,
            "trade_log_truncated": False,
            "order_log_total": 0,
            "order_log_truncated": False,
            "logs": "x" * views.INLINE_LOG_CHARS,
            "logs_truncated": True,
            "analyzers_omitted": [],
            "cached": False,
            "chart": None,
        },
        "error": None,
        "cached": False,
        "language": "python",
        "symbol": "SPY",
        "timeframe": "D1",
        "created_at": ANY,
        "started_at": ANY,
        "finished_at": ANY,
    }
    assert engine.runs == [submitted.backtest_id]


def test_status_full_returns_the_whole_result(service: BacktestService) -> None:
    backtest_id = submit(service)
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    status = service.status("local", backtest_id, full=True)
    assert status.result is not None and status.result.logs == "x" * 5000


def test_status_reads_the_view_stored_with_the_result(
    tmp_path: Path, service: BacktestService
) -> None:
    backtest_id = submit(service, CODE + "# bars: 3000\n")
    status = wait_for(service, backtest_id, JobStatus.COMPLETED)
    store = open_store(service.settings)
    try:
        job = store.get("local", backtest_id)
    finally:
        store.close()
    assert job is not None and job.result_digest is not None
    directory = service.settings.state_dir / "results" / job.result_digest
    stored = views.ResultView.model_validate_json((directory / "summary.json").read_bytes())
    assert status.result == stored.model_copy(update={"backtest_id": backtest_id})
    assert status.result is not None and len(status.result.equity_curve) <= 100


@BOTH_STORES
def test_a_failed_run_carries_its_error(service: BacktestService) -> None:
    backtest_id = submit(service, CODE + "# fail: runtime_error\n")
    status = wait_for(service, backtest_id, JobStatus.FAILED)
    assert (status.result, status.error and status.error.model_dump()) == (
        None,
        {"type": ErrorType.RUNTIME_ERROR, "message": "fake runtime_error", "details": {}},
    )


@BOTH_STORES
def test_progress_and_estimated_completion_while_running(
    service: BacktestService, engine: FakeEngine
) -> None:
    backtest_id = submit(service, BLOCK + "# bars: 1000\n")
    engine.wait_started(1)
    service.wait("local", backtest_id, lambda job: bool(job.progress_done), timeout=WAIT)
    status = service.status("local", backtest_id)
    assert (status.status, status.progress_percent) == (JobStatus.RUNNING, 50.0)
    assert status.estimated_completion is not None
    assert status.estimated_completion >= (status.started_at or "")


def test_the_workers_never_exceed_max_workers(service: BacktestService, engine: FakeEngine) -> None:
    ids = [submit(service, BLOCK + f"# {n}\n") for n in range(8)]
    engine.wait_started(2)
    time.sleep(0.05)  # give a third worker, if there were one, the chance to start
    assert engine.running == 2
    assert service.stats("local").workers_busy == 2
    engine.release.set()
    for backtest_id in ids:
        wait_for(service, backtest_id, JobStatus.COMPLETED)
    assert engine.max_running == 2


def test_one_tenant_is_served_first_in_first_out(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(workers=1)
    ids = [submit(service, CODE + f"# {n}\n") for n in range(5)]
    for backtest_id in ids:
        wait_for(service, backtest_id, JobStatus.COMPLETED)
    assert engine.runs == ids


@BOTH_STORES
def test_a_flooding_tenant_does_not_hold_back_another(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(workers=1)
    first = submit(service, BLOCK, tenant="a")
    engine.wait_started(1)
    flood = [submit(service, CODE + f"# {n}\n", tenant="a") for n in range(5)]
    other = submit(service, CODE, tenant="b")
    engine.release.set()
    wait_for(service, flood[-1], JobStatus.COMPLETED, tenant="a")
    assert engine.runs[:3] == [first, other, flood[0]]


def test_an_engine_that_raises_fails_the_job_and_the_worker_lives_on(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(workers=1)

    def explode(request: RunRequest) -> None:
        if "# explode" in request.code:
            raise RuntimeError("engine bug")

    engine.on_run = explode
    broken = submit(service, CODE + "# explode\n")
    fine = submit(service)
    status = wait_for(service, broken, JobStatus.FAILED)
    assert status.error is not None and status.error.model_dump() == {
        "type": ErrorType.SANDBOX_ERROR,
        "message": "internal error: RuntimeError",
        "details": {},
    }
    wait_for(service, fine, JobStatus.COMPLETED)


# -- validation: nothing is queued -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "language", "cfg", "message"),
    [
        pytest.param(
            "é" * (512 * 1024 + 1),
            "python",
            config(),
            ("code_content: must be at most 1048576 bytes of UTF-8 (got 1048578)"),
            id="oversize-in-utf8-bytes",
        ),
        pytest.param(
            "x = 1\x00", "python", config(), "code_content: must not contain NUL bytes", id="nul"
        ),
        pytest.param("  \n", "python", config(), "code_content: must not be empty", id="empty"),
        pytest.param(
            "x = '\ud800'",
            "python",
            config(),
            "code_content: must be valid Unicode text (it has lone surrogates)",
            id="lone-surrogate",
        ),
        pytest.param(CODE, "java", config(), "language: must be one of python, mq5", id="lang"),
        pytest.param(
            CODE,
            "python",
            config(start_date="soon"),
            ("config.start_date: Input should be a valid date or datetime, input is too short"),
            id="bad-date",
        ),
        pytest.param(
            CODE,
            "python",
            config(end_date="2019-01-01"),
            ("config: end_date must be after start_date"),
            id="dates-out-of-order",
        ),
        pytest.param(
            CODE,
            "python",
            config(timeout_seconds=601),
            ("config.timeout_seconds: must be at most this server's maximum 600.0"),
            id="over-the-server-limit",
        ),
        pytest.param(
            CODE,
            "python",
            config(colour="red"),
            ("config.colour: unknown field (not in the config schema)"),
            id="unknown-field",
        ),
        pytest.param(CODE, "python", [1, 2], "config: must be a JSON object", id="not-object"),
    ],
)
def test_invalid_requests_name_the_field_and_queue_nothing(
    service: BacktestService, code: str, language: str, cfg: object, message: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        service.submit("local", code, language, cfg)
    assert str(raised.value) == message
    assert service.stats("local").total == 0


def test_code_of_exactly_the_limit_is_accepted(service: BacktestService) -> None:
    code = "#" * service.settings.max_code_bytes
    assert service.submit("local", code, "python", config()).status is JobStatus.QUEUED


def test_mq5_fails_at_once_without_running(service: BacktestService, engine: FakeEngine) -> None:
    submitted = service.submit("local", "int OnInit() { return 0; }", "mq5", config())
    error = {
        "type": ErrorType.UNSUPPORTED_LANGUAGE,
        "message": "language 'mq5' is accepted but cannot run yet; only python runs",
        "details": {"language": "mq5", "runnable": ["python"]},
    }
    assert submitted.model_dump() == {
        "backtest_id": ANY,
        "status": JobStatus.FAILED,
        "cached": False,
        "error": error,
    }
    status = service.status("local", submitted.backtest_id)
    assert status.status is JobStatus.FAILED and status.error is not None
    assert status.error.model_dump() == error
    assert status.language == "mq5"
    assert engine.runs == []


# -- ids and tenants ---------------------------------------------------------------------------


def test_another_tenants_id_answers_like_an_unknown_one(service: BacktestService) -> None:
    mine = submit(service, tenant="a")
    unknown = "bt_" + "0" * 32
    for call in (
        service.status,
        service.read,
        service.orders,
        service.cancel,
        service.delete,
        service.summary,
    ):
        with pytest.raises(NotFound) as foreign:
            call("b", mine)  # type: ignore[operator]
        with pytest.raises(NotFound) as missing:
            call("b", unknown)  # type: ignore[operator]
        assert str(foreign.value) == f"backtest_id: no backtest {mine!r}"
        assert str(missing.value) == f"backtest_id: no backtest {unknown!r}"
    assert service.list_backtests("b").backtests == []
    assert service.status("a", mine).backtest_id == mine


def test_a_malformed_id_is_not_found(service: BacktestService) -> None:
    with pytest.raises(NotFound, match=r"^backtest_id: no backtest '\.\./etc'$"):
        service.status("local", "../etc")


# -- cancel and delete -------------------------------------------------------------------------


@BOTH_STORES
def test_cancel_a_queued_job(
    make_service: Callable[..., BacktestService], engine: FakeEngine
) -> None:
    service = make_service(workers=1)
    running = submit(service, BLOCK)
    engine.wait_started(1)
    queued = submit(service, CODE + "# queued\n")
    assert service.cancel("local", queued).model_dump() == {
        "backtest_id": queued,
        "status": JobStatus.CANCELLED,
    }
    engine.release.set()
    wait_for(service, running, JobStatus.COMPLETED)
    assert service.status("local", queued).status is JobStatus.CANCELLED
    assert engine.runs == [running]


@BOTH_STORES
def test_cancel_a_running_job_kills_it(service: BacktestService, engine: FakeEngine) -> None:
    backtest_id = submit(service, BLOCK)
    engine.wait_started(1)
    assert service.cancel("local", backtest_id).status is JobStatus.CANCELLED
    engine.wait_idle()  # the fake returns once its cancel event is set
    assert service.status("local", backtest_id).status is JobStatus.CANCELLED
    assert service.stats("local").cancelled == 1


def test_cancel_a_finished_job_keeps_its_status(service: BacktestService) -> None:
    backtest_id = submit(service)
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    assert service.cancel("local", backtest_id).status is JobStatus.COMPLETED


@BOTH_STORES
def test_delete_a_running_job(service: BacktestService, engine: FakeEngine) -> None:
    backtest_id = submit(service, BLOCK)
    engine.wait_started(1)
    assert service.delete("local", backtest_id).model_dump() == {
        "backtest_id": backtest_id,
        "deleted": True,
    }
    with pytest.raises(NotFound):
        service.status("local", backtest_id)
    engine.wait_idle()
    assert service.stats("local").total == 0


# -- the cache ---------------------------------------------------------------------------------


@BOTH_STORES
def test_an_identical_submission_is_answered_from_the_cache(
    service: BacktestService, engine: FakeEngine
) -> None:
    first = submit(service)
    done = wait_for(service, first, JobStatus.COMPLETED)
    again = service.submit("local", CODE, "python", config())
    assert again.model_dump() == {
        "backtest_id": ANY,
        "status": JobStatus.COMPLETED,
        "cached": True,
        "error": None,
    }
    assert again.backtest_id != first
    cached = service.status("local", again.backtest_id)
    assert cached.result is not None and done.result is not None
    assert cached.result.backtest_id == again.backtest_id  # the result names the new job
    assert cached.result.metrics == done.result.metrics
    assert cached.cached and cached.result.cached
    assert engine.runs == [first]
    assert service.stats("local").cache_hits == 1


def test_the_cache_is_per_tenant(service: BacktestService, engine: FakeEngine) -> None:
    first = submit(service, tenant="a")
    wait_for(service, first, JobStatus.COMPLETED, tenant="a")
    other = service.submit("b", CODE, "python", config())
    assert (other.status, other.cached) == (JobStatus.QUEUED, False)


def test_no_cache_key_means_no_caching(service: BacktestService, engine: FakeEngine) -> None:
    for _ in range(2):
        backtest_id = submit(service, symbol=NO_DATA_SYMBOL)
        wait_for(service, backtest_id, JobStatus.COMPLETED)
    assert len(engine.runs) == 2


@pytest.mark.parametrize("error_type", ["syntax_error", "runtime_error", "data_error"])
def test_deterministic_failures_are_cached(service: BacktestService, error_type: str) -> None:
    code = CODE + f"# fail: {error_type}\n"
    wait_for(service, submit(service, code), JobStatus.FAILED)
    again = service.submit("local", code, "python", config())
    assert (again.status, again.cached) == (JobStatus.FAILED, True)
    assert again.error is not None and again.error.type == error_type


@pytest.mark.parametrize(
    "error_type",
    ["timeout", "memory_limit", "crashed", "result_invalid", "sandbox_error"],
)
def test_other_failures_are_never_cached(
    service: BacktestService, engine: FakeEngine, error_type: str
) -> None:
    code = CODE + f"# fail: {error_type}\n"
    wait_for(service, submit(service, code), JobStatus.FAILED)
    again = service.submit("local", code, "python", config())
    assert (again.status, again.cached) == (JobStatus.QUEUED, False)
    wait_for(service, again.backtest_id, JobStatus.FAILED)
    assert len(engine.runs) == 2


def test_a_cancelled_run_is_never_cached(service: BacktestService, engine: FakeEngine) -> None:
    backtest_id = submit(service, BLOCK)
    engine.wait_started(1)
    service.cancel("local", backtest_id)
    again = service.submit("local", BLOCK, "python", config())
    assert (again.status, again.cached) == (JobStatus.QUEUED, False)


@BOTH_STORES
def test_deleting_the_only_job_forgets_its_cached_result(service: BacktestService) -> None:
    first = submit(service)
    wait_for(service, first, JobStatus.COMPLETED)
    service.delete("local", first)
    assert service.submit("local", CODE, "python", config()).cached is False


def test_a_cache_key_fault_only_disables_caching(
    service: BacktestService, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: RunRequest) -> str | None:
        raise SandboxError("daemon unreachable")

    monkeypatch.setattr(engine, "cache_key", broken)
    backtest_id = submit(service)
    wait_for(service, backtest_id, JobStatus.COMPLETED)


# -- listing, reading, orders, charts ----------------------------------------------------------


@BOTH_STORES
def test_list_pages_with_a_cursor(service: BacktestService) -> None:
    ids = [submit(service, CODE + f"# {n}\n") for n in range(5)]
    for backtest_id in ids:
        wait_for(service, backtest_id, JobStatus.COMPLETED)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = service.list_backtests("local", limit=2, cursor=cursor)
        seen += [b.backtest_id for b in page.backtests]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (seen, pages) == (ids[::-1], 3)
    first = service.list_backtests("local", limit=1).backtests[0]
    assert first.model_dump() == {
        "backtest_id": ids[-1],
        "kind": "backtest",
        "status": JobStatus.COMPLETED,
        "symbol": "SPY",
        "timeframe": "D1",
        "language": "python",
        "cached": False,
        "created_at": ANY,
        "started_at": ANY,
        "finished_at": ANY,
        "progress_percent": 100.0,
        "error_type": None,
    }
    assert service.list_backtests("local", status="failed").backtests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit: must be between 1 and 200"),
        ({"limit": 201}, "limit: must be between 1 and 200"),
        (
            {"status": "done"},
            "status: must be one of queued, running, completed, failed, cancelled",
        ),
        ({"cursor": "nonsense!"}, "cursor: is not a next_cursor returned by list_backtests"),
        ({"cursor": "eDox"}, "cursor: is not a next_cursor returned by list_backtests"),
    ],
)
def test_list_refuses_bad_arguments(
    service: BacktestService, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        service.list_backtests("local", **kwargs)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_read_cuts_a_large_result_down(service: BacktestService) -> None:
    backtest_id = submit(service, CODE + "# bars: 2000\n# trades: 250\n")
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    view = service.read("local", backtest_id, chart="drawdown")
    assert isinstance(view, views.ResultView)
    full = make_result(backtest_id, 2000, 250)
    assert len(view.equity_curve) <= views.INLINE_EQUITY_POINTS
    assert view.equity_curve[0] == full.equity_curve[0]
    assert view.equity_curve[-1] == full.equity_curve[-1]
    lowest = min(full.equity_curve, key=lambda p: p.value)
    highest = max(full.equity_curve, key=lambda p: p.value)
    assert lowest in view.equity_curve and highest in view.equity_curve
    assert (view.equity_curve_total, view.equity_curve_downsampled) == (2000, True)
    assert (len(view.trade_log), view.trade_log_total, view.trade_log_truncated) == (20, 250, True)
    assert view.chart is not None and view.chart.name == "drawdown"
    assert len(view.chart.points) <= views.INLINE_EQUITY_POINTS
    deepest = min(views.drawdown(full.equity_curve), key=lambda p: p.value)
    assert deepest in view.chart.points and deepest.value == pytest.approx(9000 / 20470 * 100 - 100)

    everything = service.read("local", backtest_id, full=True)
    assert isinstance(everything, views.ResultView)
    assert everything.equity_curve == full.equity_curve and everything.trade_log == full.trade_log
    assert everything.chart is None


def test_read_without_a_result_names_its_status(
    service: BacktestService, engine: FakeEngine
) -> None:
    backtest_id = submit(service, BLOCK)
    engine.wait_started(1)
    with pytest.raises(InvalidRequest) as refused:
        service.read("local", backtest_id)
    assert (refused.value.field, refused.value.rule) == (
        "backtest_id", f"{backtest_id} has no result: it is running"
    )


def test_read_refuses_an_unknown_chart(service: BacktestService) -> None:
    backtest_id = submit(service)
    with pytest.raises(InvalidRequest, match=r"^chart: must be 'equity' or 'drawdown'$"):
        service.read("local", backtest_id, chart="pie")


def test_orders_are_paged(service: BacktestService) -> None:
    backtest_id = submit(service, CODE + "# trades: 250\n")
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    trades = make_result(backtest_id, 10, 250).trade_log
    first = service.orders("local", backtest_id)
    assert first.model_dump() == {
        "backtest_id": backtest_id,
        "kind": "trades",
        "orders": trades[:100],
        "total": 250,
        "start": 0,
        "end": 100,
        "next_start": 100,
        "open_positions": [],
    }
    last = service.orders("local", backtest_id, start=200, end=700)
    assert (last.orders, last.end, last.next_start) == (trades[200:], 250, None)
    beyond = service.orders("local", backtest_id, start=300, end=400)
    assert (beyond.orders, beyond.start, beyond.end, beyond.next_start) == ([], 300, 300, None)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-1, 10, "start: must be >= 0"),
        (10, 5, "end: must be >= start"),
        (0, 501, "end: a page holds at most 500 orders"),
    ],
)
def test_orders_refuse_bad_ranges(
    service: BacktestService, start: int, end: int, message: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        service.orders("local", submit(service), start=start, end=end)
    assert str(raised.value) == message


def test_the_order_log_is_paged_with_kind_orders(service: BacktestService) -> None:
    backtest_id = submit(service, CODE + "# trades: 30\n# orders: 600\n")
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    expected = make_result(backtest_id, 10, 30, 600)
    first = service.orders("local", backtest_id, kind="orders")
    assert first.model_dump() == {
        "backtest_id": backtest_id,
        "kind": "orders",
        "orders": expected.order_log[:100],
        "total": 600,
        "start": 0,
        "end": 100,
        "next_start": 100,
        "open_positions": expected.open_positions,
    }
    last = service.orders("local", backtest_id, start=450, end=950, kind="orders")
    assert (last.orders, last.end, last.next_start) == (expected.order_log[450:], 600, None)
    # The default is still the trade log, and it carries the open positions too.
    trades = service.orders("local", backtest_id)
    assert (trades.kind, trades.orders, trades.total) == ("trades", expected.trade_log, 30)
    assert trades.open_positions == expected.open_positions != []
    # The status summary counts the orders and shows the positions, without the log itself.
    summary = service.status("local", backtest_id).result
    assert summary is not None
    assert (summary.order_log, summary.order_log_total, summary.order_log_truncated) == (
        [],
        600,
        True,
    )
    assert summary.open_positions == expected.open_positions
    whole = service.read("local", backtest_id, full=True)
    assert (whole.order_log, whole.order_log_truncated) == (expected.order_log, False)


def test_orders_refuse_an_unknown_kind(service: BacktestService) -> None:
    with pytest.raises(InvalidRequest) as raised:
        service.orders("local", submit(service), kind="fills")
    assert (raised.value.field, raised.value.rule) == ("kind", "must be 'trades' or 'orders'")


def test_a_result_stored_before_the_order_log_has_no_orders(
    service: BacktestService, tmp_path: Path
) -> None:
    backtest_id = submit(service, CODE + "# orders: 5\n")
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    stored = [*tmp_path.rglob("orders.jsonl"), *tmp_path.rglob("orders.idx")]
    assert len(stored) == 2
    for path in stored:  # as a directory written before they existed
        path.unlink()
    page = service.orders("local", backtest_id, kind="orders")
    assert (page.orders, page.total, page.next_start) == ([], 0, None)


def test_orders_of_a_failed_job_say_why_there_are_none(service: BacktestService) -> None:
    backtest_id = submit(service, CODE + "# fail: timeout\n")
    wait_for(service, backtest_id, JobStatus.FAILED)
    with pytest.raises(InvalidRequest) as raised:
        service.orders("local", backtest_id)
    assert str(raised.value) == f"backtest_id: {backtest_id} has no result: it is failed (timeout)"


@pytest.mark.parametrize("name", ["equity", "drawdown"])
def test_chart_gives_the_series_and_a_png(service: BacktestService, name: str) -> None:
    backtest_id = submit(service, CODE + "# bars: 3000\n")
    wait_for(service, backtest_id, JobStatus.COMPLETED)
    series, drawn = service.chart("local", backtest_id, name)
    assert (drawn.points_total, drawn.downsampled) == (3000, True)
    assert len(drawn.points) <= MAX_RENDERED_POINTS
    png = render_chart(drawn)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert (series.name, series.points_total, series.downsampled) == (name, 3000, True)
    assert len(series.points) <= views.INLINE_EQUITY_POINTS
    full, _ = service.chart("local", backtest_id, name, full=True)
    assert (len(full.points), full.downsampled) == (3000, False)
    with pytest.raises(InvalidRequest, match=r"^name: must be 'equity' or 'drawdown'$"):
        service.chart("local", backtest_id, "volume")


# -- stats and life cycle ----------------------------------------------------------------------


@BOTH_STORES
def test_stats(service: BacktestService) -> None:
    first = submit(service)
    wait_for(service, first, JobStatus.COMPLETED)
    submit(service)  # a cache hit
    wait_for(service, submit(service, CODE + "# fail: crashed\n"), JobStatus.FAILED)
    assert service.stats("local").model_dump() == {
        "queued": 0,
        "running": 0,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
        "total": 3,
        "workers": 2,
        "workers_busy": 0,
        "cache_hits": 1,
        "avg_execution_seconds": ANY,
        "avg_queue_wait_seconds": ANY,
    }
    assert service.stats("someone else").total == 0


@BOTH_STORES
def test_a_clean_stop_puts_running_jobs_back_in_the_queue(
    tmp_path: Path, engine: FakeEngine, database_url: str
) -> None:
    settings = settings_for(tmp_path, workers=1, database_url=database_url)
    service = BacktestService(settings, engine)
    service.start()
    running = submit(service, BLOCK)
    queued = submit(service, CODE)
    engine.wait_started(1)
    service.close()
    assert engine.closed
    store = open_store(settings)
    try:
        jobs = {job_id: store.get("local", job_id) for job_id in (running, queued)}
        assert {k: (j.status, j.attempts) for k, j in jobs.items() if j} == {
            running: (JobStatus.QUEUED, 0),
            queued: (JobStatus.QUEUED, 0),
        }
    finally:
        store.close()


@BOTH_STORES
def test_restart_runs_what_a_killed_process_left(
    tmp_path: Path, engine: FakeEngine, database_url: str
) -> None:
    settings = settings_for(tmp_path, workers=1, database_url=database_url)
    # A "previous process": one job it was running when it died, one still queued.
    store = open_store(settings)
    dead = BacktestService(settings, engine, store=store)  # never started: no workers
    interrupted = submit(dead)
    waiting = submit(dead, CODE + "# waiting\n")
    assert store.claim_next() is not None
    store.close()
    dead._results.close()  # its connections end with it

    engine.orphans_error = SandboxError("no daemon")  # logged; recovery still goes on
    service = BacktestService(settings, engine)
    recovery = service.start()
    try:
        assert (recovery.requeued, recovery.failed, recovery.queued) == (1, 0, 2)
        for backtest_id in (interrupted, waiting):
            wait_for(service, backtest_id, JobStatus.COMPLETED)
        assert engine.runs == [interrupted, waiting]
    finally:
        service.close()


@BOTH_STORES
def test_restart_gives_up_on_a_job_interrupted_twice(
    tmp_path: Path, engine: FakeEngine, database_url: str
) -> None:
    settings = settings_for(tmp_path, workers=1, database_url=database_url)
    store = open_store(settings)
    dead = BacktestService(settings, engine, store=store)
    backtest_id = submit(dead)
    assert store.claim_next() is not None  # a first process dies while running it,
    store.recover(max_attempts=2, give_up_error_json="{}")  # a second one recovers it
    assert store.claim_next() is not None  # and dies while running it again
    store.close()
    dead._results.close()  # its connections end with it

    with BacktestService(settings, engine) as service:
        status = service.status("local", backtest_id)
    assert engine.orphans_removed == 1
    assert status.status is JobStatus.FAILED and status.error is not None
    assert status.error.model_dump() == {
        "type": ErrorType.SANDBOX_ERROR,
        "message": "the server stopped twice while this backtest ran; it was not retried again",
        "details": {"attempts": 2},
    }
    assert engine.runs == []


# -- views -------------------------------------------------------------------------------------


def point(i: int, value: float) -> EquityPoint:
    return EquityPoint(timestamp=f"t{i:05d}", value=value)


def test_downsample_keeps_ends_and_extremes() -> None:
    points = [point(i, float(i % 100)) for i in range(10_000)]
    points[4321] = point(4321, -50.0)
    points[7777] = point(7777, 999.0)
    kept = views.downsample(points, 500)
    assert len(kept) <= 500
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert points[4321] in kept and points[7777] in kept
    assert kept == sorted(kept, key=lambda p: p.timestamp)
    assert views.downsample(points[:10], 500) == points[:10]


def test_drawdown_is_percent_below_the_running_peak() -> None:
    values = [100.0, 120.0, 90.0, 130.0]
    series = views.drawdown([point(i, v) for i, v in enumerate(values)])
    assert [p.value for p in series] == [0.0, 0.0, -25.0, 0.0]


def test_the_config_document_lists_rules_and_limits(tmp_path: Path) -> None:
    document = config_document(settings_for(tmp_path))
    assert document["required"] == ["symbol", "timeframe", "start_date", "end_date"]
    assert document["optional"]["initial_capital"] == 10000.0
    assert document["optional"]["params"] == {}
    assert document["timeframes"]["H1"] == 16385
    assert set(document["error_types"]) == {t.value for t in ErrorType}
    assert document["limits"]["max_code_bytes"] == 1024 * 1024
    assert "$defs" not in document["schema"]
    assert {"type": "string", "enum": ANY} in document["schema"]["properties"]["timeframe"]["anyOf"]


@BOTH_STORES
def test_the_service_is_thread_safe_under_concurrent_submissions(
    service: BacktestService,
) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for k in range(5):
            backtest_id = submit(service, CODE + f"# {n}-{k}\n")
            with lock:
                ids.append(backtest_id)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(ids)) == 20
    for backtest_id in ids:
        wait_for(service, backtest_id, JobStatus.COMPLETED)

"""What a request costs in storage and in reading, whatever the result's size.

The engine is the fake one (results of any size, at once); the store, the result files and
the service are the real ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.errors import InvalidRequest, QuotaExceeded
from backtest_sandbox.domain.models import JobStatus
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.service import BacktestService
from tests.conftest import BOTH_STORES
from tests.unit.fake_engine import FakeEngine, config, make_result

CODE = "import backtrader as bt\nclass S(bt.Strategy):\n    pass\n"
WAIT = 30.0


@pytest.fixture
def make_service(tmp_path: Path, database_url: str) -> Iterator[Callable[..., BacktestService]]:
    """Services on the test's job store: SQLite, or PostgreSQL in a BOTH_STORES test's
    second run (its results then live in the database too)."""
    started: list[BacktestService] = []

    def make(**settings: object) -> BacktestService:
        service = BacktestService(
            Settings(
                state_dir=tmp_path / "state",
                data_dir=tmp_path / "data",
                database_url=database_url,
                **settings,
            ),
            FakeEngine(),
        )
        service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.close()


def run(service: BacktestService, code: str = CODE, tenant: str = "local") -> str:
    backtest_id = service.submit(tenant, code, "python", config()).backtest_id
    job = service.wait(tenant, backtest_id, lambda job: job.status.is_terminal, timeout=WAIT)
    assert job.status is JobStatus.COMPLETED, job.error_json
    return backtest_id


def disk_bytes(root: Path) -> int:
    """The state directory's size, with SQLite's write-ahead log folded into the database
    first (the log is a bounded journal, checkpointed and reused: not growth)."""
    with sqlite3.connect(root / "jobs.sqlite3") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def test_cache_hits_of_a_large_result_grow_the_disk_by_almost_nothing(
    make_service: Callable[..., BacktestService], tmp_path: Path
) -> None:
    service = make_service()
    first = run(service, CODE + "# bars: 400000\n# trades: 20000\n")
    result = service.status("local", first).result
    assert result is not None and result.equity_curve_total == 400_000
    before = disk_bytes(tmp_path / "state")
    assert before > 20_000_000  # a result of tens of MB
    hits = [
        service.submit("local", CODE + "# bars: 400000\n# trades: 20000\n", "python", config())
        for _ in range(20)
    ]
    assert all(hit.cached and hit.status is JobStatus.COMPLETED for hit in hits)
    grown = disk_bytes(tmp_path / "state") - before
    assert grown < 1_000_000, grown
    # Each hit reads as its own backtest, from the one stored result.
    status = service.status("local", hits[-1].backtest_id)
    assert status.result is not None and status.result.backtest_id == hits[-1].backtest_id
    assert status.cached


def test_status_and_pages_cost_the_same_whatever_the_size(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service()
    big = run(service, CODE + "# bars: 200000\n# trades: 50000\n")
    status = service.status("local", big)
    assert status.result is not None
    assert len(status.model_dump_json()) < 16 * 1024  # the compact summary, not the result
    assert len(status.result.equity_curve) <= 100 and len(status.result.trade_log) == 20
    assert status.result.trade_log[-1]["pnl"] == 49_999.0  # the last trades
    page = service.orders("local", big, start=49_990, end=50_100)
    assert ([o["pnl"] for o in page.orders], page.total, page.next_start) == (
        [float(n) for n in range(49_990, 50_000)],
        50_000,
        None,
    )
    series, drawn = service.chart("local", big, "equity")
    assert (len(series.points), len(drawn.points), series.points_total) == (100, 2000, 200_000)


def test_a_full_read_beyond_the_cap_is_refused_with_a_way_forward(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service(max_full_read_bytes=1024 * 1024)
    big = run(service, CODE + "# bars: 100000\n")
    with pytest.raises(InvalidRequest) as refused:
        service.status("local", big, full=True)
    assert refused.value.field == "full"
    assert f"backtest://{big}/equity.csv" in refused.value.rule
    csv = service.equity_csv("local", big)
    assert csv.startswith("timestamp,value\n") and csv.count("\n") == 100_001
    small = run(service, CODE + "# bars: 100\n")
    whole = service.status("local", small, full=True).result
    assert whole is not None and len(whole.equity_curve) == 100


def test_storage_quotas_count_cache_hits(make_service: Callable[..., BacktestService]) -> None:
    service = make_service(tenant_max_stored_jobs=2)
    run(service)
    assert service.submit("local", CODE, "python", config()).cached  # a hit: a second job
    with pytest.raises(QuotaExceeded) as refused:
        service.submit("local", CODE, "python", config())
    assert refused.value.rule == "tenant_max_stored_jobs"
    run(service, tenant="other")  # another tenant keeps its own


def test_a_syntax_error_is_refused_at_submit_without_running(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service()
    answer = service.submit("local", "class S(:\n", "python", config())
    assert answer.status is JobStatus.FAILED and answer.error is not None
    assert (answer.error.type, answer.error.details["line"]) == ("syntax_error", 1)
    assert service._engine.runs == []  # type: ignore[attr-defined]


@BOTH_STORES
def test_deleting_the_last_reference_removes_the_files(
    make_service: Callable[..., BacktestService],
) -> None:
    service = make_service()
    first = run(service)
    hit = service.submit("local", CODE, "python", config()).backtest_id
    stored = service._results.blobs.list  # the results directory, or PostgreSQL's rows
    assert len(stored()) == 1
    service.delete("local", first)
    assert len(stored()) == 1  # the hit still refers to it
    assert service.status("local", hit).result is not None
    service.delete("local", hit)
    assert stored() == []


V1_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL, status TEXT NOT NULL, language TEXT NOT NULL, code TEXT NOT NULL,
  config_json TEXT NOT NULL, cache_key TEXT, cached INTEGER NOT NULL DEFAULT 0,
  symbol TEXT NOT NULL, timeframe TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL,
  finished_at REAL, progress_done INTEGER, progress_total INTEGER, progress_at REAL,
  attempts INTEGER NOT NULL DEFAULT 0, result_json TEXT, view_json TEXT, error_json TEXT);
CREATE TABLE cache (key TEXT PRIMARY KEY, status TEXT NOT NULL, result_json TEXT,
  view_json TEXT, error_json TEXT, created_at REAL NOT NULL);
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_migrated_with_its_results(
    make_service: Callable[..., BacktestService], tmp_path: Path
) -> None:
    (tmp_path / "state").mkdir()
    backtest_id = "bt_" + "a" * 32
    old = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    old.executescript(V1_SCHEMA)
    old.execute(
        "INSERT INTO jobs (id, tenant, status, language, code, config_json, symbol, timeframe,"
        " created_at, finished_at, result_json) VALUES (?, 'local', 'completed', 'python',"
        " ?, '{}', 'ORCL', 'D1', 1.0, 2.0, ?)",
        (backtest_id, CODE, make_result(backtest_id, bars=500).model_dump_json()),
    )
    old.commit()
    old.close()
    service = make_service(retention_days=None)
    status = service.status("local", backtest_id)
    assert status.result is not None and status.result.equity_curve_total == 500
    assert service.orders("local", backtest_id).total == 3


def test_a_cursor_tells_nothing_of_other_tenants(
    make_service: Callable[..., BacktestService],
) -> None:
    import base64

    service = make_service()
    mine = [run(service, CODE + f"# {n}\n", tenant="a") for n in range(3)]
    for n in range(5):
        run(service, CODE + f"# other {n}\n", tenant="b")
    page = service.list_backtests("a", limit=2)
    assert page.next_cursor is not None
    assert base64.urlsafe_b64decode(page.next_cursor).decode() == f"v2:{mine[1]}"
    rest = service.list_backtests("a", limit=2, cursor=page.next_cursor)
    assert [b.backtest_id for b in rest.backtests] == [mine[0]]
    with pytest.raises(InvalidRequest, match="^cursor: names a backtest that was deleted"):
        service.list_backtests("b", limit=2, cursor=page.next_cursor)  # not b's backtest
    stats = service.stats("a")
    assert (stats.running, stats.workers_busy) == (0, 0)


@BOTH_STORES
def test_a_chart_is_drawn_once_and_kept(make_service: Callable[..., BacktestService]) -> None:
    service = make_service()
    backtest_id = run(service, CODE + "# bars: 5000\n")
    drawn: list[tuple[str, int]] = []

    def draw(series: views.ChartSeries) -> bytes:
        drawn.append((series.name, len(series.points)))
        return b"png of " + series.name.encode()

    for _ in range(3):
        assert service.chart_png("local", backtest_id, "drawdown", draw) == b"png of drawdown"
    assert drawn == [("drawdown", 2000)]  # once, from the stored reduction

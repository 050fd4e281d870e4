"""A result's files (jobs/results.py) on both storages: the results directory (the default)
and PostgreSQL's `result_blobs` table (when the job store is PostgreSQL, on a real server the
session starts: tests/postgres.py).

Every read is checked against the result it was written from, so a storage that loses,
reorders or cuts bytes fails here.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.jobs import results as results_module
from backtest_sandbox.jobs import views
from backtest_sandbox.jobs.results import ResultFiles, open_results
from backtest_sandbox.jobs.store.blobs import DirectoryBlobs
from backtest_sandbox.jobs.store.postgres_blobs import PostgresBlobs
from tests.unit.fake_engine import make_result

STORAGES = ["directory", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORAGES)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ResultFiles]]:
    """Opens a `ResultFiles` on the test's one storage: as another server or worker would."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    opened: list[ResultFiles] = []

    def make() -> ResultFiles:
        settings = Settings(state_dir=tmp_path / "state", database_url=url)
        files = open_results(settings)
        opened.append(files)
        return files

    yield make
    for files in opened:
        files.close()


@pytest.fixture
def files(opener: Callable[[], ResultFiles]) -> ResultFiles:
    return opener()


def test_the_storage_follows_the_job_store(tmp_path: Path, postgres_url: str) -> None:
    local = open_results(Settings(state_dir=tmp_path))
    shared = open_results(Settings(state_dir=tmp_path, database_url=postgres_url))
    try:
        assert isinstance(local.blobs, DirectoryBlobs)
        assert isinstance(shared.blobs, PostgresBlobs)
        assert local.blobs.root == tmp_path / "results"
    finally:
        local.close()
        shared.close()


def test_what_is_written_reads_back_whole_and_in_pages(files: ResultFiles) -> None:
    result = make_result("bt_one", bars=3000, trades=250, orders=40)
    digest, size = files.write(result)
    assert files.result(digest, "bt_two") == result.model_copy(update={"backtest_id": "bt_two"})
    assert size > files.size(digest) > 0  # the whole document, and the other shapes beside
    summary = files.summary(digest, "bt_two", cached=True)
    expected = views.result_view(result, cached=True, full=False)
    assert summary == expected.model_copy(update={"backtest_id": "bt_two"})
    equity = files.series(digest, "bt_two", "equity")
    assert equity.backtest_id == "bt_two" and 0 < len(equity.points) <= 2000
    for start, stop in [(0, 10), (7, 8), (240, 300), (250, 260), (5, 5)]:
        page, total = files.trades(digest, start, stop)
        assert (page, total) == (result.trade_log[start:stop], 250)
    page, total = files.orders(digest, 35, 100)
    assert (page, total) == (result.order_log[35:], 40)
    rows = list(csv.DictReader(io.StringIO(files.trades_csv(digest))))
    assert [float(row["pnl"]) for row in rows] == [t["pnl"] for t in result.trade_log]
    lines = files.equity_csv(digest).splitlines()
    assert lines[1:] == [f"{p.timestamp},{p.value!r}" for p in result.equity_curve]


def test_equal_content_is_stored_once(files: ResultFiles) -> None:
    first = files.write(make_result("bt_a", bars=500))
    assert files.write(make_result("bt_b", bars=500)) == first  # the id is not content
    assert files.write(make_result("bt_a", bars=501))[0] != first[0]
    assert sorted(d for d, _ in files.blobs.list()) == sorted(
        [first[0], files.write(make_result("bt_c", bars=501))[0]]
    )


def test_concurrent_writers_of_one_result_leave_one_whole_copy(files: ResultFiles) -> None:
    result = make_result("bt_x", bars=2000, trades=100)
    answers: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            answers.append(files.write(result))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(answers)) == 1
    digest = answers[0][0]
    assert files.trades(digest, 0, 1000) == (result.trade_log, 100)
    assert [d for d, _ in files.blobs.list()] == [digest]  # no half-written leftover


def test_another_process_reads_what_one_wrote(opener: Callable[[], ResultFiles]) -> None:
    writer, reader = opener(), opener()
    result = make_result("bt_w", bars=800, trades=30)
    digest, _ = writer.write(result)
    assert reader.trades(digest, 10, 20) == (result.trade_log[10:20], 30)
    reader.remove(digest)
    with pytest.raises(FileNotFoundError):
        writer.summary(digest, "bt_w", cached=False)


def test_a_chart_is_drawn_once_and_kept_with_its_result(files: ResultFiles) -> None:
    digest, size = files.write(make_result("bt_c", bars=300))
    series = files.series(digest, "bt_c", "drawdown")
    drawn: list[str] = []

    def draw(what: views.ChartSeries) -> bytes:
        drawn.append(what.name)
        return b"\x89PNG" + json.dumps(len(what.points)).encode()

    first = files.chart_png(digest, series, draw)
    assert files.chart_png(digest, series, draw) == first and drawn == ["drawdown"]
    assert files.write(make_result("bt_c", bars=300)) == (digest, size + len(first))
    files.remove(digest)
    with pytest.raises(FileNotFoundError):  # removed meanwhile: the chart is not kept alone
        files.chart_png(digest, series, draw)
    assert files.blobs.list() == []


def test_a_result_stored_before_the_order_log_has_no_orders(files: ResultFiles) -> None:
    digest, _ = files.write(make_result("bt_o", orders=5))
    kept = {name: files.blobs.get(digest, name) for name in ("result.json", "trades.idx")}
    files.remove(digest)
    files.blobs.put_new(digest, kept)
    assert files.orders(digest, 0, 10) == ([], 0)


def test_strays_go_and_referenced_results_stay(
    files: ResultFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, _ = files.write(make_result("bt_k", bars=100))
    stray, _ = files.write(make_result("bt_s", bars=101))
    assert files.remove_strays({kept}) == 0  # too young: may be a run being recorded
    monkeypatch.setattr(results_module, "STRAY_SECONDS", -60.0)
    assert files.remove_strays({kept}) == 1
    assert [d for d, _ in files.blobs.list()] == [kept]
    with pytest.raises(FileNotFoundError):
        files.size(stray)

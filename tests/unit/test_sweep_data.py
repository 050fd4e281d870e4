"""A sweep's bars are prepared once (jobs/sweep_data.py): its combinations share them, even
if the catalog changes mid-sweep, while runs outside that sweep read the catalog as it is now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest_sandbox.data.catalog import import_file, prepare
from backtest_sandbox.domain.config import BacktestConfig
from backtest_sandbox.domain.errors import DataError
from backtest_sandbox.domain.timeframes import Timeframe
from backtest_sandbox.jobs.sweep_data import SweepData
from tests.conftest import SHARED_DATA


def config(**more: object) -> BacktestConfig:
    fields = {"symbol": "ORCL", "timeframe": "D1", "start_date": "2005-01-01"}
    return BacktestConfig.model_validate({"end_date": "2009-12-31", **fields, **more})


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    import_file(SHARED_DATA / "orcl-1995-2014.txt", "ORCL", Timeframe.D1, tmp_path)
    return tmp_path


def replace_orcl(catalog_dir: Path, tmp_path: Path) -> None:
    """The catalog's ORCL bars, changed: every close a cent higher."""
    lines = (SHARED_DATA / "orcl-1995-2014.txt").read_text().splitlines()
    changed = [lines[0]]
    for line in lines[1:]:
        fields = line.split(",")
        fields[4] = f"{float(fields[4]) + 0.01:.6f}"
        fields[2] = f"{max(float(fields[2]), float(fields[4])):.6f}"
        changed.append(",".join(fields))
    source = tmp_path / "changed.txt"
    source.write_text("\n".join(changed) + "\n")
    import_file(source, "ORCL", Timeframe.D1, catalog_dir)


def test_a_sweeps_combinations_share_the_bars_of_its_first(
    catalog_dir: Path, tmp_path: Path
) -> None:
    shared = SweepData()
    first = shared.prepare(config(params={"fast": 5}), catalog_dir, "sweep-a")
    assert first.sha256 == prepare(config(), catalog_dir).sha256  # the catalog's bars

    replace_orcl(catalog_dir, tmp_path)
    now = prepare(config(), catalog_dir)
    assert now.sha256 != first.sha256  # the change is real

    # The same sweep's other combinations: its bars, as they were when it started.
    assert shared.prepare(config(params={"fast": 9}), catalog_dir, "sweep-a") is first
    # Another sweep, a run outside any sweep: the catalog as it is now.
    assert shared.prepare(config(params={"fast": 5}), catalog_dir, "sweep-b").sha256 == now.sha256
    assert shared.prepare(config(params={"fast": 5}), catalog_dir, None).sha256 == now.sha256
    # The same sweep with other dates (its winner's out-of-sample run): bars of their own.
    later = shared.prepare(config(start_date="2008-01-01"), catalog_dir, "sweep-a")
    assert later.first.startswith("2008-01-0") and later.sha256 == prepare(
        config(start_date="2008-01-01"), catalog_dir
    ).sha256


def test_a_failure_is_not_kept(tmp_path: Path) -> None:
    shared = SweepData()
    empty = tmp_path / "catalog"
    empty.mkdir()
    with pytest.raises(DataError, match="no data for ORCL D1"):
        shared.prepare(config(data_source="file"), empty, "sweep-a")
    import_file(SHARED_DATA / "orcl-1995-2014.txt", "ORCL", Timeframe.D1, empty)
    assert shared.prepare(config(data_source="file"), empty, "sweep-a").bars > 1000


def test_only_the_newest_sweeps_are_kept(catalog_dir: Path) -> None:
    shared = SweepData(kept=2)
    oldest = shared.prepare(config(), catalog_dir, "sweep-1")
    newer = shared.prepare(config(), catalog_dir, "sweep-2")
    assert shared.prepare(config(), catalog_dir, "sweep-1") is oldest  # now the newest used
    shared.prepare(config(), catalog_dir, "sweep-3")  # sweep-2 is the oldest used: gone
    assert shared.prepare(config(), catalog_dir, "sweep-1") is oldest
    assert shared.prepare(config(), catalog_dir, "sweep-2") is not newer

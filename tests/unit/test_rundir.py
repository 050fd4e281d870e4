"""The host reads back only a regular file, never through a link, never past the cap."""

from __future__ import annotations

import os
import stat

import pytest

from backtest_sandbox.sandbox.rundir import OversizeError, RunDir


@pytest.fixture
def run_dir(tmp_path):
    rd = RunDir(tmp_path, sandbox_uid=10001)
    yield rd
    rd.remove()


def test_layout_lets_the_sandbox_write_only_its_two_files(run_dir):
    assert stat.S_IMODE(run_dir.output_dir.stat().st_mode) == 0o755
    for name in ("result.json", "progress"):
        info = (run_dir.output_dir / name).stat()
        if os.geteuid() == 0:
            assert info.st_uid == 10001 and stat.S_IMODE(info.st_mode) == 0o600
    assert run_dir.output_dir.stat().st_uid == os.geteuid()


def test_spec_is_written_atomically_and_readable(run_dir):
    run_dir.write_spec({"protocol": 1})
    spec = run_dir.input_dir / "spec.json"
    assert spec.read_text() == '{"protocol": 1}'
    assert stat.S_IMODE(spec.stat().st_mode) == 0o644
    assert [p.name for p in run_dir.input_dir.iterdir()] == ["spec.json"]


def test_symlink_in_place_of_the_result_is_not_followed(run_dir, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    result = run_dir.output_dir / "result.json"
    result.unlink()
    result.symlink_to(secret)
    with pytest.raises(OSError):
        run_dir.read_result(1024)


def test_fifo_in_place_of_the_result_does_not_hang(run_dir):
    result = run_dir.output_dir / "result.json"
    result.unlink()
    os.mkfifo(result)
    with pytest.raises(OSError, match="not a regular file"):
        run_dir.read_result(1024)


def test_directory_in_place_of_the_result_is_refused(run_dir):
    result = run_dir.output_dir / "result.json"
    result.unlink()
    result.mkdir()
    with pytest.raises(OSError):
        run_dir.read_result(1024)


def test_oversize_result_is_refused(run_dir):
    (run_dir.output_dir / "result.json").write_bytes(b"x" * 2048)
    with pytest.raises(OversizeError):
        run_dir.read_result(1024)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"5 10\n", (5, 10)),
        (b"10 10", (10, 10)),
        (b"", None),
        (b"11 10", None),
        (b"-1 10", None),
        (b"a b", None),
        (b"1 2 3", None),
        (b"1 0", None),
    ],
)
def test_progress_is_parsed_defensively(run_dir, raw, expected):
    (run_dir.output_dir / "progress").write_bytes(raw)
    assert run_dir.read_progress() == expected


def test_remove_leaves_nothing(tmp_path):
    rd = RunDir(tmp_path, sandbox_uid=10001)
    rd.write_input("data.csv", b"x")
    rd.remove()
    assert list(tmp_path.iterdir()) == []

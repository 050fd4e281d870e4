"""The runner image's input hash, tag, lock and build context: all without Docker."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from backtest_sandbox.domain.errors import ImageBuildError
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.image import build as image

HASH = "0" * 64


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small stand-in for the source tree the image is built from."""
    tree = tmp_path / "tree"
    (tree / "runner_image").mkdir(parents=True)
    (tree / "Dockerfile.runner").write_text("FROM base\n")
    (tree / "runner_image" / "harness.py").write_text("print('harness')\n")
    (tree / "runner_image" / "compat.py").write_text("SHIM = 1\n")
    (tree / "runner_image" / "requirements.lock").write_text(f"pip==26.3 --hash=sha256:{HASH}\n")
    return tree


def test_input_hash_is_a_stable_sha256_wherever_the_tree_is(root: Path, tmp_path: Path) -> None:
    digest = image.input_hash(root)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert image.input_hash(root) == digest
    assert image.input_hash(shutil.copytree(root, tmp_path / "elsewhere")) == digest


EDITS: dict[str, Callable[[Path], object]] = {
    "harness edited": lambda r: (r / "runner_image/harness.py").write_text("print('other')\n"),
    "module added": lambda r: (r / "runner_image/extra.py").write_text(""),
    "module removed": lambda r: (r / "runner_image/compat.py").unlink(),
    "module renamed": lambda r: (r / "runner_image/compat.py").rename(r / "runner_image/c.py"),
    "dockerfile edited": lambda r: (r / "Dockerfile.runner").write_text("FROM other\n"),
    "lock edited": lambda r: (r / "runner_image/requirements.lock").write_text("pip==1\n"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_input_hash_changes_with_every_input(root: Path, edit: Callable[[Path], object]) -> None:
    before = image.input_hash(root)
    edit(root)
    assert image.input_hash(root) != before


def test_input_hash_ignores_what_does_not_go_into_the_image(root: Path) -> None:
    before = image.input_hash(root)
    (root / "runner_image" / "PROTOCOL.md").write_text("# notes\n")
    (root / "runner_image" / "__pycache__").mkdir()
    (root / "runner_image" / "__pycache__" / "harness.cpython-311.pyc").write_bytes(b"\0")
    (root / "runner_image" / "sub").mkdir()
    (root / "runner_image" / "sub" / "deep.py").write_text("")
    (root / "README.md").write_text("readme\n")
    assert image.input_hash(root) == before


def test_input_hash_needs_the_dockerfile(root: Path) -> None:
    (root / "Dockerfile.runner").unlink()
    with pytest.raises(ImageBuildError, match="Dockerfile.runner"):
        image.input_hash(root)


def test_the_lock_is_fully_hash_pinned_one_line_per_wheel() -> None:
    lock = image.runner_root() / image.LOCK
    requirement = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+( --hash=sha256:[0-9a-f]{64})+")
    lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    assert lines
    for line in lines:  # Dockerfile.runner drops the pip line with grep: no continuations
        assert requirement.fullmatch(line), line
    versions = {wheel.name: wheel.version for wheel in image.parse_lock(lock)}
    assert versions["backtrader"] == "1.9.78.123"
    assert versions["pandas"].startswith("3.")
    assert versions["numpy"].startswith("2.")
    assert {"pip", "python-dateutil", "tzdata"} <= versions.keys()


@pytest.mark.parametrize(
    "line",
    [
        "numpy==2.4.6",  # no hash
        f"numpy>=2 --hash=sha256:{HASH}",  # not exact
        f"numpy==2.4.6 --hash=md5:{HASH[:32]}",  # not sha256
        "numpy==2.4.6 \\",  # a continuation line
    ],
)
def test_parse_lock_refuses_anything_not_exact_and_hashed(tmp_path: Path, line: str) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# header\npip==26.3 --hash=sha256:{HASH}\n{line}\n")
    with pytest.raises(ImageBuildError, match=r"requirements\.lock:3"):
        image.parse_lock(lock)


def test_expected_tag_is_the_repository_and_16_digits_of_the_input_hash() -> None:
    digest = image.input_hash(image.runner_root())
    assert image.expected_tag(Settings()) == f"backtest-sandbox-runner:{digest[:16]}"
    custom = image.expected_tag(Settings(image_repository="registry.local/bt-runner"))
    assert re.fullmatch(r"registry\.local/bt-runner:[0-9a-f]{16}", custom)


def test_the_build_context_holds_what_the_dockerfile_copies(root: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "pip-26.3-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    buffer = io.BytesIO()
    image._write_context(root, [wheel], buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert set(members) == {
        "Dockerfile.runner",
        "requirements.lock",
        "runner",
        "runner/compat.py",
        "runner/harness.py",
        "wheels",
        "wheels/pip-26.3-py3-none-any.whl",
    }
    assert all(m.uid == 0 and m.mtime == 0 and not m.mode & 0o022 for m in members.values())
    # Every COPY from the context in the real Dockerfile names something the context has.
    dockerfile = (image.runner_root() / image.DOCKERFILE).read_text()
    sources = re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE)
    assert sources
    assert {source.rstrip("/") for source in sources} <= set(members)

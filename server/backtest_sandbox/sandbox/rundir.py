"""A run's private directory on the host: the one channel between the supervisor and a sandbox.

    <run dir>/in/   (root, 0755; mounted read-only at /job)  data.csv or bars.pipe, spec.json
    <run dir>/out/  (root, 0755; mounted read-write at /out) result.json, progress,
                                                              commits.pipe

A session's container (session.py) serves several runs: each has the same two directories
nested in the session's, `in/runs/<n>/` and `out/runs/<n>/` (`RunDir.nested`).

`out/` itself is not writable by the sandbox uid, so the sandbox can write the two files the
host created for it and nothing else: it cannot plant a symlink, a FIFO or a directory, nor
fill the host's disk with files. Reading back is still defensive: no symlink is followed, only
a regular file is read, and never more than the cap.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backtest_sandbox.domain.settings import Settings

RESULT_NAME = "result.json"
PROGRESS_NAME = "progress"
BARS_PIPE = "bars.pipe"  # in/: the verified run's bars, host -> harness (fifo.py)
COMMITS_PIPE = "commits.pipe"  # out/: its commits, harness -> host
PROGRESS_CAP_BYTES = 64


class OversizeError(ValueError):
    """A file the sandbox wrote is larger than the host agreed to read."""


class RunDir:
    """Creates, fills, reads back and removes one run's directory."""

    def __init__(self, root: Path, sandbox_uid: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        self._make(self.path / "in", self.path / "out", sandbox_uid, "/job", "/out")
        self._trees: tuple[Path, ...] = (self.path,)  # what remove() deletes

    @classmethod
    def nested(cls, session: RunDir, number: int) -> RunDir:
        """Run `number` of a session: `runs/<number>` inside the session's two directories."""
        run = cls.__new__(cls)
        session_runs = (session.input_dir / "runs", session.output_dir / "runs")
        for runs in session_runs:
            runs.mkdir(mode=0o755, exist_ok=True)
        name = str(number)
        run._make(
            session_runs[0] / name,
            session_runs[1] / name,
            session.sandbox_uid,
            f"{session.job_path}/runs/{name}",
            f"{session.out_path}/runs/{name}",
        )
        run._trees = (run.input_dir, run.output_dir)
        return run

    def _make(
        self, input_dir: Path, output_dir: Path, sandbox_uid: int, job_path: str, out_path: str
    ) -> None:
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.sandbox_uid = sandbox_uid
        self.job_path = job_path  # where the container sees input_dir
        self.out_path = out_path  # and output_dir
        self.input_dir.mkdir(mode=0o755)
        self.output_dir.mkdir(mode=0o755)
        for name in (RESULT_NAME, PROGRESS_NAME):
            self._create_sandbox_writable(self.output_dir / name)

    def make_output_fifo(self, name: str) -> Path:
        """A FIFO in out/ that only the sandbox uid may open (for writing): the one kind of
        file besides the two above that the sandbox can write."""
        path = self.output_dir / name
        os.mkfifo(path)
        if os.geteuid() == 0:
            os.chown(path, self.sandbox_uid, self.sandbox_uid)
            os.chmod(path, 0o600)
        else:  # as for the result file: an unprivileged host lets any uid write it
            os.chmod(path, 0o666)
        return path

    def make_bar_pipes(self) -> tuple[Path, Path]:
        """The verified run's two FIFOs (fifo.py): bars, which the sandbox may only read, and
        commits, the one FIFO the sandbox may write. Returns (bars, commits)."""
        bars = self.input_dir / BARS_PIPE
        os.mkfifo(bars)
        os.chmod(bars, 0o644)
        return bars, self.make_output_fifo(COMMITS_PIPE)

    def _create_sandbox_writable(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, self.sandbox_uid, self.sandbox_uid)
            else:  # an unprivileged host cannot chown: let any uid write this one file
                os.fchmod(fd, 0o666)
        finally:
            os.close(fd)

    def write_input(self, name: str, data: bytes) -> None:
        """Write a file the sandbox reads, atomically (readers never see half of it)."""
        tmp = self.input_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.replace(self.input_dir / name)

    def write_spec(self, spec: dict[str, Any]) -> None:
        """Hand the job to the sandbox. The spec goes last: the harness starts when it appears."""
        self.write_input("spec.json", json.dumps(spec, allow_nan=False).encode())

    def read_result(self, cap: int) -> bytes:
        """The raw result bytes, at most `cap`.

        Raises:
            OversizeError: the file is larger than `cap`.
            OSError: it is not a regular file (a symlink, FIFO or directory put in its place).
        """
        return _read_regular_file(self.output_dir / RESULT_NAME, cap)

    def read_progress(self) -> tuple[int, int] | None:
        """(bars done, bars total) as last reported, or None if nothing valid is there yet."""
        try:
            raw = _read_regular_file(self.output_dir / PROGRESS_NAME, PROGRESS_CAP_BYTES)
            done, total = (int(part) for part in raw.split())
        except (OSError, ValueError):
            return None
        if total <= 0 or not 0 <= done <= total:
            return None
        return done, total

    def remove(self) -> None:
        for tree in self._trees:
            shutil.rmtree(tree, ignore_errors=True)


def new_run_dir(settings: Settings) -> RunDir:
    """A fresh run directory under the state dir, writable by the settings' sandbox uid."""
    return RunDir(settings.state_dir / "runs", settings.sandbox_uid)


def _read_regular_file(path: Path, cap: int) -> bytes:
    # O_NOFOLLOW: a symlink is refused, never followed. O_NONBLOCK: a FIFO cannot hang us.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if info.st_size > cap:
            raise OversizeError(f"{path.name} is {info.st_size} bytes, over the cap of {cap}")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise OversizeError(f"{path.name} is over the cap of {cap} bytes")
    return data

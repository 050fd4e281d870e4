"""A strategy that probes its own sandbox, run like any user's: the limits hold from inside.

Every refusal is checked for its specific errno (EROFS for a read-only mount, EACCES for a
directory the sandbox may not write, ENETUNREACH with no network), never "some OSError", so a
path that simply does not exist cannot pass for a protected one. The paths of the Python
libraries come from the container's own `sysconfig`, so the probe tests the image it runs in,
whatever its base's layout: the runner image of this checkout (a debootstrap'd Debian, libraries
in /usr/lib/python3.11 and /usr/local/lib/python3.11/dist-packages), and one built on a
python:3.11-slim-like base (site-packages under /usr/local).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOCKER

pytestmark = DOCKER

PROBE = '''
import errno, json, os, socket, sysconfig
import backtrader as bt


def refusal(action):
    """The errno name an action is refused with, or None when it succeeded."""
    try:
        action()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return None


def connect():
    with socket.create_connection(("1.1.1.1", 80), timeout=2):
        pass


def write_in(directory):
    return lambda: open(os.path.join(directory, "evil.py"), "w")


class Probe(bt.Strategy):
    def start(self):
        paths = sysconfig.get_paths()
        status = dict(
            line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
            if ":\\t" in line
        )
        mounts = [line.split() for line in open("/proc/self/mountinfo")]
        print("PROBE " + json.dumps({
            "uid": os.getuid(),
            "CapEff": status["CapEff"].strip(),
            "NoNewPrivs": status["NoNewPrivs"].strip(),
            "Seccomp": status["Seccomp"].strip(),
            "paths": {key: paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")},
            "libraries_exist": all(
                os.path.isdir(paths[key]) for key in ("stdlib", "purelib")
            ),
            "root_write": refusal(lambda: open("/evil", "w")),
            "usr_write": refusal(lambda: open("/usr/evil", "w")),
            "stdlib_write": refusal(write_in(paths["stdlib"])),
            "site_write": refusal(write_in(paths["purelib"])),
            "read_only_mounts": sorted(m[4] for m in mounts if m[5].split(",")[0] == "ro"),
            "data_write": refusal(lambda: open("/job/spec.json", "a")),
            "data_create": refusal(lambda: open("/job/evil", "w")),
            "out_create": refusal(lambda: open("/out/evil", "w")),
            "socket_connect": refusal(connect),
            "tmp_write": refusal(lambda: open("/tmp/scratch", "w").write("ok")),
            # Executable by its mode bits; only the mount's noexec refuses it (EACCES, where a
            # plain tmpfs would get as far as ENOEXEC on these bytes).
            "tmp_exec": refusal(
                lambda: (os.chmod("/tmp/scratch", 0o755), os.execv("/tmp/scratch", ["x"]))
            ),
        }))
'''


def outermost(paths: list[str]) -> list[str]:
    return sorted({p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)})


def probe(settings: Any, strategy: str) -> dict[str, Any]:
    """Run the probe as a user's strategy through the engine; what it saw inside."""
    from backtest_sandbox.domain.config import BacktestConfig
    from backtest_sandbox.jobs.engine import Engine, RunRequest

    config = BacktestConfig(
        symbol="IDX", timeframe="D1", start_date="2006-01-01", end_date="2006-12-31"
    )
    engine = Engine(settings)
    try:
        request = RunRequest(backtest_id="hardening-probe", code=strategy, config=config)
        outcome = engine.run(request)
    finally:
        engine.close()
    assert outcome.result is not None, outcome.error
    line = next(line for line in outcome.result.logs.splitlines() if line.startswith("PROBE "))
    return dict(json.loads(line.removeprefix("PROBE ")))


def assert_hardened(seen: dict[str, Any]) -> None:
    assert seen["CapEff"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == "2"
    assert seen["uid"] != 0
    assert seen["libraries_exist"]  # the paths below are real directories, not guesses
    assert (seen["root_write"], seen["usr_write"]) == ("EROFS", "EROFS")  # read-only root
    # The image's libraries come from read-only volumes (library_volumes.py), never writable,
    # and they are exactly the directories the image's own sysconfig names.
    assert (seen["stdlib_write"], seen["site_write"]) == ("EROFS", "EROFS")
    libraries = outermost(list(seen["paths"].values()))
    assert set(libraries) <= set(seen["read_only_mounts"]), libraries
    # /job is a read-only mount (creating fails there first), and its files are not the
    # sandbox uid's to write (the permission check comes before the mount's).
    assert "/job" in seen["read_only_mounts"]
    assert (seen["data_write"], seen["data_create"]) == ("EACCES", "EROFS")
    assert seen["out_create"] == "EACCES"  # only the two files the host made are writable
    assert seen["socket_connect"] == "ENETUNREACH"  # network none: no route at all
    assert seen["tmp_write"] is None  # the scratch tmpfs works ...
    assert seen["tmp_exec"] == "EACCES"  # ... and is noexec


def test_sandbox_limits_hold_inside_the_container(data_dir: Path, tmp_path: Path) -> None:
    from backtest_sandbox.domain.settings import Settings

    settings = Settings(data_dir=data_dir, state_dir=tmp_path, pool_size=0)
    seen = probe(settings, PROBE)
    assert_hardened(seen)


# -- the same probe on an image of another layout ----------------------------------------------

SLIM_LIKE_BASE = "backtest-sandbox-test-slimlike:1"
# Debian's python3 as a virtual environment at /usr/local: `python3` is /usr/local/bin/python3
# and its packages go to /usr/local/lib/python3.11/site-packages, as on python:3.11-slim
# (built from the local debootstrap base: no registry is needed).
SLIM_LIKE_DOCKERFILE = b"""\
FROM backtest-sandbox-base:bookworm
RUN python3 -m venv --without-pip /usr/local
"""


@pytest.fixture(scope="module")
def slim_like_settings(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> Iterator[Any]:
    """Settings whose runner image is built on the slim-like base (its own repository name,
    so the suite's image is untouched)."""
    from backtest_sandbox.domain.settings import Settings
    from backtest_sandbox.image import build as image
    from backtest_sandbox.sandbox.containers import docker_client

    client = docker_client(timeout=900)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(SLIM_LIKE_DOCKERFILE)
        tar.addfile(info, io.BytesIO(SLIM_LIKE_DOCKERFILE))
    context.seek(0)
    image.ensure_image(client, Settings())  # the debootstrap base, if this machine lacks it
    client.images.build(
        fileobj=context, custom_context=True, tag=SLIM_LIKE_BASE, network_mode="none", rm=True
    )
    settings = Settings(
        data_dir=data_dir,
        state_dir=tmp_path_factory.mktemp("slim-like"),
        pool_size=0,
        base_image=SLIM_LIKE_BASE,
        image_repository="backtest-sandbox-test-runner-slimlike",
    )
    image.ensure_image(client, settings, progress=lambda line: None)
    client.close()
    yield settings


@pytest.mark.slow
@pytest.mark.timeout(900)  # the fixture builds a runner image on the slim-like base first
def test_the_limits_hold_on_a_slim_like_layout(slim_like_settings: Any) -> None:
    seen = probe(slim_like_settings, PROBE)
    assert seen["paths"]["purelib"] == "/usr/local/lib/python3.11/site-packages"
    assert_hardened(seen)

"""Every hardening default is in the spec the sandbox hands Docker (fake client, no daemon)."""

from __future__ import annotations

import pytest

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.sandbox.containers import LABEL_PROJECT, LABEL_RUN, Sandbox
from backtest_sandbox.sandbox.rundir import RunDir


class FakeClient:
    def __init__(self, runtimes: tuple[str, ...] = ("runc",)) -> None:
        self.runtimes = runtimes

    def info(self) -> dict[str, object]:
        return {"Runtimes": {name: {} for name in self.runtimes}}


@pytest.fixture
def run_dir(tmp_path):
    rd = RunDir(tmp_path, 10001)
    yield rd
    rd.remove()


def spec_for(run_dir: RunDir, settings: Settings | None = None, runtimes=("runc",)):
    settings = settings or Settings(library_volumes=False)
    sandbox = Sandbox(settings, FakeClient(runtimes), "runner:test")  # type: ignore[arg-type]
    return sandbox.container_spec(run_dir, 256, "bt_1")


def test_hardening_defaults(run_dir):
    spec = spec_for(run_dir)
    assert spec["network_mode"] == "none"
    assert spec["read_only"] is True
    assert spec["user"] == "10001:10001"
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert spec["pids_limit"] == 64
    assert spec["mem_limit"] == spec["memswap_limit"] == "256m"
    # PID 1 is our init (it ends the container at its own deadline), not docker-init.
    assert spec["init"] is False
    assert spec["command"][:5] == ["python3", "-I", "/opt/runner/init.py", "--idle-seconds", "310"]
    assert spec["command"][-3:] == ["python3", "-I", "/opt/runner/harness.py"]
    assert spec["nano_cpus"] == 1_000_000_000
    assert "noexec" in spec["tmpfs"]["/tmp"] and "size=64m" in spec["tmpfs"]["/tmp"]
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in spec["ulimits"]}
    assert limits == {"nofile": (256, 256), "fsize": (64 << 20, 64 << 20), "core": (0, 0)}
    assert set(spec["environment"]) <= {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "MPLBACKEND",
    }
    assert spec["labels"][LABEL_PROJECT] == "1" and spec["labels"][LABEL_RUN] == "bt_1"
    mounts = {m["Target"]: m for m in spec["mounts"]}
    assert mounts["/job"]["ReadOnly"] is True and mounts["/out"]["ReadOnly"] is False
    assert "docker.sock" not in str(spec)
    assert "runtime" not in spec


def test_the_host_environment_never_reaches_the_sandbox(run_dir, monkeypatch):
    monkeypatch.setenv("BACKTEST_API_TOKENS", "secret:tenant")
    assert "secret" not in str(spec_for(run_dir)["environment"])


def test_settings_change_the_limits(run_dir):
    spec = spec_for(run_dir, Settings(pids_limit=32, cpus=0.5, tmpfs_mb=16, library_volumes=False))
    assert spec["pids_limit"] == 32 and spec["nano_cpus"] == 500_000_000
    assert "size=16m" in spec["tmpfs"]["/tmp"]


def test_auto_runtime_picks_runsc_when_the_daemon_has_it(run_dir):
    both = ("runc", "runsc")
    auto = Settings(runtime="auto", library_volumes=False)
    assert spec_for(run_dir, auto, both)["runtime"] == "runsc"
    assert "runtime" not in spec_for(run_dir, Settings(runtime="runc", library_volumes=False), both)


def test_runsc_required_but_missing_is_a_sandbox_error(run_dir):
    with pytest.raises(SandboxError, match="no runsc runtime"):
        spec_for(run_dir, Settings(runtime="runsc", library_volumes=False), ("runc",))


def test_library_volumes_are_mounted_read_only(run_dir, monkeypatch):
    from docker.types import Mount

    import backtest_sandbox.sandbox.containers as sandbox_module

    volumes = [Mount("/usr/lib/python3.11", "backtest-sandbox-lib-x-0", read_only=True)]
    monkeypatch.setattr(sandbox_module, "library_mounts", lambda *args: volumes)
    mounts = {m["Target"]: m for m in spec_for(run_dir, Settings())["mounts"]}
    assert mounts["/usr/lib/python3.11"]["ReadOnly"] is True
    assert mounts["/usr/lib/python3.11"]["Type"] == "volume"

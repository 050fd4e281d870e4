"""`backtest-sandbox doctor`: is the daemon there, the image built, the runtime known, and do
the limits really hold inside a container? Each check prints one line and what to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.domain.settings import Settings
from backtest_sandbox.image import build as image
from backtest_sandbox.sandbox.containers import Sandbox, docker_client
from backtest_sandbox.sandbox.rundir import new_run_dir

# Runs inside a hardened container (our code, not a strategy): reports what the kernel enforces.
PROBE = r"""
import json, os, socket
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
def fails(action):
    try:
        action()
    except OSError:
        return True
    return False
def connect():
    with socket.create_connection(("1.1.1.1", 53), timeout=2):
        pass
print(json.dumps({
    "uid": os.getuid(),
    "CapEff": status.get("CapEff", "").strip() or None,
    "NoNewPrivs": status.get("NoNewPrivs", "").strip() or None,
    "Seccomp": status.get("Seccomp", "").strip() or None,
    "root_write_fails": fails(lambda: open("/probe", "w")),
    "data_write_fails": fails(lambda: open("/job/probe", "w")),
    "socket_fails": fails(connect),
}))
"""

EXPECTED = {
    "CapEff": "0000000000000000",
    "NoNewPrivs": "1",
    "Seccomp": "2",
    "root_write_fails": True,
    "data_write_fails": True,
    "socket_fails": True,
}

RUNSC_HELP = (
    "gVisor is optional. To add it (as root): bash security/install_runsc.sh. It installs "
    "Debian's runsc package and registers it in /etc/docker/daemon.json with "
    '"runtimeArgs": ["--network=none", "--platform=ptrace", "--oci-seccomp"], then reloads '
    "dockerd with SIGHUP (no restart). BACKTEST_RUNTIME=auto then picks it; runsc forces it."
)


def run_doctor(settings: Settings, out: TextIO) -> bool:
    """Print one line per check; True when every required check passed."""

    def report(ok: bool, what: str, hint: str = "") -> bool:
        out.write(f"[{'ok' if ok else 'FAIL'}] {what}\n")
        if hint and not ok:
            out.write(f"       {hint}\n")
        return ok

    try:
        client = docker_client()
    except SandboxError as e:
        report(False, f"Docker daemon: {e}", "start dockerd, or set DOCKER_HOST")
        return False
    try:
        version = client.version().get("Version", "?")
        report(True, f"Docker daemon {version}")
        tag = image.expected_tag(settings)
        if not report(image.image_present(client, settings), f"runner image {tag}",
                      "run `backtest-sandbox build-image`"):
            return False
        sandbox = Sandbox(settings, client, tag)
        runtimes = set(client.info().get("Runtimes", {}))
        out.write(f"[ok] runtime: {sandbox.runtime or 'runc'} (BACKTEST_RUNTIME="
                  f"{settings.runtime}; daemon has {', '.join(sorted(runtimes))})\n")
        if "runsc" not in runtimes:
            out.write(f"       {RUNSC_HELP}\n")
        return _check_limits(sandbox, settings, report)
    finally:
        client.close()


def _check_limits(
    sandbox: Sandbox, settings: Settings, report: Callable[..., bool]
) -> bool:
    run_dir = new_run_dir(settings)
    try:
        with sandbox.running(run_dir, 256, "doctor", ["python3", "-I", "-c", PROBE]) as box:
            code = sandbox.wait(box, 60)
            output = sandbox.logs(box).decode(errors="replace")
    finally:
        run_dir.remove()
    try:
        seen = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return report(False, f"probe container (exit {code}): {output[-500:]}")
    ok = report(seen["uid"] != 0, f"runs as uid {seen['uid']} (not root)")
    for key, want in EXPECTED.items():
        if seen[key] is None and sandbox.runtime == "runsc":
            # gVisor's own /proc omits these lines; its kernel applies the same controls.
            report(True, f"{key}: not shown by gVisor's /proc (gVisor enforces it)")
            continue
        ok = report(seen[key] == want, f"{key}: {seen[key]} (want {want})") and ok
    return ok

"""A strategy that probes its own sandbox, run like any user's: the limits hold from inside."""

from __future__ import annotations

import json

from tests.conftest import DOCKER

pytestmark = DOCKER

PROBE = '''
import json, os, socket
import backtrader as bt


def fails(action):
    try:
        action()
    except OSError as e:
        return type(e).__name__
    return False


def connect():
    with socket.create_connection(("1.1.1.1", 80), timeout=2):
        pass


class Probe(bt.Strategy):
    def start(self):
        status = dict(
            line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
            if ":\\t" in line
        )
        print("PROBE " + json.dumps({
            "uid": os.getuid(),
            "CapEff": status["CapEff"].strip(),
            "NoNewPrivs": status["NoNewPrivs"].strip(),
            "Seccomp": status["Seccomp"].strip(),
            "root_write": fails(lambda: open("/evil", "w")),
            "usr_write": fails(lambda: open("/usr/lib/evil", "w")),
            "stdlib_write": fails(lambda: open("/usr/lib/python3.11/evil.py", "w")),
            "site_write": fails(
                lambda: open("/usr/local/lib/python3.11/dist-packages/evil.py", "w")
            ),
            "lib_mounts": sorted(
                line.split()[4] for line in open("/proc/self/mountinfo")
                if "python3.11" in line.split()[4] and line.split()[5].startswith("ro")
            ),
            "data_write": fails(lambda: open("/job/data.csv", "a")),
            "data_create": fails(lambda: open("/job/evil", "w")),
            "out_create": fails(lambda: open("/out/evil", "w")),
            "socket_connect": fails(connect),
            "tmp_write": fails(lambda: open("/tmp/scratch", "w").write("ok")),
        }))
'''


def test_sandbox_limits_hold_inside_the_container(cli, write_strategy):
    run = cli("run", str(write_strategy(PROBE)), "--symbol", "IDX", "--timeframe", "D1",
              "--start", "2006-01-01", "--end", "2006-12-31", "--json")
    assert run.code == 0, run.stderr
    logs = run.status["result"]["logs"]
    line = next(line for line in logs.splitlines() if line.startswith("PROBE "))
    seen = json.loads(line.removeprefix("PROBE "))
    assert seen["CapEff"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == "2"
    assert seen["uid"] != 0
    assert seen["root_write"] and seen["usr_write"]  # read-only root filesystem
    # The image's libraries come from read-only volumes (library_volumes.py), never writable.
    assert seen["stdlib_write"] and seen["site_write"]
    assert seen["lib_mounts"] == [
        "/usr/lib/python3.11", "/usr/local/lib/python3.11/dist-packages"
    ]
    assert seen["data_write"] and seen["data_create"]  # the data mount is read-only
    assert seen["out_create"]  # only the two files the host made are writable in /out
    assert seen["socket_connect"]  # network none
    assert seen["tmp_write"] is False  # the scratch tmpfs works

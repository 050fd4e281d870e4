# attack: read the initial environment and command line of every process it can see (PID 1
#   first) through /proc, looking for the host's secrets
# expect: completed
# checks: /proc shows only the container's own processes (own PID namespace), and their
#   environments hold nothing of the host (no canary, no BACKTEST_ variable)
# control: the PID namespace and the environment allowlist
# proof: ATTEMPTED /proc/1/environ: \d+ bytes
# proof: ATTEMPTED /proc scan: \d+ processes
import os

import backtrader as bt

NEEDLES = (b"host-" + b"canary-", b"BACKTEST" + b"_")  # in parts: never match this source


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class ProcEnviron(bt.Strategy):
    def start(self):
        with open("/proc/1/environ", "rb") as stream:
            init_environ = stream.read()
        print(f"ATTEMPTED /proc/1/environ: {len(init_environ)} bytes", flush=True)
        leaks = []
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        for pid in pids:
            for name in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as stream:
                        content = stream.read()
                except OSError:
                    continue
                leaks += [f"/proc/{pid}/{name}" for n in NEEDLES if n in content]
        print(f"ATTEMPTED /proc scan: {len(pids)} processes", flush=True)
        if leaks:
            raise SandboxBreach(f"host secrets in {leaks}")

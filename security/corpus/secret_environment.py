# attack: read the process environment for the host's secrets (API tokens, the host's
#   BACKTEST_* settings, cloud credentials, a canary the test host sets in its own environment)
# expect: completed
# checks: the environment holds only the sandbox's allowlist; no host variable, no canary
# control: the container spec's environment allowlist (SANDBOX_ENVIRONMENT)
# proof: ATTEMPTED environment: \d+ variables: .*PATH
import os
import re

import backtrader as bt

ALLOWED = {
    "PATH", "HOME", "LANG", "HOSTNAME", "MPLBACKEND", "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
}  # fmt: skip
SECRET_NAME = re.compile(r"BACKTEST_|TOKEN|SECRET|PASSWORD|KEY|AWS_|DOCKER_|CI", re.IGNORECASE)
CANARY = "host-" + "canary-"  # in parts: never match this source


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class Environment(bt.Strategy):
    def start(self):
        names = sorted(os.environ)
        print(f"ATTEMPTED environment: {len(names)} variables: {' '.join(names)}", flush=True)
        leaks = [n for n in names if n not in ALLOWED or SECRET_NAME.search(n)]
        leaks += [n for n, value in os.environ.items() if CANARY in value]
        if leaks:
            raise SandboxBreach(f"host variables visible: {sorted(set(leaks))}")

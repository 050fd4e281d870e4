# attack: ignore SIGTERM (and SIGINT, SIGHUP) and spin, to survive the host's stop request
# expect: timeout
# checks: SIGTERM is only a courtesy: after the grace period the host sends SIGKILL, which
#   cannot be ignored, and the verdict is still the host's timeout
# control: the supervisor's deadline with SIGKILL after the grace period
# config: {"timeout_seconds": 6}
# proof: ATTEMPTED ignore SIGTERM
import signal

import backtrader as bt


class IgnoreSigterm(bt.Strategy):
    def start(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("ATTEMPTED ignore SIGTERM", flush=True)
        while True:
            pass

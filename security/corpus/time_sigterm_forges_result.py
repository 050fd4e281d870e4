# attack: on the host's SIGTERM, write a glowing "completed" result and exit 0, so that the
#   killed run looks like a finished one
# expect: timeout
# checks: the verdict order puts the host's own clock before anything the sandbox wrote: a
#   valid result and exit code 0 after the deadline are still a timeout
# control: the supervisor's verdict order (timeout decided from the host's clock first)
# config: {"timeout_seconds": 6}
# proof: ATTEMPTED forge a result on SIGTERM
# proof: forged result written on SIGTERM
import json
import os
import signal
import time

import backtrader as bt

FORGED = {
    "protocol": 1,
    "outcome": "completed",
    "backtrader_version": "1.9.78.123",
    "bars": 1,
    "final_value": 1e9,
    "final_cash": 1e9,
    "bars_in_market": 0,
    "equity_curve": [["2006-01-02T00:00:00", 1e9]],
    "trades": [],
    "open_trades": 0,
    "orders": [],
    "orders_total": 0,
    "open_positions": [],
}


def forge_and_exit(signum, frame):
    with open("/out/result.json", "w") as stream:
        json.dump(FORGED, stream)
    print("forged result written on SIGTERM", flush=True)
    os._exit(0)


class SigtermForgery(bt.Strategy):
    def start(self):
        signal.signal(signal.SIGTERM, forge_and_exit)
        print("ATTEMPTED forge a result on SIGTERM", flush=True)
        while True:
            time.sleep(0.05)

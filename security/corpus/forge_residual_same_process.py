# attack: the strategy runs in the harness's own process, so it can write a perfectly valid
#   "completed" result with invented numbers (a final value of 1e9 from one bar) and exit 0
#   before the harness writes the real one
# expect: completed
# residual: same-process result forgery. The host can only check the result's shape and its
#   consistency with the run (bars <= the data's, one equity point per bar); a strategy that
#   writes a schema-valid result is believed. THREAT_MODEL.md explains what would close it (a
#   harness in a separate process under another uid, recomputing the equity from the orders).
# forged-final-value: 1000000000.0
# checks: documents the residual risk: the forged numbers are what the host reports (this case
#   fails the day the risk is closed, so that the model and the corpus are updated together)
# control: none today (residual); the schema and bar-count checks bound what can be claimed
# proof: ATTEMPTED same-process forgery
import json
import os

import backtrader as bt


class SameProcessForgery(bt.Strategy):
    def start(self):
        forged = {
            "protocol": 1,
            "outcome": "completed",
            "backtrader_version": "1.9.78.123",
            "bars": 1,
            "final_value": 1e9,
            "final_cash": 1e9,
            "bars_in_market": 0,
            "equity_curve": [["2006-01-03T00:00:00", 1e9]],
            "trades": [],
            "open_trades": 0,
        }
        with open("/out/result.json", "w") as stream:
            json.dump(forged, stream)
        print("ATTEMPTED same-process forgery", flush=True)
        os._exit(0)

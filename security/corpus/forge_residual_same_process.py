# attack: the strategy runs in the harness's own process, so it can write a perfectly valid
#   "completed" result with invented numbers (a final value of 1e9 from one bar) and exit 0
#   before the harness writes the real one
# expect: completed
# config: {"mode": "fast"}
# residual: same-process result forgery in fast mode. The host can only check the result's
#   shape and its consistency with the run (bars <= the data's, one equity point per bar); a
#   strategy that writes a schema-valid result is believed. Verified mode (the default) closes
#   it: see verified_forge_result, the same attack with a referee.
# forged-final-value: 1000000000.0
# checks: documents the residual risk of fast mode: the forged numbers are what the host
#   reports there (this case fails the day fast mode changes, so that the model and the corpus
#   are updated together)
# control: none in fast mode (residual); the schema and bar-count checks bound what can be
#   claimed; verified mode publishes the referee's numbers instead
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
            "orders": [],
            "orders_total": 0,
            "open_positions": [],
        }
        with open("/out/result.json", "w") as stream:
            json.dump(forged, stream)
        print("ATTEMPTED same-process forgery", flush=True)
        os._exit(0)

# attack: the same-process forgery of forge_residual_same_process, in verified mode: write a
#   schema-valid "completed" result of 1e9 and exit 0 before the harness writes its own
# expect: completed
# forged-final-value: 1000000000.0
# integrity: {"verified": true, "claim_matches": false}
# checks: the claim is not what is published: the referee's replay of what was committed is
# control: verified mode's referee (verify/referee.py)
# proof: ATTEMPTED same-process forgery
import json
import os

import backtrader as bt


class SameProcessForgery(bt.Strategy):
    def next(self):
        if len(self) < 3:
            return
        forged = {
            "protocol": 1,
            "outcome": "completed",
            "backtrader_version": "1.9.78.123",
            "bars": 3,
            "final_value": 1e9,
            "final_cash": 1e9,
            "bars_in_market": 0,
            "equity_curve": [["2006-01-03T00:00:00", 1e9]] * 3,
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

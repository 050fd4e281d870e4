# attack: a complete, schema-shaped result whose numbers are NaN and Infinity (JSON that
#   Python writes by default), to poison the metrics and whatever stores them
# expect: result_invalid
# checks: NaN, Infinity and 1e999 are refused by the host's parser; never stored or shown
# control: the host's parse (parse_constant refuses NaN/Infinity, parse_float refuses inf)
# proof: ATTEMPTED NaN result
import json
import os

import backtrader as bt


class NanResult(bt.Strategy):
    def start(self):
        forged = {
            "protocol": 1,
            "outcome": "completed",
            "backtrader_version": "1.9.78.123",
            "bars": 1,
            "final_value": float("nan"),
            "final_cash": float("inf"),
            "bars_in_market": 0,
            "equity_curve": [["2006-01-02T00:00:00", float("-inf")]],
            "trades": [],
            "open_trades": 0,
            "orders": [],
            "orders_total": 0,
            "open_positions": [],
        }
        with open("/out/result.json", "w") as stream:
            json.dump(forged, stream)  # allow_nan=True: writes NaN and Infinity
        print("ATTEMPTED NaN result", flush=True)
        os._exit(0)

# attack: a result whose counts are integers of 100,000 digits, to make the host burn CPU on
#   int parsing (CVE-2020-10735) or overflow whatever stores them
# expect: result_invalid
# checks: the host's parse refuses the integer (Python's digit limit) and the run is
#   result_invalid, fast
# control: the host's parse (int max str digits) and the schema's bounds
# proof: ATTEMPTED huge integer result of 100000 digits
import os

import backtrader as bt

DIGITS = 100_000


class HugeInt(bt.Strategy):
    def start(self):
        huge = "9" * DIGITS
        document = (
            '{"protocol": 1, "outcome": "completed", "backtrader_version": "1.9.78.123", '
            f'"bars": {huge}, "final_value": 1.0, "final_cash": 1.0, "bars_in_market": 0, '
            '"equity_curve": [], "trades": [], "open_trades": 0, "orders": [], '
            '"orders_total": 0, "open_positions": []}'
        )
        with open("/out/result.json", "w") as stream:
            stream.write(document)
        print(f"ATTEMPTED huge integer result of {DIGITS} digits", flush=True)
        os._exit(0)

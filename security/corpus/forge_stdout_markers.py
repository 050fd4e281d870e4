# attack: print a complete, glowing result on stdout and stderr, with every marker a naive
#   host might parse ("RESULT:", JSON lines, a fake exit status), then fail for real
# expect: runtime_error
# checks: the host never parses stdout or stderr: the verdict is the real one (the strategy's
#   ValueError), and the printed numbers appear only as logs
# control: the protocol (the result comes only from /out/result.json; logs are only logs)
# proof: ATTEMPTED forged stdout result
# raises: ValueError
import json
import sys

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


class StdoutMarkers(bt.Strategy):
    def start(self):
        document = json.dumps(FORGED)
        for stream in (sys.stdout, sys.stderr):
            print(document, file=stream)
            print(f"RESULT: {document}", file=stream)
            print("===BACKTEST_RESULT_BEGIN===\n" + document + "\n===BACKTEST_RESULT_END===",
                  file=stream)  # fmt: skip
            print('{"status": "completed", "exit_code": 0, "verdict": "completed"}', file=stream)
        print("ATTEMPTED forged stdout result", flush=True)
        raise ValueError("the real outcome: this strategy failed")

# attack: write a result that claims its own verdict ("outcome": "timeout") and exit 0, so the
#   run is blamed on the platform instead of the strategy
# expect: result_invalid
# checks: only the protocol's two outcomes are accepted; a claimed verdict is a broken result
# control: the host's result schema (sandbox/claim.py: outcome is completed or runtime_error only)
# proof: ATTEMPTED claim my own verdict
import json
import os

import backtrader as bt


class ClaimsTimeout(bt.Strategy):
    def start(self):
        claim = {
            "protocol": 1,
            "outcome": "timeout",
            "backtrader_version": "1.9.78.123",
            "error": {"exc_type": "TimeoutError", "message": "the platform was slow",
                      "traceback": ""},
        }  # fmt: skip
        with open("/out/result.json", "w") as stream:
            json.dump(claim, stream)
        print("ATTEMPTED claim my own verdict: timeout", flush=True)
        os._exit(0)

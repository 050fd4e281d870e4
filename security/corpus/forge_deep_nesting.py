# attack: a result nested 200,000 arrays deep, to blow the host parser's recursion limit or
#   stack
# expect: result_invalid
# checks: the host's JSON parse fails cleanly (RecursionError is caught) and the run is
#   result_invalid; the host process survives
# control: the host's defensive parse (claim.parse_claim)
# proof: ATTEMPTED nested result, depth 200000
import os

import backtrader as bt

DEPTH = 200_000


class DeepNesting(bt.Strategy):
    def start(self):
        with open("/out/result.json", "w") as stream:
            stream.write('{"protocol": 1, "outcome": "completed", "bars": ')
            stream.write("[" * DEPTH + "]" * DEPTH)
            stream.write("}")
        print(f"ATTEMPTED nested result, depth {DEPTH}", flush=True)
        os._exit(0)

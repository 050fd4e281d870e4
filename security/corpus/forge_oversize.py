# attack: write a 40 MiB result (over the host's 32 MiB cap, under the 64 MiB file size
#   limit) and exit 0, to exhaust the host's memory when it reads the result
# expect: result_invalid
# checks: the host checks the size before reading (fstat, then at most cap + 1 bytes)
# control: the result cap (Settings.result_cap_bytes) checked before the read
# proof: ATTEMPTED oversize result of 40 MiB
import os

import backtrader as bt

MIB = 1 << 20


class Oversize(bt.Strategy):
    def start(self):
        head = b'{"protocol": 1, "outcome": "completed", "padding": "'
        with open("/out/result.json", "wb") as stream:
            stream.write(head)
            for _ in range(40):
                stream.write(b"A" * MIB)
            stream.write(b'"}')
        print("ATTEMPTED oversize result of 40 MiB", flush=True)
        os._exit(0)

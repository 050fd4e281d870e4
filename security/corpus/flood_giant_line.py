# attack: write one 32 MiB line with no newline, to make a reader buffer it whole
# expect: completed
# checks: the captured logs stay bounded; neither the daemon nor the host holds the line whole
# control: the json-file log driver (splits lines at 16 KiB, caps the file) and cap_logs
# proof: ATTEMPTED giant line of 33554432 bytes
import sys

import backtrader as bt

SIZE = 32 << 20


class GiantLine(bt.Strategy):
    def start(self):
        chunk = "G" * (1 << 20)
        for _ in range(SIZE >> 20):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        print(f"ATTEMPTED giant line of {SIZE} bytes", flush=True)

# attack: write 4 MiB on the bar pipe without a newline, to make the host buffer it
# expect: result_invalid
# message: over the limit
# checks: the gate reads at most the message cap, then ends the run
# control: sandbox/stdio.py read_line cap (BACKTEST_VERIFIED_MAX_MESSAGE_BYTES)
# proof: ATTEMPTED oversize commit
import os

import backtrader as bt


class Oversize(bt.Strategy):
    def next(self):
        if len(self) == 3:
            print("ATTEMPTED oversize commit", flush=True)
            chunk = b"[" + b"1," * (2 * 1024 * 1024)
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.data.channel._write_fd, view):]

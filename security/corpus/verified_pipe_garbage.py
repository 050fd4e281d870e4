# attack: write garbage (not UTF-8, not JSON) on the bar pipe in place of a commit
# expect: result_invalid
# message: protocol
# checks: the gate refuses a commit that is not a JSON list of events, ends the run, and kills
#   the container
# control: verify/events.py parse_commit
# proof: ATTEMPTED garbage commit
import os

import backtrader as bt


class Garbage(bt.Strategy):
    def next(self):
        if len(self) == 3:
            print("ATTEMPTED garbage commit", flush=True)
            os.write(self.data.channel._write_fd, b"\xff\xfe{not json\n")

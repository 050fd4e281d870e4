# attack: search the whole container filesystem for the market data (any file holding bar rows
#   of the run's year), to trade on tomorrow's close
# expect: completed
# checks: no file in the strategy's container holds a bar; the search is proven to work by
#   finding a planted sample first
# control: verified mode mounts no data; bars arrive one at a time over the pipe
# proof: SEARCHED \d+ files, no bar data
# config: {"timeout_seconds": 60}
import os
import re

import backtrader as bt

BAR = re.compile(rb"2006-\d\d-\d\d[T ,][^\n]*\d+\.\d+")
SKIP = ("/proc", "/sys", "/dev")
CAP = 64 * 1024 * 1024


def holds_bars(path):
    try:
        with open(path, "rb") as stream:
            return BAR.search(stream.read(CAP)) is not None
    except OSError:
        return False


class SearchData(bt.Strategy):
    def start(self):
        sample = "/tmp/sample.csv"
        with open(sample, "w") as stream:
            # Built at run time: the literal would be in the job spec, which holds this code.
            year = 2000 + 6
            stream.write(f"datetime,open,close\n{year}-01-03T00:00:00,1.5,1.75\n")
        if not holds_bars(sample):
            raise RuntimeError("the search cannot find a planted sample")
        os.remove(sample)
        searched, found = 0, []
        for root, dirs, files in os.walk("/"):
            if root.startswith(SKIP):
                dirs[:] = []
                continue
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    searched += 1
                    if holds_bars(path):
                        found.append(path)
        if found:
            raise RuntimeError(f"FOUND bar data in {found[:5]}")
        print(f"SEARCHED {searched} files, no bar data", flush=True)

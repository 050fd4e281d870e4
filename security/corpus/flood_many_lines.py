# attack: print 300,000 lines on stdout and stderr, to fill the host's disk or memory with logs
# expect: completed
# checks: the logs the host keeps and returns are bounded (head and tail within the cap), and
#   the daemon's own log file is capped (json-file max-size, one file)
# control: the json-file log cap on the container and cap_logs on the host
# proof: ATTEMPTED flood of 300000 lines
import sys

import backtrader as bt

LINES = 300_000


class ManyLines(bt.Strategy):
    def start(self):
        line = "flood " * 12 + "\n"
        for number in range(LINES):
            (sys.stderr if number % 4 == 0 else sys.stdout).write(line)
        # Each stream ends with the marker: the host merges the two pipes in no fixed order,
        # so whichever comes last, the tail of the logs holds one.
        for stream in (sys.stderr, sys.stdout):
            print(f"ATTEMPTED flood of {LINES} lines", file=stream, flush=True)

# attack: none: the victim of isolation_searcher. It carries a unique marker in its source,
#   its /tmp, its /dev/shm and its environment, and stays alive while the searcher looks
# expect: completed
# pair: victim
# checks: with the searcher: no run can see another's code, files or processes
# control: one container per run: own mount, PID and IPC namespaces; private /tmp and /dev/shm
# proof: VICTIM_RUNNING
import os
import time

import backtrader as bt

SECRET = "ISOLATION-MARKER-5d1c9e7a41b3c0f2"  # the searcher must never find this


class Victim(bt.Strategy):
    def start(self):
        for path in ("/tmp/victim-secret", "/dev/shm/victim-secret"):
            with open(path, "w") as stream:
                stream.write(SECRET)
        os.environ["VICTIM_SECRET"] = SECRET
        self.bars_seen = 0

    def next(self):
        self.bars_seen += 1
        if self.bars_seen == 1:
            time.sleep(0.3)  # past the harness's first progress report (0.2 s)
        elif self.bars_seen == 2:  # the host has seen progress: the searcher starts now
            print("VICTIM_RUNNING", flush=True)
            time.sleep(15)  # longer than the searcher takes under gVisor (~12 s seen)

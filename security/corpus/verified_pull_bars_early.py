# attack: pull the next bar early (call the feed's own loader from next()), read tomorrow's
#   close, and buy only before a rise
# expect: completed
# integrity: {"verified": true, "claim_matches": false}
# checks: every commit is stamped with the newest bar the trusted side had released, so the
#   orders placed after peeking count from the peeked bar on: the claim diverges, the referee's
#   numbers are published
# control: the gate's stamping rule (verify/gate.py)
# proof: ATTEMPTED pulled \d+ bars early
import backtrader as bt


class PullEarly(bt.Strategy):
    def start(self):
        self.pulled = 0

    def next(self):
        today = self.data.close[0]
        if self.position:
            self.close()
        if self.data._load():  # overwrites this bar's slot with tomorrow's prices
            self.pulled += 1
            if self.data.close[0] > today:
                self.buy(size=10)

    def stop(self):
        print(f"ATTEMPTED pulled {self.pulled} bars early", flush=True)

# attack: commit a cancel of an order that never existed and an order whose parent never
#   existed, to confuse the referee's bookkeeping
# expect: completed
# integrity: {"verified": true, "rejected_events": 2}
# checks: events naming unknown refs are refused alone and counted; the replay goes on
# control: verify/events.py EventCheck (refs must name accepted orders)
# proof: ATTEMPTED unknown refs
import backtrader as bt


class UnknownRefs(bt.Strategy):
    def next(self):
        if len(self) == 5:
            order = self.buy(size=10)
            pending = self.data.commit.__self__._pending
            forged = dict(pending[-1], ref=order.ref + 1000, parent=888888)
            pending.extend([{"op": "cancel", "ref": 999999}, forged])
            print("ATTEMPTED unknown refs", flush=True)

# attack: an order of NaN size (Strategy.buy lets it through: NaN is truthy)
# expect: completed
# integrity: {"verified": true, "rejected_events": 1}
# checks: the gate refuses the event alone and counts it; the run and its other orders go on
# control: verify/events.py EventCheck (sizes must be positive and finite)
# proof: ATTEMPTED NaN size
import backtrader as bt


class NanSize(bt.Strategy):
    def next(self):
        if len(self) == 5:
            print("ATTEMPTED NaN size", flush=True)
            self.buy(size=float("nan"))
        elif len(self) == 10:
            self.buy(size=10)

# attack: place 5,000 orders in one bar
# expect: result_invalid
# message: events in one bar
# checks: a commit over the per-bar event limit ends the run before anything reaches the referee
# control: verify/events.py parse_commit (BACKTEST_VERIFIED_MAX_EVENTS_PER_BAR)
# proof: ATTEMPTED 5000 orders
import backtrader as bt


class Flood(bt.Strategy):
    def next(self):
        if len(self) == 3:
            for _ in range(5000):
                self.buy(size=1, price=0.5, exectype=bt.Order.Limit)
            print("ATTEMPTED 5000 orders", flush=True)

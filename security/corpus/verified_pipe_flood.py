# attack: place 1,500 orders in one bar (over the limit of 1,000)
# expect: result_invalid
# message: events in one bar
# checks: a commit over the per-bar event limit ends the run before anything reaches the referee
# control: verify/events.py parse_commit (BACKTEST_VERIFIED_MAX_EVENTS_PER_BAR)
# proof: ATTEMPTED 1500 orders
import backtrader as bt


class Flood(bt.Strategy):
    def next(self):
        if len(self) == 3:
            for _ in range(1500):
                self.buy(size=1, price=0.5, exectype=bt.Order.Limit)
            print("ATTEMPTED 1500 orders", flush=True)

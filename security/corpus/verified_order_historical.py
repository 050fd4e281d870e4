# attack: an ordinary API call with an extraordinary effect: Order.Historical at a price of
#   0.01, which Backtrader fills as given
# expect: unsupported_feature
# message: Order\.Historical
# checks: a verified run refuses it by name at once; the referee never replays it either
#   (its exec types are whitelisted)
# control: the harness's guard (runner_image/verified.py) and verify/events.py's whitelist
# proof: ATTEMPTED historical order
import backtrader as bt


class Historical(bt.Strategy):
    def next(self):
        if len(self) == 5:
            print("ATTEMPTED historical order", flush=True)
            self.buy(size=100, price=0.01, exectype=bt.Order.Historical)

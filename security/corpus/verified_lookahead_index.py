# attack: trade on the next bar's open, `self.data.open[1]` (readable in a preloaded run)
# expect: runtime_error
# raises: IndexError
# message: up to the current one only
# checks: no bar after the current one exists in the strategy's process; the error says why
# control: verified mode's bar pipe (runner_image/pipefeed.py): one bar per request
# proof: ATTEMPTED look-ahead
import backtrader as bt


class NextOpen(bt.Strategy):
    def next(self):
        print("ATTEMPTED look-ahead", flush=True)
        if self.data.open[1] > self.data.close[0]:
            self.buy(size=10)

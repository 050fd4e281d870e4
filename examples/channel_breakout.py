"""A channel breakout, long and short, with a protective stop order.

Goes long when the close breaks above the highest high of the last `entry` bars, short when
it breaks below the lowest low; exits on the opposite `exit`-bar channel, or at a stop
`stop` (a fraction of the fill price) away from the entry. Meant to be run with commission
and slippage (see channel_breakout.json): the stop is a Stop order, so it slips too.
"""

import backtrader as bt


class ChannelBreakout(bt.Strategy):
    params = (("entry", 20), ("exit", 10), ("stop", 0.08))

    def __init__(self):
        high, low = self.data.high(-1), self.data.low(-1)  # channels of the bars before this
        self.upper = bt.indicators.Highest(high, period=self.p.entry)
        self.lower = bt.indicators.Lowest(low, period=self.p.entry)
        self.exit_upper = bt.indicators.Highest(high, period=self.p.exit)
        self.exit_lower = bt.indicators.Lowest(low, period=self.p.exit)
        self.pending = None  # the entry or exit market order not yet filled
        self.stop_order = None

    def notify_order(self, order):
        # The broker notifies copies of the orders: compare them by `ref`, not identity.
        if order.status in (order.Submitted, order.Accepted):
            return
        if self.stop_order is not None and order.ref == self.stop_order.ref:
            self.stop_order = None
            return
        if self.pending is None or order.ref != self.pending.ref:
            return
        self.pending = None
        if order.status != order.Completed or not self.position:
            return  # an exit filled, or the order was refused
        size = abs(order.executed.size)
        price = order.executed.price
        if order.isbuy():
            stop = price * (1.0 - self.p.stop)
            self.stop_order = self.sell(exectype=bt.Order.Stop, price=stop, size=size)
        else:
            stop = price * (1.0 + self.p.stop)
            self.stop_order = self.buy(exectype=bt.Order.Stop, price=stop, size=size)

    def next(self):
        if self.pending is not None:
            return
        close = self.data.close[0]
        size = self.position.size
        if size == 0:
            if close > self.upper[0]:
                self.pending = self.buy()
            elif close < self.lower[0]:
                self.pending = self.sell()
        elif (size > 0 and close < self.exit_lower[0]) or (size < 0 and close > self.exit_upper[0]):
            if self.stop_order is not None:
                self.cancel(self.stop_order)
                self.stop_order = None
            self.pending = self.close()

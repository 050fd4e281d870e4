"""RSI, Bollinger Bands, MACD and Stochastic together, long only.

Buys a pull-back (RSI low, or the close under the Bollinger middle band) once the Stochastic's
%K turns up above its %D; sells when the move is stretched (RSI high, or the close over the
upper band), or when MACD crosses down through its signal line while under water.
"""

import backtrader as bt


class IndicatorMix(bt.Strategy):
    params = (
        ("rsi_period", 14),
        ("rsi_low", 45),
        ("rsi_high", 65),
        ("bb_period", 20),
        ("bb_dev", 2.0),
        ("stoch_period", 14),
    )

    def __init__(self):
        close = self.data.close
        self.rsi = bt.indicators.RSI(close, period=self.p.rsi_period)
        self.bands = bt.indicators.BollingerBands(
            close, period=self.p.bb_period, devfactor=self.p.bb_dev
        )
        self.macd = bt.indicators.MACD(close)
        self.macd_cross = bt.indicators.CrossOver(self.macd.macd, self.macd.signal)
        self.stoch = bt.indicators.Stochastic(self.data, period=self.p.stoch_period)
        self.stoch_cross = bt.indicators.CrossOver(self.stoch.percK, self.stoch.percD)

    def next(self):
        close = self.data.close[0]
        if not self.position:
            pulled_back = self.rsi[0] < self.p.rsi_low or close < self.bands.mid[0]
            turning_up = self.stoch_cross[0] > 0
            if pulled_back and turning_up:
                self.buy()
        else:
            stretched = self.rsi[0] > self.p.rsi_high or close > self.bands.top[0]
            turning_down = self.macd_cross[0] < 0 and close < self.position.price
            if stretched or turning_down:
                self.close()

"""MT5 timeframes (docs/interface.md section 3): codes, names, and their length in time."""

from __future__ import annotations

from enum import IntEnum


class Timeframe(IntEnum):
    """An MT5 timeframe; the value is MT5's code, the name its usual name."""

    M1 = 1
    M2 = 2
    M3 = 3
    M4 = 4
    M5 = 5
    M6 = 6
    M10 = 10
    M12 = 12
    M15 = 15
    M20 = 20
    M30 = 30
    H1 = 16385
    H2 = 16386
    H3 = 16387
    H4 = 16388
    H6 = 16390
    H8 = 16392
    H12 = 16396
    D1 = 16408
    W1 = 32769
    MN1 = 49153

    @classmethod
    def parse(cls, value: int | str) -> Timeframe:
        """Accept a code (16385, "16385") or a name ("H1", "h1").

        Raises:
            ValueError: the value names no MT5 timeframe.
        """
        if isinstance(value, bool):
            raise ValueError("must be an MT5 timeframe code or name, not a boolean")
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"{value} is not an MT5 timeframe code") from None
        text = value.strip().upper()
        if text.isdigit():
            return cls.parse(int(text))
        try:
            return cls[text]
        except KeyError:
            names = ", ".join(t.name for t in cls)
            raise ValueError(f"{value!r} is not an MT5 timeframe; one of {names}") from None

    @property
    def minutes(self) -> int:
        """Nominal length in minutes (a month counts as 30 days, for ordering only)."""
        if self.name.startswith("M") and self is not Timeframe.MN1:
            return int(self.name[1:])
        if self.name.startswith("H"):
            return 60 * int(self.name[1:])
        return {"D1": 1440, "W1": 7 * 1440, "MN1": 30 * 1440}[self.name]

    @property
    def periods_per_year(self) -> float:
        """Bars in a trading year, used to annualise returns and volatility."""
        if self is Timeframe.MN1:
            return 12.0
        if self is Timeframe.W1:
            return 52.0
        if self is Timeframe.D1:
            return 252.0
        # Intraday: 252 sessions of 6.5 hours, the convention for exchange-traded bars.
        return 252.0 * 6.5 * 60.0 / self.minutes

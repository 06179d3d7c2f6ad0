"""EMA cross baseline: long when the fast EMA is above the slow one, short when below (or flat, if
`allow_short` is off). One instance trades every symbol of the universe. It exists to check the plumbing
and as a yardstick for the ML strategies."""

from nautilus_trader.indicators import ExponentialMovingAverage
from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import PositionSide

from strategies.base import QTStrategy, QTStrategyConfig


class EmaCrossConfig(QTStrategyConfig, frozen=True):
    fast_period: int = 12
    slow_period: int = 48
    allow_short: bool = True


class EmaCross(QTStrategy):
    def __init__(self, config: EmaCrossConfig):
        if not 0 < config.fast_period < config.slow_period:
            raise ValueError(
                f"fast_period must be positive and below slow_period (got {config.fast_period}, {config.slow_period})"
            )
        super().__init__(config)
        self._emas: dict = {}

    def on_strategy_start(self) -> None:
        for bar_type in self.bar_types:
            fast = ExponentialMovingAverage(self.config.fast_period)
            slow = ExponentialMovingAverage(self.config.slow_period)
            self.register_indicator_for_bars(bar_type, fast)
            self.register_indicator_for_bars(bar_type, slow)
            self._emas[bar_type.instrument_id] = (fast, slow)

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        fast, slow = self._emas[iid]
        if not slow.initialized:
            return
        want = PositionSide.LONG if fast.value > slow.value else PositionSide.SHORT
        if want == PositionSide.SHORT and not self.config.allow_short:
            want = PositionSide.FLAT
        self.go_to(iid, want, bar.close.as_double())

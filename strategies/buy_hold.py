"""Buy-and-hold baseline: one long of `notional_usd` per symbol on its first bar, held to the end."""

from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import OrderSide

from strategies.base import QTStrategy, QTStrategyConfig


class BuyHoldConfig(QTStrategyConfig, frozen=True):
    pass


class BuyHold(QTStrategy):
    def __init__(self, config: BuyHoldConfig):
        super().__init__(config)
        self._entered: set = set()

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        if iid not in self._entered and self.enter(iid, OrderSide.BUY, bar.close.as_double()):
            self._entered.add(iid)

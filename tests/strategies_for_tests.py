"""Tiny strategies whose trades a test can compute by hand."""

from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import OrderSide

from strategies.base import QTStrategy, QTStrategyConfig


class EnterOnceConfig(QTStrategyConfig, frozen=True):
    enter_on_bar: int = 3
    side: str = "BUY"
    exit_on_bar: int = 0  # 0 = hold to the end


class EnterOnce(QTStrategy):
    """Enters every instrument on its n-th bar and optionally exits on a later bar."""

    def on_strategy_start(self) -> None:
        self.seen: dict = {}
        self.decisions: list[
            tuple[str, int, float]
        ] = []  # (instrument, bar ts, close) when an order was sent

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        n = self.seen[iid] = self.seen.get(iid, 0) + 1
        if n == self.config.enter_on_bar:
            side = OrderSide.BUY if self.config.side == "BUY" else OrderSide.SELL
            if self.enter(iid, side, bar.close.as_double()):
                self.decisions.append((str(iid), bar.ts_event, bar.close.as_double()))
        elif n == self.config.exit_on_bar:
            self.exit(iid)
            self.decisions.append((str(iid), bar.ts_event, bar.close.as_double()))


class EnterWithAtrConfig(QTStrategyConfig, frozen=True):
    enter_on_bar: int = 3
    side: str = "BUY"
    atr: float = 1.0  # in price: R = r_atr x atr
    confidence: float = 0.8


class EnterWithAtr(QTStrategy):
    """Enters every instrument once, on its n-th bar, with a fixed ATR: exits are the Exit Brain's."""

    def on_strategy_start(self) -> None:
        self.seen: dict = {}

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        n = self.seen[iid] = self.seen.get(iid, 0) + 1
        if n == self.config.enter_on_bar:
            side = OrderSide.BUY if self.config.side == "BUY" else OrderSide.SELL
            self.enter(
                iid, side, bar.close.as_double(), confidence=self.config.confidence, atr=self.config.atr
            )

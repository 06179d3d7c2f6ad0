"""A strategy that subscribes to every bar and does nothing: the yardstick for engine overhead."""

from nautilus_trader.model.data import Bar

from strategies.base import QTStrategy, QTStrategyConfig


class EmptyConfig(QTStrategyConfig, frozen=True):
    pass


class Empty(QTStrategy):
    def on_bar(self, bar: Bar) -> None:
        pass

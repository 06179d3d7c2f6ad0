"""Momentum baseline: long when the return over the last `lookback_bars` is positive, short when negative
(or flat, if `allow_short` is off), re-evaluated every `rebalance_bars` bars. One instance trades every
symbol of the universe. It is the yardstick an ML forecaster of short-horizon returns has to beat: the
simplest rule that bets the recent move goes on.

`trade_start` (ISO time or ns, optional): bars before it only fill the lookback, so a walk-forward test
window can start trading on its first bar (see backtests/walkforward.py).
"""

from collections import deque

import pandas as pd
from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import PositionSide

from strategies.base import QTStrategy, QTStrategyConfig


class MomentumConfig(QTStrategyConfig, frozen=True):
    lookback_bars: int = 12
    rebalance_bars: int = 12
    allow_short: bool = True
    trade_start: str | int | None = None


class Momentum(QTStrategy):
    def __init__(self, config: MomentumConfig):
        if config.lookback_bars < 1 or config.rebalance_bars < 1:
            raise ValueError(
                f"lookback_bars and rebalance_bars must be at least 1 "
                f"(got {config.lookback_bars}, {config.rebalance_bars})"
            )
        super().__init__(config)
        self._trade_start_ns = (
            pd.Timestamp(config.trade_start).value if config.trade_start is not None else None
        )
        self._closes: dict = {}
        self._eligible: dict = {}  # bars seen per symbol since it could first trade

    def on_strategy_start(self) -> None:
        for bar_type in self.bar_types:
            self._closes[bar_type.instrument_id] = deque(maxlen=self.config.lookback_bars + 1)
            self._eligible[bar_type.instrument_id] = 0

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        closes = self._closes[iid]
        closes.append(bar.close.as_double())
        if len(closes) < closes.maxlen:
            return
        if self._trade_start_ns is not None and bar.ts_event < self._trade_start_ns:
            return
        n = self._eligible[iid]
        self._eligible[iid] = n + 1
        if n % self.config.rebalance_bars:
            return
        move = closes[-1] / closes[0] - 1.0
        if move == 0:
            return  # no direction: keep what is held
        want = PositionSide.LONG if move > 0 else PositionSide.SHORT
        if want == PositionSide.SHORT and not self.config.allow_short:
            want = PositionSide.FLAT
        self.go_to(iid, want, bar.close.as_double())

"""Tiny strategies whose trades a test can compute by hand."""

from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import OrderSide, PositionSide

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


class EnterEverywhereConfig(QTStrategyConfig, frozen=True):
    start_bar: int = 30
    direction: str = "alternate"  # long | alternate (by symbol) | short
    confidence: float = 0.9
    atr_ratio: float = 0.005


class EnterEverywhere(QTStrategy):
    """An aggressive signal source: every bar, every flat symbol gets an entry signal.

    Records after each timestamp what the book looks like, so a test can check the risk limits held.
    """

    def on_strategy_start(self) -> None:
        self.seen: dict = {}
        self.samples: list[tuple[int, int, float, float]] = []  # ts, open positions, gross notional, equity
        self._last_ts = 0
        self._order = {bt.instrument_id: i for i, bt in enumerate(self.bar_types)}

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        if bar.ts_event != self._last_ts:
            self._last_ts = bar.ts_event
            self._sample(bar.ts_event)
        n = self.seen[iid] = self.seen.get(iid, 0) + 1
        direction = self._direction(iid)
        if self.risk is not None:
            self.risk.observe_signal(direction)
        if n < self.config.start_bar or self.net_side(iid) != PositionSide.FLAT:
            return
        price = bar.close.as_double()
        side = OrderSide.BUY if direction == "LONG" else OrderSide.SELL
        self.enter(iid, side, price, confidence=self.config.confidence, atr=self.config.atr_ratio * price)

    def _direction(self, iid) -> str:
        mode = self.config.direction
        if mode == "alternate":
            return "LONG" if self._order[iid] % 2 == 0 else "SHORT"
        return "LONG" if mode == "long" else "SHORT"

    def _sample(self, ts: int) -> None:
        positions = self.cache.positions_open()
        gross = sum(abs(self.portfolio.net_exposure(p.instrument_id).as_double()) for p in positions)
        equity = self.risk.equity() if self.risk is not None else float("nan")
        self.samples.append((ts, len(positions), gross, equity))


class IgnoresOrderBudgetConfig(EnterWithAtrConfig, frozen=True):
    pass


class IgnoresOrderBudget(EnterWithAtr):
    """Sends whatever it decides, whatever the order-rate window holds: the node's throttle decides."""

    def order_rate_allows(self, orders: int, new_positions: int = 0) -> bool:
        return True


class EnterWhenFlatConfig(QTStrategyConfig, frozen=True):
    side: str = "BUY"
    atr: float = 1.0  # in price: R = r_atr x atr
    enter_at_or_below: float = 1e18  # only on bars that close at or below this price


class EnterWhenFlat(QTStrategy):
    """Enters every instrument whenever it holds nothing there (and the close is at or below
    `enter_at_or_below`), with a fixed ATR: exits are the Exit Brain's. A node restarted on an open position
    must see that position (the base's `net_side`), or this strategy enters a second time."""

    def on_strategy_start(self) -> None:
        self.entries = 0

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        price = bar.close.as_double()
        if price > self.config.enter_at_or_below or self.net_side(iid) != PositionSide.FLAT:
            return
        side = OrderSide.BUY if self.config.side == "BUY" else OrderSide.SELL
        if self.enter(iid, side, price, atr=self.config.atr):
            self.entries += 1


class FaultProbeConfig(QTStrategyConfig, frozen=True):
    enter_on: tuple[int, ...] = ()  # live bar numbers (1 = the first bar on_bar sees) that enter long if flat
    exit_on: tuple[int, ...] = ()  # live bar numbers that close the position at market if one is open
    atr: float = 2.0  # in price: R for the Exit Brain
    report_path: str = ""  # JSON written after every bar and order event (tests/test_live_faults.py reads it)
    early_bar_on: int = 0  # at this bar, receive a copy stamped `early_bar_steps` bars ahead of the clock
    early_bar_steps: int = 3


class FaultProbe(QTStrategy):
    """Enters and exits on given bar numbers through `enter` / `exit` (the Exit Brain's stops and closes), and
    reports its orders, bars, backfilled bars, feed gaps and guard counters as JSON for the fault tests."""

    def on_strategy_start(self) -> None:
        self.seen: list[int] = []
        self.backfilled: list[int] = []

    def on_warmup(self, bars: list[Bar]) -> None:
        super().on_warmup(bars)
        self.backfilled += [b.ts_event for b in bars]

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        self.seen.append(bar.ts_event)
        n = len(self.seen)
        flat = self.net_side(iid) == PositionSide.FLAT
        if n in self.config.enter_on and flat:
            self.enter(iid, OrderSide.BUY, bar.close.as_double(), atr=self.config.atr)
        elif n in self.config.exit_on and not flat:
            self.exit(iid)
        if n == self.config.early_bar_on:
            self.handle_bar(self._stamped_ahead(bar, self.config.early_bar_steps))
        self.report()

    @staticmethod
    def _stamped_ahead(bar: Bar, steps: int) -> Bar:
        """`bar` as a node whose host clock lags the venue's would receive one `steps` bars later."""
        ahead = steps * int(bar.bar_type.spec.timedelta.total_seconds() * 1e9)
        return Bar(
            bar.bar_type,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.ts_event + ahead,
            bar.ts_init,
        )

    def on_order_event(self, event) -> None:
        self.report()

    def on_stop(self) -> None:
        self.report()

    def report(self) -> None:
        if not self.config.report_path:
            return
        import json
        from pathlib import Path

        orders = [
            {
                "client_order_id": str(o.client_order_id),
                "type": o.type_string(),
                "status": o.status_string(),
                "reduce_only": o.is_reduce_only,
                "tags": list(o.tags or []),
                "filled_qty": str(o.filled_qty),
            }
            for o in self.cache.orders(strategy_id=self.id)
        ]
        positions = [
            {"id": str(p.id), "side": p.side.name, "quantity": str(p.quantity), "closed": p.is_closed}
            for p in self.cache.positions(strategy_id=self.id)
        ]
        report = {
            "bars": self.seen,
            "backfilled": self.backfilled,
            "feed_gaps": self.feed_gaps,
            "orders": orders,
            "positions": positions,
            "slow_orders": self.guard.slow_orders,
            "exit_retries": self.guard.exit_retries,
            "cancel_retries": self.guard.cancel_retries,
        }
        path = Path(self.config.report_path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        tmp.replace(path)

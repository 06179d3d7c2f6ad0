"""The Exit Brain: one exit manager for stop-loss, take-profits, break-even, trailing, time and emergency exits.

A strategy owns one (QTStrategy builds it from `exit_profile`) and the same code runs in backtests and live.

Everything that protects a position rests at the venue as a reduce-only order, so a node that dies keeps its
protection on the exchange:
- the stop: a stop-market order `stop_r` R from the entry (tag SL). After TP1 it moves to the entry price
  (tag BREAKEVEN) when the profile asks for it; with `trailing_atr` it follows the best price at that many
  ATRs (tag TRAILING) in steps of at least `trailing_step_atr`. With `liquidation_buffer` it never rests
  closer to the liquidation price than the buffer (tag LIQ_BUFFER when that is what set its level).
- each take-profit: a limit order at its R multiple for its fraction of the original quantity (TP1, TP2).

Binance cannot amend a stop-market order, so "amending" the stop is a replacement: the new stop is submitted
first and the old one is cancelled once the venue has accepted the new one, so the position is never without a
stop in between. A replacement the node denies (the order-rate limit) leaves the old stop in force; one the
venue rejects because its trigger was already crossed closes the position at market. A trailing step is sent
only while the order-rate budget keeps room to protect and close every position (strategies/order_budget.py),
and otherwise waits for the next bar.

Time stops, emergency and manual exits are market orders (reduce-only) sent when they are decided.

Every exit fill becomes an `ExitEvent` with its reason (quantum_trader/events.py), published on the bus. The
fill's PnL is signed price move x quantity minus that fill's commission; its R multiple is the signed price
move over R.
"""

import math
from dataclasses import dataclass, field

from nautilus_trader.model.data import Bar, DataType
from nautilus_trader.model.enums import OrderSide, PositionSide, TimeInForce
from nautilus_trader.model.events import OrderFilled
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.orders import Order
from nautilus_trader.model.position import Position

from quantum_trader.events import ExitEvent
from strategies.exit_profile import ExitProfile

EXIT_EVENT_TYPE = DataType(ExitEvent)
NS_PER_MINUTE = 60_000_000_000

# order tag -> exit reason
REASON_BY_TAG = {
    "SL": "sl",
    "BREAKEVEN": "breakeven",
    "TRAILING": "trailing",
    "LIQ_BUFFER": "liquidation_buffer",
    "TP1": "tp1",
    "TP2": "tp2",
    "TIME": "time",
    "EMERGENCY": "emergency",
    "MANUAL": "manual",
    "LIQUIDATION": "liquidation",
    "STRATEGY": "strategy",
}
STOP_TAGS = ("SL", "BREAKEVEN", "TRAILING", "LIQ_BUFFER")


@dataclass
class Managed:
    """The Exit Brain's view of one open position."""

    side: PositionSide
    entry: float
    risk_per_unit: float  # R in price
    atr: float
    opened_ns: int
    quantity: float
    guard: float = 0.0  # the strategy's liquidation guard level; 0.0 for none
    stop_price: float = 0.0
    stop_tag: str = "SL"
    stop_order: Order | None = None
    # Earlier stops, each with its price and tag, that stay until the venue accepts `stop_order`.
    retiring: list[tuple[Order, float, str]] = field(default_factory=list)
    tp_orders: list[Order] = field(default_factory=list)
    best: float = 0.0
    tp1_done: bool = False
    closing: bool = False

    @property
    def sign(self) -> float:
        return 1.0 if self.side == PositionSide.LONG else -1.0


class ExitBrain:
    def __init__(self, strategy, profile: ExitProfile, liquidation_price_of, guard_level_of):
        """From the strategy, which knows leverage and mmr: `liquidation_price_of(position) -> float`, and
        `guard_level_of(position) -> float`, where its liquidation guard rests (0.0 for none)."""
        self.strategy = strategy
        self.profile = profile
        self._liquidation_price_of = liquidation_price_of
        self._guard_level_of = guard_level_of
        self._atr_at_entry: dict[InstrumentId, float] = {}
        self.positions: dict[InstrumentId, Managed] = {}

    # ---- position lifecycle (called by the strategy's handlers) -------------------------------------
    def prepare(self, instrument_id: InstrumentId, atr: float) -> None:
        """Remember the ATR (in price) of an entry about to be sent; R is set from it when it fills."""
        self._atr_at_entry[instrument_id] = atr

    def on_position_opened(self, position: Position) -> None:
        iid = position.instrument_id
        atr = self._atr_at_entry.pop(iid, None)
        if atr is None or not math.isfinite(atr) or atr <= 0:
            self.strategy.log.error(f"Exit Brain: no ATR for {iid}; closing the unprotected position")
            self.close(iid, "STRATEGY", position)
            return
        p = self.profile
        entry = position.avg_px_open
        managed = Managed(
            side=position.side,
            entry=entry,
            risk_per_unit=p.r_atr * atr,
            atr=atr,
            opened_ns=position.ts_opened,
            quantity=position.quantity.as_double(),
            guard=self._guard_level_of(position),
            best=entry,
        )
        self.positions[iid] = managed
        stop, tag = self._initial_stop(managed, position)
        self._place_stop(iid, managed, stop, tag)
        self._place_take_profits(iid, managed)

    def on_position_changed(self, position: Position) -> None:
        managed = self.positions.get(position.instrument_id)
        if managed is None or position.is_closed:
            return
        quantity = position.quantity.as_double()
        if quantity > managed.quantity:  # the entry filled in parts: protect the whole size
            managed.quantity = quantity
            managed.guard = self._guard_level_of(position)
            self._cancel_all(managed)
            self._place_stop(position.instrument_id, managed, managed.stop_price, managed.stop_tag)
            self._place_take_profits(position.instrument_id, managed)
            return
        managed.quantity = quantity
        if managed.closing:
            return
        stop, tag = managed.stop_price, managed.stop_tag
        if (
            managed.tp1_done
            and self.profile.breakeven_after_tp1
            and managed.sign * (managed.entry - stop) > 0
        ):
            stop, tag = managed.entry, "BREAKEVEN"
        self._place_stop(position.instrument_id, managed, stop, tag)

    def on_position_closed(self, instrument_id: InstrumentId) -> None:
        managed = self.positions.pop(instrument_id, None)
        if managed is not None:
            self._cancel_all(managed)

    def on_order_filled(self, event: OrderFilled) -> None:
        order = self.strategy.cache.order(event.client_order_id)
        tag = _role(order)
        managed = self.positions.get(event.instrument_id)
        if tag is None or managed is None:
            return
        if tag == "TP1":
            managed.tp1_done = True
        reason = REASON_BY_TAG[tag]
        if tag in STOP_TAGS and _at_or_beyond(managed, event.last_px.as_double(), managed.guard):
            # A stop rests in front of the liquidation price, so only a bar that gapped past both fills it
            # there: on the exchange the mark price crossed the liquidation price first.
            reason = "liquidation"
        self._publish_exit(event, managed, reason)

    def on_order_accepted(self, order: Order | None) -> None:
        """The venue holds the new stop: the ones it replaces can go."""
        managed = self.positions.get(order.instrument_id) if order is not None else None
        if managed is None or order is not managed.stop_order or not managed.retiring:
            return
        for old, _, _ in managed.retiring:
            if not old.is_closed:
                self.strategy.cancel_order(old)
        managed.retiring = []

    def on_order_denied(self, order: Order | None) -> None:
        """The node refused an exit order before it reached the venue (the order-rate limit).

        A denied replacement stop leaves the one before it in force. A position whose first stop was denied has
        no protection, so it is closed at market with that stop's reason."""
        tag = _role(order)
        managed = self.positions.get(order.instrument_id) if tag is not None else None
        if managed is None:
            return
        if managed.closing or tag not in STOP_TAGS or order is not managed.stop_order:
            # a take-profit or a market close: the budget's reserve is there so that this does not happen
            self.strategy.log.error(
                f"Exit Brain: the {tag} order of {order.instrument_id} was denied by the node"
            )
            return
        if managed.retiring:
            managed.stop_order, managed.stop_price, managed.stop_tag = managed.retiring.pop()
            return
        self.strategy.log.error(
            f"Exit Brain: the stop of {order.instrument_id} was denied; closing at market"
        )
        self.close(order.instrument_id, tag)

    def on_order_rejected(self, order: Order | None) -> None:
        """A replacement stop the venue refused (its trigger was already crossed, e.g. the price went back
        through the entry before the break-even stop arrived): the position is closed at market instead, with
        the reason that stop would have had."""
        tag = _role(order)
        if tag not in STOP_TAGS:
            return
        managed = self.positions.get(order.instrument_id)
        if managed is None or managed.closing or order is not managed.stop_order:
            return
        self.close(order.instrument_id, tag)

    # ---- per bar: trailing and time stops -----------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        managed = self.positions.get(iid)
        if managed is None or managed.closing:
            return
        p = self.profile
        if (
            p.time_stop_minutes is not None
            and bar.ts_event - managed.opened_ns >= p.time_stop_minutes * NS_PER_MINUTE
        ):
            managed.closing = True  # decided: no trailing or second time stop while it is carried out
            self.strategy.decide(iid, lambda: self.close(iid, "TIME"))
            return
        if p.trailing_atr is not None:
            self._trail(iid, managed, bar)

    def _trail(self, iid: InstrumentId, managed: Managed, bar: Bar) -> None:
        extreme = bar.high.as_double() if managed.sign > 0 else bar.low.as_double()
        managed.best = max(managed.best, extreme) if managed.sign > 0 else min(managed.best, extreme)
        candidate = managed.best - managed.sign * self.profile.trailing_atr * managed.atr
        step = self.profile.trailing_step_atr * managed.atr
        if managed.sign * (candidate - managed.stop_price) >= step and self.strategy.order_rate_allows(1):
            self._place_stop(iid, managed, candidate, "TRAILING")

    def stop_comes_first(self, instrument_id: InstrumentId, price: float) -> bool:
        """The position's stop rests (or is on its way to the venue) where the market reaches it before `price`.

        Stops only ever move toward the market, and a stop that is denied or rejected is replaced by the one
        before it or by a market close, so once this holds it holds for the rest of the position's life."""
        managed = self.positions.get(instrument_id)
        if managed is None or managed.stop_order is None or managed.stop_order.is_closed:
            return False
        return managed.sign * (managed.stop_price - price) > 0

    def is_closing(self, instrument_id: InstrumentId) -> bool:
        managed = self.positions.get(instrument_id)
        return managed is not None and managed.closing

    # ---- market exits --------------------------------------------------------------------------------
    def close(self, instrument_id: InstrumentId, tag: str, position: Position | None = None) -> None:
        """Cancel the resting exits and close the whole position at market; `tag` gives the reason."""
        position = position or self._open_position(instrument_id)
        managed = self.positions.get(instrument_id)
        if managed is not None:
            managed.closing = True
            self._cancel_all(managed)
        if position is not None and not position.is_closed:
            self.strategy.reduce_at_market(position, position.quantity, tag)

    def reduce(self, instrument_id: InstrumentId, fraction: float, tag: str) -> None:
        """Close `fraction` of the position at market; the resting stop is resized when it fills."""
        position = self._open_position(instrument_id)
        if position is None:
            return
        instrument = self.strategy.cache.instrument(instrument_id)
        quantity = instrument.make_qty(position.quantity.as_double() * fraction)
        if quantity.as_double() <= 0:
            return
        if quantity >= position.quantity:
            self.close(instrument_id, tag, position)
            return
        self.strategy.reduce_at_market(position, quantity, tag)

    # ---- resting orders ------------------------------------------------------------------------------
    def _initial_stop(self, managed: Managed, position: Position) -> tuple[float, str]:
        stop = managed.entry - managed.sign * self.profile.stop_r * managed.risk_per_unit
        buffer = self.profile.liquidation_buffer
        if buffer is None:
            return stop, "SL"
        liquidation = self._liquidation_price_of(position)
        if liquidation <= 0:
            return stop, "SL"
        line = liquidation * (1 + managed.sign * buffer)
        if managed.sign * (stop - line) < 0:  # the stop would rest inside the buffer: the buffer sets it
            return line, "LIQ_BUFFER"
        return stop, "SL"

    def _place_stop(self, iid: InstrumentId, managed: Managed, price: float, tag: str) -> None:
        if _at_or_beyond(managed, price, managed.guard):
            # At or beyond the liquidation price the exchange liquidates first, so this stop could never fill;
            # and Nautilus matches the stops one tick crosses farthest first, so it would fill before the guard
            # at a worse price. The guard protects the position until the stop moves inside.
            if managed.stop_order is None or managed.stop_order.is_closed:
                managed.stop_price, managed.stop_tag = price, tag
            return
        instrument = self.strategy.cache.instrument(iid)
        quantity = instrument.make_qty(managed.quantity)
        if quantity.as_double() <= 0 or price <= 0:
            return
        order = self.strategy.order_factory.stop_market(
            instrument_id=iid,
            order_side=_closing_side(managed.side),
            quantity=quantity,
            trigger_price=instrument.make_price(price),
            time_in_force=TimeInForce.GTC,
            reduce_only=True,
            tags=[tag],
        )
        old = managed.stop_order
        if old is not None and not old.is_closed:
            managed.retiring.append((old, managed.stop_price, managed.stop_tag))
        # Set before sending: a denial arrives inside submit_order and must find this order as the stop.
        managed.stop_order, managed.stop_price, managed.stop_tag = order, price, tag
        self.strategy.submit_order(order)

    def _place_take_profits(self, iid: InstrumentId, managed: Managed) -> None:
        instrument = self.strategy.cache.instrument(iid)
        remaining = managed.quantity
        levels = self.profile.take_profits
        for i, level in enumerate(levels):
            last = i == len(levels) - 1
            quantity = instrument.make_qty(remaining if last else managed.quantity * level.fraction)
            if quantity.as_double() <= 0:
                continue
            remaining -= quantity.as_double()
            price = managed.entry + managed.sign * level.r * managed.risk_per_unit
            if price <= 0:
                continue
            order = self.strategy.order_factory.limit(
                instrument_id=iid,
                order_side=_closing_side(managed.side),
                quantity=quantity,
                price=instrument.make_price(price),
                time_in_force=TimeInForce.GTC,
                post_only=False,
                reduce_only=True,
                tags=[f"TP{i + 1}"],
            )
            self.strategy.submit_order(order)
            managed.tp_orders.append(order)

    def _cancel_all(self, managed: Managed) -> None:
        for order in [managed.stop_order, *managed.tp_orders, *(old for old, _, _ in managed.retiring)]:
            if order is not None and not order.is_closed:
                self.strategy.cancel_order(order)
        managed.stop_order = None
        managed.tp_orders = []
        managed.retiring = []

    def _open_position(self, instrument_id: InstrumentId) -> Position | None:
        positions = self.strategy.cache.positions_open(
            instrument_id=instrument_id, strategy_id=self.strategy.id
        )
        return positions[0] if positions else None

    # ---- events --------------------------------------------------------------------------------------
    def _publish_exit(self, event: OrderFilled, managed: Managed, reason: str) -> None:
        price = event.last_px.as_double()
        quantity = event.last_qty.as_double()
        move = managed.sign * (price - managed.entry)
        commission = event.commission.as_double() if event.commission is not None else 0.0
        exit_event = ExitEvent(
            ts_event=event.ts_event,
            ts_init=self.strategy.clock.timestamp_ns(),
            instrument_id=event.instrument_id,
            reason=reason,
            position_side="LONG" if managed.sign > 0 else "SHORT",
            quantity=quantity,
            entry_price=managed.entry,
            exit_price=price,
            commission=commission,
            pnl=move * quantity - commission,
            r_multiple=move / managed.risk_per_unit,
            risk_per_unit=managed.risk_per_unit,
            position_id=str(event.position_id) if event.position_id is not None else "",
            order_id=str(event.client_order_id),
        )
        self.strategy.publish_data(EXIT_EVENT_TYPE, exit_event)


def _at_or_beyond(managed: Managed, price: float, liquidation: float) -> bool:
    """`price` is at or past the liquidation price, seen from the position's side; never without one (0.0)."""
    return liquidation > 0 and managed.sign * (price - liquidation) <= 0


def _closing_side(side: PositionSide) -> OrderSide:
    return OrderSide.SELL if side == PositionSide.LONG else OrderSide.BUY


def is_stop(order: Order | None) -> bool:
    """The order is one of the Exit Brain's stops (SL, break-even, trailing or the buffer's)."""
    return _role(order) in STOP_TAGS


def _role(order: Order | None) -> str | None:
    if order is None or not order.tags:
        return None
    for tag in order.tags:
        if tag in REASON_BY_TAG:
            return tag
    return None

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

Restart. An order's role is its tag, but orders that a live node's reconciliation rebuilds from the venue come
back without tags (Nautilus 1.231), and `Managed` lives in memory. So every change to a position's view is
written, as JSON, to the Cache general store under `qt.exit_brain.<strategy id>.<instrument id>`: the levels
and a side table of its open exit orders' roles by client order id (written before an order is sent). With a
cache database (the live node's Redis) `Cache.add` writes it through and the kernel loads it back when the node
is built; in a backtest it stays in the in-memory cache. `restore` (called by the strategy's on_start, after
reconciliation) rebuilds the view from these records and the orders and positions the cache holds.
"""

import json
import math
from dataclasses import dataclass, field

from nautilus_trader.model.data import Bar, DataType
from nautilus_trader.model.enums import OrderSide, OrderType, PositionSide, TimeInForce
from nautilus_trader.model.events import OrderFilled
from nautilus_trader.model.identifiers import ClientOrderId, InstrumentId
from nautilus_trader.model.orders import Order
from nautilus_trader.model.position import Position

from quantum_trader.events import ExitEvent
from quantum_trader.trace import with_trace
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
    "RECOVERY": "recovery",
}
STOP_TAGS = ("SL", "BREAKEVEN", "TRAILING", "LIQ_BUFFER")
STATE_KEY = "qt.exit_brain.{strategy_id}.{instrument_id}"  # Cache general key: JSON bytes of a Managed record


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
    closing_tag: str = ""
    trace_id: str = ""  # the entry decision's (quantum_trader/trace.py): every exit order carries it

    @property
    def sign(self) -> float:
        return 1.0 if self.side == PositionSide.LONG else -1.0

    def record(self, roles: dict[str, str]) -> dict:
        """What survives a restart (JSON): the levels, and the orders by client order id with their roles."""
        return {
            "side": self.side.name,
            "entry": self.entry,
            "risk_per_unit": self.risk_per_unit,
            "atr": self.atr,
            "opened_ns": self.opened_ns,
            "quantity": self.quantity,
            "guard": self.guard,
            "stop_price": self.stop_price,
            "stop_tag": self.stop_tag,
            "stop_id": _id(self.stop_order),
            "retiring": [[_id(o), price, tag] for o, price, tag in self.retiring],
            "tp_ids": [_id(o) for o in self.tp_orders],
            "best": self.best,
            "tp1_done": self.tp1_done,
            "closing": self.closing,
            "closing_tag": self.closing_tag,
            "trace_id": self.trace_id,
            "roles": roles,
        }


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
        # The side table: each exit order's role by client order id, per instrument. Orders rebuilt by a
        # live node's reconciliation come back without tags; this table (persisted with the position's
        # record) is how their roles are known after a restart.
        self._roles: dict[InstrumentId, dict[str, str]] = {}
        self._saved: dict[InstrumentId, bytes] = {}

    # ---- roles and persistence ----------------------------------------------------------------------
    def role(self, order: Order | None) -> str | None:
        """The order's exit role: its tag, else the side table (a reconciled order has no tags)."""
        if order is None:
            return None
        tag = _role(order)
        if tag is not None:
            return tag
        roles = self._roles.get(order.instrument_id)
        return roles.get(order.client_order_id.value) if roles else None

    def is_stop(self, order: Order | None) -> bool:
        """The order is one of the Exit Brain's stops (SL, break-even, trailing or the buffer's)."""
        return self.role(order) in STOP_TAGS

    def _register(self, order: Order, tag: str) -> None:
        self._roles.setdefault(order.instrument_id, {})[order.client_order_id.value] = tag

    def trace_of(self, instrument_id: InstrumentId) -> str:
        """The trace id of the managed position (kept in its record, so it survives a restart)."""
        managed = self.positions.get(instrument_id)
        return managed.trace_id if managed is not None else ""

    def state_key(self, instrument_id: InstrumentId) -> str:
        return STATE_KEY.format(strategy_id=self.strategy.id, instrument_id=instrument_id)

    def _save(self, instrument_id: InstrumentId) -> None:
        """Write the position's record to the Cache general store (Redis on a node with a cache database, the
        in-memory cache in a backtest), when it changed. A closed position leaves an empty record."""
        managed = self.positions.get(instrument_id)
        if managed is None:
            data = b"{}"
        else:
            cache = self.strategy.cache
            roles = {}
            for coid, tag in self._roles.get(instrument_id, {}).items():
                order = cache.order(ClientOrderId(coid))
                if order is None or not order.is_closed:
                    roles[coid] = tag
            data = json.dumps(managed.record(roles), separators=(",", ":")).encode()
        if self._saved.get(instrument_id, b"{}") != data:
            self._saved[instrument_id] = data
            self.strategy.cache.add(self.state_key(instrument_id), data)

    def _load(self, instrument_id: InstrumentId) -> dict | None:
        raw = self.strategy.cache.get(self.state_key(instrument_id))
        if not raw:
            return None
        try:
            record = json.loads(raw)
        except ValueError as err:
            self.strategy.log.warning(f"Exit Brain: unreadable state for {instrument_id} ignored ({err})")
            return None
        if not isinstance(record, dict):
            self.strategy.log.warning(
                f"Exit Brain: unreadable state for {instrument_id} ignored (not an object)"
            )
            return None
        return record or None

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
            trace_id=self.strategy.position_trace(position),
        )
        self.positions[iid] = managed
        stop, tag = self._initial_stop(managed, position)
        self._place_stop(iid, managed, stop, tag)
        self._place_take_profits(iid, managed)
        self._save(iid)

    def on_position_changed(self, position: Position) -> None:
        managed = self.positions.get(position.instrument_id)
        if managed is None or position.is_closed:
            return
        self._resize(position, managed)
        self._save(position.instrument_id)

    def _resize(self, position: Position, managed: Managed) -> None:
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
        self._roles.pop(instrument_id, None)
        self._save(instrument_id)

    def on_order_filled(self, event: OrderFilled) -> None:
        order = self.strategy.cache.order(event.client_order_id)
        tag = self.role(order)
        managed = self.positions.get(event.instrument_id)
        if tag is None or managed is None:
            return
        if tag == "TP1":
            managed.tp1_done = True
            self._save(event.instrument_id)
        reason = REASON_BY_TAG[tag]
        if tag in STOP_TAGS and _at_or_beyond(managed, event.last_px.as_double(), managed.guard):
            # A stop rests in front of the liquidation price, so only a bar that gapped past both fills it
            # there: on the exchange the mark price crossed the liquidation price first.
            reason = "liquidation"
        self._publish_exit(event, managed, reason)

    def on_order_accepted(self, order: Order | None) -> None:
        """The venue holds the new stop: the ones it replaces can go."""
        managed = self.positions.get(order.instrument_id) if order is not None else None
        if managed is None or not _same(order, managed.stop_order) or not managed.retiring:
            return
        for old, _, _ in managed.retiring:
            if not old.is_closed:
                self.strategy.cancel_order(old)
        managed.retiring = []
        self._save(order.instrument_id)

    def on_order_canceled(self, order: Order | None) -> None:
        """A cancelled exit leaves the side table (at the next write of the record, which is now)."""
        if order is not None and order.client_order_id.value in self._roles.get(order.instrument_id, {}):
            self._save(order.instrument_id)

    def on_order_denied(self, order: Order | None) -> None:
        """The node refused an exit order before it reached the venue (the order-rate limit).

        A denied replacement stop leaves the one before it in force. A position whose first stop was denied has
        no protection, so it is closed at market with that stop's reason."""
        tag = self.role(order)
        managed = self.positions.get(order.instrument_id) if tag is not None else None
        if managed is None:
            return
        if managed.closing or tag not in STOP_TAGS or not _same(order, managed.stop_order):
            # a take-profit or a market close: the budget's reserve is there so that this does not happen
            self.strategy.log.error(
                f"Exit Brain: the {tag} order of {order.instrument_id} was denied by the node"
            )
            return
        if managed.retiring:
            managed.stop_order, managed.stop_price, managed.stop_tag = managed.retiring.pop()
            self._save(order.instrument_id)
            return
        self.strategy.log.error(
            f"Exit Brain: the stop of {order.instrument_id} was denied; closing at market"
        )
        self.close(order.instrument_id, tag)

    def on_order_rejected(self, order: Order | None) -> None:
        """A replacement stop the venue refused (its trigger was already crossed, e.g. the price went back
        through the entry before the break-even stop arrived): the position is closed at market instead, with
        the reason that stop would have had."""
        tag = self.role(order)
        if tag not in STOP_TAGS:
            return
        managed = self.positions.get(order.instrument_id)
        if managed is None or managed.closing or not _same(order, managed.stop_order):
            return
        self.close(order.instrument_id, tag)

    # ---- restart: rebuild the view from the persisted records and the reconciled cache -------------
    def restore(self, instrument_ids) -> list[str]:
        """At start (after a live node's reconciliation), take over what the cache holds for this strategy.

        For each instrument: an open position with a record of the same side gets its levels back (entry, R,
        stop level and tag, best price, TP1 done) and its resting exits are found again by client order id.
        A position without a usable record is adopted from its resting reduce-only stop (R from the stop's
        distance), or closed at market (tag RECOVERY) when nothing protects it. A record whose position is
        gone (closed while the node was down) is cleared, and reduce-only orders left without a position are
        cancelled. In a backtest the cache holds none of this at start and nothing happens. Returns one line
        per instrument taken over (also logged)."""
        lines = []
        for iid in instrument_ids:
            record = self._load(iid)
            position = self._open_position(iid)
            orders = [
                o
                for o in self.strategy.cache.orders_open(instrument_id=iid, strategy_id=self.strategy.id)
                if o.is_reduce_only
            ]
            if position is None:
                for order in orders:
                    self.strategy.log.warning(
                        f"Exit Brain: {iid} is flat; cancelling the orphan exit order {order.client_order_id}"
                    )
                    self.strategy.cancel_order(order)
                if record is not None:
                    self.strategy.log.info(
                        f"Exit Brain: {iid} closed while the node was down; record cleared"
                    )
                    self._saved[iid] = b""
                    self._save(iid)
                continue
            line, restored = None, False
            if record is not None and record.get("side") == position.side.name:
                try:
                    line = self._restore_recorded(iid, position, record, orders)
                    restored = True
                except (AttributeError, KeyError, TypeError, ValueError) as err:
                    self.strategy.log.warning(f"Exit Brain: unusable record of {iid} ignored ({err!r})")
                    self.positions.pop(iid, None)
                    self._roles.pop(iid, None)
            elif record is not None:
                self.strategy.log.warning(
                    f"Exit Brain: the record of {iid} says {record.get('side')}, the venue "
                    f"{position.side.name}: record ignored"
                )
            if not restored:
                line = self._adopt_unknown(iid, position, orders)
            self._saved[iid] = b""
            self._save(iid)
            if line:
                self.strategy.log.info(line)
                lines.append(line)
        return lines

    def _restore_recorded(self, iid, position: Position, record: dict, orders: list[Order]) -> str:
        roles = {k: str(v) for k, v in (record.get("roles") or {}).items()}
        self._roles[iid] = dict(roles)
        managed = Managed(
            side=position.side,
            entry=float(record["entry"]),
            risk_per_unit=float(record["risk_per_unit"]),
            atr=float(record["atr"]),
            opened_ns=int(record["opened_ns"]),
            quantity=float(record["quantity"]),
            guard=float(record.get("guard", 0.0)),
            stop_price=float(record["stop_price"]),
            stop_tag=str(record["stop_tag"]),
            best=float(record["best"]),
            tp1_done=bool(record.get("tp1_done", False)),
            closing=bool(record.get("closing", False)),
            closing_tag=str(record.get("closing_tag", "")),
            trace_id=str(record.get("trace_id", "")),
        )
        self.positions[iid] = managed
        if managed.closing:
            tag = managed.closing_tag or "RECOVERY"
            self.strategy.log.warning(
                f"Exit Brain: {iid} was being closed ({tag}) at the restart; closing it"
            )
            for order in orders:
                self._roles[iid].setdefault(order.client_order_id.value, "RECOVERY")
            managed.tp_orders = list(orders)  # cancelled by close() with the rest
            self.close(iid, tag, position)
            return f"Exit Brain: {iid} {position.side.name} {position.quantity} closing at market ({tag})"
        by_id = {o.client_order_id.value: o for o in orders}
        closing_side = _closing_side(position.side)
        # The stop: the one nearest the market among the recorded stops still open and any unknown reduce-only
        # stop on the closing side (stops only move toward the market, so it is the newest); the rest go.
        stops = []
        for coid, price, tag in [[record.get("stop_id"), managed.stop_price, managed.stop_tag]] + [
            list(r) for r in record.get("retiring") or []
        ]:
            if coid in by_id:
                stops.append((by_id.pop(coid), float(price), str(tag)))
        tps = [by_id.pop(coid) for coid in record.get("tp_ids") or [] if coid in by_id]
        for order in list(by_id.values()):
            if order.order_type == OrderType.STOP_MARKET and order.side == closing_side:
                self.strategy.log.warning(f"Exit Brain: {iid} has an unrecorded stop {order.client_order_id}")
                stops.append((by_id.pop(order.client_order_id.value), order.trigger_price.as_double(), "SL"))
        for order in by_id.values():
            self.strategy.log.warning(
                f"Exit Brain: cancelling {order.client_order_id} of {iid}: not in the Exit Brain's record"
            )
            self.strategy.cancel_order(order)
        managed.tp_orders = tps
        missing_stop = not stops
        if stops:
            stops.sort(key=lambda s: managed.sign * s[0].trigger_price.as_double())
            managed.stop_order, managed.stop_price, managed.stop_tag = stops[-1]
            self._roles[iid][managed.stop_order.client_order_id.value] = managed.stop_tag
            for order, _, _ in stops[:-1]:
                self.strategy.cancel_order(order)
        quantity = position.quantity.as_double()
        if quantity < managed.quantity and record.get("tp_ids"):
            first_tp = record["tp_ids"][0]
            if first_tp not in {o.client_order_id.value for o in tps}:
                managed.tp1_done = True  # TP1 filled while the node was down
        resize = missing_stop or abs(quantity - managed.quantity) > 1e-12
        if missing_stop:
            self.strategy.log.warning(
                f"Exit Brain: no stop of {iid} rests at the venue; placing it again at {managed.stop_price:g}"
            )
        if resize:
            if quantity > managed.quantity:
                managed.quantity = quantity
                self._cancel_all(managed)
                self._place_stop(iid, managed, managed.stop_price, managed.stop_tag)
                self._place_take_profits(iid, managed)
            else:
                if missing_stop:
                    managed.stop_order = None
                self._resize(position, managed)
        return (
            f"Exit Brain: adopted {position.side.name} {position.quantity} {iid} at {managed.entry:g} "
            f"(R {managed.risk_per_unit:g}): stop {_id(managed.stop_order)} {managed.stop_tag} at "
            f"{managed.stop_price:g}, take-profits {[_id(o) for o in managed.tp_orders]}"
        )

    def _adopt_unknown(self, iid, position: Position, orders: list[Order]) -> str | None:
        """A position the Exit Brain has no record of: keep its resting stop, or close it."""
        closing_side = _closing_side(position.side)
        sign = 1.0 if position.side == PositionSide.LONG else -1.0
        stops = [o for o in orders if o.order_type == OrderType.STOP_MARKET and o.side == closing_side]
        limits = [o for o in orders if o.order_type == OrderType.LIMIT and o.side == closing_side]
        entry = position.avg_px_open
        if not stops:
            self.strategy.log.warning(
                f"Exit Brain: {position.side.name} {position.quantity} {iid} at {entry:g} has no record and no "
                "resting stop: closing it at market (RECOVERY)"
            )
            # R is unknown: the exit event of this close reports no R multiple (NaN)
            managed = Managed(
                position.side, entry, math.nan, math.nan, position.ts_opened, position.quantity.as_double(),
                trace_id=self.strategy.position_trace(position),
            )  # fmt: skip
            managed.tp_orders = orders  # whatever rests goes with it
            self.positions[iid] = managed
            for order in orders:
                self._register(order, "RECOVERY")
            self.close(iid, "RECOVERY", position)
            return None
        stops.sort(key=lambda o: sign * o.trigger_price.as_double())
        stop = stops[-1]
        for extra in stops[:-1]:
            self.strategy.cancel_order(extra)
        stop_price = stop.trigger_price.as_double()
        risk = abs(entry - stop_price) / self.profile.stop_r
        managed = Managed(
            side=position.side,
            entry=entry,
            risk_per_unit=risk if risk > 0 else abs(entry) * 1e-3,
            atr=risk / self.profile.r_atr,
            opened_ns=position.ts_opened,
            quantity=position.quantity.as_double(),
            guard=self._guard_level_of(position),
            stop_price=stop_price,
            stop_tag="SL",
            stop_order=stop,
            best=entry,
            trace_id=self.strategy.position_trace(position),
        )
        limits.sort(key=lambda o: sign * o.price.as_double())
        managed.tp_orders = limits
        self.positions[iid] = managed
        self._register(stop, "SL")
        for i, order in enumerate(limits):
            self._register(order, f"TP{min(i + 1, len(self.profile.take_profits))}")
        self.strategy.log.warning(
            f"Exit Brain: no record of {position.side.name} {position.quantity} {iid}; adopted its resting stop "
            f"{stop.client_order_id} at {stop_price:g} (R {managed.risk_per_unit:g} from the stop's distance)"
        )
        return (
            f"Exit Brain: adopted {position.side.name} {position.quantity} {iid} at {entry:g} without a record: "
            f"stop {stop.client_order_id} at {stop_price:g}, take-profits {[_id(o) for o in limits]}"
        )

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
            managed.closing_tag = "TIME"
            self._save(iid)
            self.strategy.decide(iid, lambda: self.close(iid, "TIME"))
            return
        if p.trailing_atr is not None:
            best, stop = managed.best, managed.stop_order
            self._trail(iid, managed, bar)
            if managed.best != best or managed.stop_order is not stop:
                self._save(iid)

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
            managed.closing_tag = tag
            self._cancel_all(managed)
        if position is not None and not position.is_closed:
            self._register(self.strategy.reduce_at_market(position, position.quantity, tag), tag)
        self._save(instrument_id)

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
        self._register(self.strategy.reduce_at_market(position, quantity, tag), tag)
        self._save(instrument_id)

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
            tags=with_trace([tag], managed.trace_id),
        )
        old = managed.stop_order
        if old is not None and not old.is_closed:
            managed.retiring.append((old, managed.stop_price, managed.stop_tag))
        # Set before sending: a denial arrives inside submit_order and must find this order as the stop.
        managed.stop_order, managed.stop_price, managed.stop_tag = order, price, tag
        self._register(order, tag)
        self._save(iid)  # the role is written before the venue can hold the order
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
                tags=with_trace([f"TP{i + 1}"], managed.trace_id),
            )
            managed.tp_orders.append(order)
            self._register(order, f"TP{i + 1}")
            self._save(iid)
            self.strategy.submit_order(order)

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
            trace_id=managed.trace_id,
        )
        if managed.trace_id:
            self.strategy.log.info(
                f"trace_id={managed.trace_id} exit {reason} {exit_event.position_side} {event.last_qty} "
                f"{event.instrument_id} @ {event.last_px} pnl={exit_event.pnl:.4f} "
                f"r={exit_event.r_multiple:.3f} {event.client_order_id}"
            )
        self.strategy.publish_data(EXIT_EVENT_TYPE, exit_event)


def _at_or_beyond(managed: Managed, price: float, liquidation: float) -> bool:
    """`price` is at or past the liquidation price, seen from the position's side; never without one (0.0)."""
    return liquidation > 0 and managed.sign * (price - liquidation) <= 0


def _closing_side(side: PositionSide) -> OrderSide:
    return OrderSide.SELL if side == PositionSide.LONG else OrderSide.BUY


def _id(order: Order | None) -> str | None:
    return order.client_order_id.value if order is not None else None


def _same(order: Order | None, other: Order | None) -> bool:
    return order is not None and other is not None and order.client_order_id == other.client_order_id


def _role(order: Order | None) -> str | None:
    if order is None or not order.tags:
        return None
    for tag in order.tags:
        if tag in REASON_BY_TAG:
            return tag
    return None

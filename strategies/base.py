"""The base every Quantum Trader strategy derives from: multi-symbol bars, margin checks, liquidation.

A strategy author implements `on_bar` and calls `enter` / `exit`. The base provides what Nautilus leaves
to us for MARGIN accounts:

- A margin check before every entry: the initial margin (notional / leverage) must fit in the account's free
  balance. Nautilus' RiskEngine does not check it for margin accounts, so without this a 1k account can open
  a 100k position.
- A liquidation guard: while a position is open, a reduce-only stop-market order rests at its liquidation
  price, tagged LIQUIDATION. It is re-placed whenever the position changes, and left out while the Exit
  Brain's stop rests between it and the market: that stop always fills first, so the guard would only cost
  orders, and for an unlevered long, whose liquidation needs a 99.5% fall. Isolated-margin rule for linear
  USDT-M contracts:
  long liq = entry * (1 - 1/leverage + mmr); short liq = entry * (1 + 1/leverage - mmr).
  In a backtest this is how the margin-exhausted position gets closed at its liquidation price; live, the
  exchange liquidates first, and the order is a harmless last line of defence.
- An order-rate budget (strategies/order_budget.py): entries wait for room in the node's order-rate window,
  so the orders that protect positions are never denied.
- Warm-up (`warmup_bars`, the live node sets it): at start the strategy requests that much history of every
  bar type, so its indicators and features are ready at the first live bar. History arrives through
  `on_historical_data`, not `on_bar` (Nautilus' request path; registered indicators are updated on the way).
  Once every request has answered (or `warmup_timeout_seconds` passed), the history is handed to
  `on_warmup(bars)` in close-time order, with entries refused, and the live bars that arrived meanwhile are
  then played in order (those the history already held are dropped). A backtest needs none of this: its
  warm-up bars are simply the first bars of the run (and `trade_start` keeps entries out of them).
- Feed gaps: a bar more than one interval after the instrument's previous bar means bars were missed (Binance's
  websocket does not replay klines missed while it was disconnected). The gap is logged as a WARNING and
  published as RiskEvent(source feed_guard, code feed_gap); then, with `feed_gap_backfill`, the missing bars
  are requested and the same hold-and-replay path as the warm-up puts them through `on_warmup` before the
  held bar, so features never see a hole. When the backfill does not bring every missing bar within
  `feed_gap_timeout_seconds`, entries on that instrument are refused for `feed_gap_block_bars` bars.
- Venue faults left over after the exchange client's own retries (strategies/execution_guard.py): a rejected
  exit is sent again, a rejected cancel of a still-open order is retried, slow answers are logged.
- Trace ids (quantum_trader/trace.py): each entry decision gets one (from the strategy, the instrument and the
  decision bar's close), tagged `trace:<id>` on the entry order and on every exit order of the position it
  opens. The decision, each order sent, each fill, each veto and the position's close are logged (INFO) with
  `trace_id=<id>` in the message. Only acted-on decisions get an id: nothing is added per bar.

Two optional parts, each switched on by naming a profile in the config:
- `exit_profile` (configs/exits/): the Exit Brain (strategies/exit_brain.py) protects every position with
  resting reduce-only exits. Entries must then pass the ATR.
- `risk_profile` (configs/risk/): every entry is sized by the SPEC section 6 formula and reviewed by the
  risk gates (strategies/risk_control.py); the emergency stop's actions are carried out here, since only a
  strategy can send orders.
"""

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from nautilus_trader.common.component import is_logging_initialized
from nautilus_trader.config import StrategyConfig
from nautilus_trader.core.data import Data
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.enums import OrderSide, PositionSide, TimeInForce, TradingState
from nautilus_trader.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    PositionChanged,
    PositionClosed,
    PositionOpened,
)
from nautilus_trader.model.identifiers import ClientId, InstrumentId
from nautilus_trader.model.orders import Order
from nautilus_trader.model.position import Position
from nautilus_trader.trading.strategy import Strategy

from actors.risk_profile import risk_profile_from
from catalog.instruments import symbol_of
from quantum_trader.events import INTENT_TOPIC, WARMUP_TOPIC, OperatorCommand, RiskEvent
from quantum_trader.trace import role_of, trace_id, trace_of, with_trace
from strategies.execution_guard import ExecutionGuard
from strategies.exit_brain import ExitBrain
from strategies.exit_profile import exit_profile_from
from strategies.order_budget import RESERVE_PER_POSITION, OrderRateBudget
from strategies.risk_control import RiskControl

LIQUIDATION_TAG = "LIQUIDATION"
ENTRY_TAG = "ENTRY"
COMMANDS_CLIENT = ClientId("SIGNALS")  # operator commands and our events travel under this client id


class QTStrategyConfig(StrategyConfig, frozen=True):
    """`bar_types` is filled in from the backtest or node universe when left empty."""

    bar_types: tuple[str, ...] = ()
    notional_usd: float = 1000.0
    liquidation_guard: bool = True
    maintenance_margin_rate: float = 0.005
    execution_delay_bars: int = 0  # 1 = act on the instrument's next bar (the runner sets it: next_bar_close)
    warmup_bars: int = 0  # bars of history requested per bar type at start (the live node sets it)
    warmup_timeout_seconds: float = 60.0  # start trading with what arrived when history takes longer
    feed_gap_backfill: bool = True  # request the bars a feed gap missed and play them before the held bar
    feed_gap_timeout_seconds: float = 10.0  # trade on when the backfill takes longer (entries then blocked)
    feed_gap_block_bars: int = 12  # entries refused for this many bars after a gap the backfill did not fill
    exit_retries: int = 5  # a rejected exit (reduce-only market) is sent again this many times
    exit_retry_seconds: float = 1.0
    cancel_retries: int = 3  # a rejected cancel of an order still open here is sent again this many times
    cancel_retry_seconds: float = 1.0
    slow_venue_seconds: float = 1.0  # a WARNING when an order's first answer takes longer than this
    exit_profile: str | dict[str, Any] | None = None  # a name in configs/exits/, a path, or a mapping
    risk_profile: str | dict[str, Any] | None = None  # a name in configs/risk/, a path, or a mapping


def liquidation_price(side: PositionSide, entry: float, leverage: float, mmr: float) -> float:
    if side == PositionSide.LONG:
        return entry * (1.0 - 1.0 / leverage + mmr)
    return entry * (1.0 + 1.0 / leverage - mmr)


class QTStrategy(Strategy):
    def __init__(self, config: QTStrategyConfig):
        super().__init__(config)
        self.bar_types = [BarType.from_str(b) for b in config.bar_types]
        self._bar_type_of = {bt.instrument_id: bt for bt in self.bar_types}
        self._liquidation_orders: dict[InstrumentId, Order] = {}
        self.margin_rejections = 0
        self.short_refusals = 0
        self.order_rate_refusals = 0
        self.order_budget = OrderRateBudget.nautilus_default()
        self.submit_ns = 0  # wall time spent inside Nautilus' submit_order, for latency figures
        self._entry_orders: dict[InstrumentId, Order] = {}
        self._deferred: dict[InstrumentId, list[Callable[[], None]]] = {}
        exit_profile = exit_profile_from(config.exit_profile)
        self.exit_brain = (
            ExitBrain(self, exit_profile, self._liquidation_price, self._guard_level)
            if exit_profile
            else None
        )
        risk_profile = risk_profile_from(config.risk_profile)
        self.risk = RiskControl(self, risk_profile) if risk_profile else None
        # The orders that will protect one entry: the Exit Brain's stop and take-profits, the liquidation guard.
        self._protection_orders = (1 + len(exit_profile.take_profits) if exit_profile else 0) + int(
            config.liquidation_guard
        )
        self.warming_up = False
        self._risk_engine = None
        self.entries_enabled = True  # an operator's executor_stop clears it: no new positions, exits go on
        self._warmup_waiting: set = set()  # request ids not answered yet
        self._warmup_history: list[Bar] = []
        self._warmup_live: list[Bar] = []  # live bars that arrived while the history was on its way
        self._warmup_last_seen: dict = {}  # instrument -> close of its last history bar, until a later bar
        self.guard = ExecutionGuard(self, config)
        # feed gaps: the newest close seen per bar type (live or history), the backfills on their way per bar
        # type (previous close, held bar's close, bars missing), bars left with entries refused per instrument
        self._last_bar_ns: dict[BarType, int] = {}
        self._gaps: dict[BarType, tuple[int, int, int]] = {}
        self._blocked: dict[InstrumentId, int] = {}
        self._step_ns: dict[BarType, int] = {}
        self.feed_gaps: list[tuple[str, int, int, int]] = []  # (bar type, previous close, bar close, missing)

    def bind_risk_engine(self, risk_engine) -> None:
        """The node's RiskEngine sets the order rate this strategy budgets for (strategies/order_budget.py), and
        its trading state gates entries."""
        self._risk_engine = risk_engine
        self.order_budget.rebind(risk_engine)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        if not self.bar_types:
            self.log.error("No bar_types configured: nothing to trade")
            self.stop()
            return
        for bar_type in self.bar_types:
            if self.cache.instrument(bar_type.instrument_id) is None:
                self.log.error(f"Unknown instrument {bar_type.instrument_id}: not in the cache")
                self.stop()
                return
            self.subscribe_bars(bar_type)
        # operator commands (the control API, actors/control_api.py): close a symbol, stop / resume entries
        self.subscribe_data(DataType(OperatorCommand), client_id=COMMANDS_CLIENT)
        if self.exit_brain is not None or self.risk is not None or self.config.execution_delay_bars:
            for bar_type in self.bar_types:  # runs before the subclass' on_bar for the same bar
                self.msgbus.subscribe(topic=f"data.bars.{bar_type}", handler=self._track_bar, priority=5)
        if self.risk is not None:
            self.risk.start([bt.instrument_id for bt in self.bar_types])
        self._take_over_positions()
        self.on_strategy_start()
        if self.config.warmup_bars > 0:
            self._request_warmup()

    def _take_over_positions(self) -> None:
        """Positions this strategy already holds at start: on a live node, those reconciliation rebuilt from
        the venue after a restart (owned by this strategy through its `external_order_claims`). The Exit Brain
        takes back their exits from its persisted records; the liquidation guard is placed again. The base's
        `net_side` sees them, so no strategy enters a second time. In a backtest there are none."""
        iids = [bt.instrument_id for bt in self.bar_types]
        if self.exit_brain is not None:
            self.exit_brain.restore(iids)
        for iid in iids:
            for position in self.cache.positions_open(instrument_id=iid, strategy_id=self.id):
                self.log.info(
                    f"Holding {position.side.name} {position.quantity} {iid} at {position.avg_px_open:g} "
                    f"at start ({position.id})"
                )
                self._protect(position)

    # ---- warm-up (live) ----------------------------------------------------------------------------
    def _request_warmup(self) -> None:
        self.warming_up = True
        self._warmup_last_seen = {None: 0}  # non-empty: live bars are held until the history is in
        now = self.clock.utc_now()
        # Every id is known before the first request: a backtest answers inside request_bars.
        requests = {UUID4(): bar_type for bar_type in self.bar_types}
        self._warmup_waiting = set(requests)
        for request_id, bar_type in requests.items():
            span = bar_type.spec.timedelta * self.config.warmup_bars
            self.request_bars(
                bar_type, start=now - span, callback=self._warmup_answered, request_id=request_id
            )
        self._arm_history_timeout(self.config.warmup_timeout_seconds)
        self.log.info(f"Warm-up: requested {self.config.warmup_bars} bars of {len(self.bar_types)} bar types")

    def _arm_history_timeout(self, seconds: float) -> None:
        if "qt-warmup-timeout" in self.clock.timer_names:
            self.clock.cancel_timer("qt-warmup-timeout")
        self._history_timeout = seconds
        self.clock.set_time_alert(
            "qt-warmup-timeout", self.clock.utc_now() + pd.Timedelta(seconds=seconds), self._warmup_timed_out
        )

    def on_historical_data(self, data: Data) -> None:
        if self.warming_up and isinstance(data, Bar):
            self._warmup_history.append(data)
            self._last_bar_ns[data.bar_type] = max(self._last_bar_ns.get(data.bar_type, 0), data.ts_event)

    def handle_bar(self, bar: Bar, historical: bool = False) -> None:
        if not historical:
            if self._warmup_last_seen:
                if self.warming_up:
                    self._warmup_live.append(bar)  # played once the history is in, so features stay in order
                    return
                if self._already_seen(bar):
                    return
            if self._feed_gap(bar):
                return  # held: played after the missing bars
        super().handle_bar(bar, historical)

    # ---- feed gaps -----------------------------------------------------------------------------------
    def _feed_gap(self, bar: Bar) -> bool:
        """Detect missing bars before `bar`; True when `bar` is held while they are requested."""
        iid = bar.bar_type.instrument_id
        last = self._last_bar_ns.get(bar.bar_type)
        if last is not None and bar.ts_event <= last:
            return False
        self._last_bar_ns[bar.bar_type] = bar.ts_event
        if last is None:
            return False
        step = self._step_ns.get(bar.bar_type)
        if step is None:
            step = self._step_ns[bar.bar_type] = int(bar.bar_type.spec.timedelta.total_seconds() * 1e9)
        missing = (bar.ts_event - last + step // 2) // step - 1  # live stamps are float-rounded: nearest step
        if missing < 1:
            if self._blocked.get(iid):
                self._blocked[iid] -= 1
            return False
        since, until = pd.Timestamp(last, tz="UTC"), pd.Timestamp(bar.ts_event, tz="UTC")
        backfill = self.config.feed_gap_backfill
        reason = (
            f"{missing} missing {bar.bar_type.spec} bar(s) of {iid} between the closes {since} and {until}"
        )
        self.log.warning(f"Feed gap: {reason}" + ("; requesting them" if backfill else ""))
        self.feed_gaps.append((str(bar.bar_type), last, bar.ts_event, int(missing)))
        self._publish_feed_event("feed_gap", reason, iid, float(missing))
        now = self.clock.timestamp_ns()
        if backfill and last + 1 > now:
            # the bars are stamped ahead of this node's clock (its host clock lags the venue's): Nautilus
            # refuses a request that starts in the future, and raising here would stop the data engine
            self.log.warning(
                f"Feed gap of {iid}: the missing bars are ahead of this node's clock; not requested"
            )
            backfill = False
        if not backfill:
            self._block_entries(iid, f"{missing} bar(s) missing")
            return False
        self._gaps[bar.bar_type] = (last, bar.ts_event, int(missing))
        self.warming_up = True  # the warm-up path holds live bars and refuses entries until the bars are in
        self._warmup_last_seen = self._warmup_last_seen or {None: 0}
        self._warmup_live.append(bar)
        request_id = UUID4()
        self._warmup_waiting.add(request_id)
        self._arm_history_timeout(self.config.feed_gap_timeout_seconds)
        self.request_bars(
            bar.bar_type,
            start=pd.Timestamp(last + 1, tz="UTC"),
            # the close of the last missing bar plus half a millisecond: Binance's endTime bounds open times,
            # and the held bar opens 1 ms after that close
            end=pd.Timestamp(min(bar.ts_event - step + 500_000, now), tz="UTC"),
            callback=self._warmup_answered,
            request_id=request_id,
        )
        return True

    def _close_gaps(self, history: list[Bar]) -> None:
        """After a backfill: each gap is either filled (INFO) or its instrument's entries are blocked."""
        gaps, self._gaps = self._gaps, {}
        for bar_type, (after, before, missing) in gaps.items():
            iid = bar_type.instrument_id
            got = sum(1 for b in history if b.bar_type == bar_type and after < b.ts_event < before)
            if got >= missing:
                self.log.info(f"Feed gap of {iid} backfilled: {got} bar(s) played before the held bar")
            else:
                self._block_entries(iid, f"the backfill brought {got} of {missing} missing bar(s)")

    def _block_entries(self, iid: InstrumentId, why: str) -> None:
        bars = self.config.feed_gap_block_bars
        if bars <= 0:
            return
        self._blocked[iid] = bars
        reason = f"entries on {iid} refused for the next {bars} bars: {why} (a hole in its feature window)"
        self.log.warning(f"Feed gap: {reason}")
        self._publish_feed_event("feed_gap_block", reason, iid, float(bars))

    def _publish_feed_event(self, code: str, reason: str, iid: InstrumentId, value: float) -> None:
        now = self.clock.timestamp_ns()
        event = RiskEvent(
            source="feed_guard", action="alert", code=code, reason=reason, symbol=str(iid), value=value,
            ts_event=now, ts_init=now,
        )  # fmt: skip
        self.publish_data(DataType(RiskEvent), event)

    def _already_seen(self, bar: Bar) -> bool:
        """The history already held this bar. Live stamps are float-rounded (close time + a few ns), so
        within 1 ms counts as the same close; past the last history bar the check is dropped."""
        iid = bar.bar_type.instrument_id
        last = self._warmup_last_seen.get(iid)
        if last is None:
            return False
        if bar.ts_event <= last + 1_000_000:
            return True
        del self._warmup_last_seen[iid]
        return False

    def _warmup_answered(self, request_id) -> None:
        self._warmup_waiting.discard(request_id)
        if not self._warmup_waiting and self.warming_up:
            self._finish_warmup()

    def _warmup_timed_out(self, _event=None) -> None:
        if self.warming_up:
            what = "Feed gap backfill" if self._gaps else "Warm-up"
            self.log.warning(
                f"{what}: {len(self._warmup_waiting)} history request(s) unanswered after "
                f"{self._history_timeout:g} s; going on with {len(self._warmup_history)} bars"
            )
            self._warmup_waiting = set()
            self._finish_warmup()

    def _finish_warmup(self) -> None:
        history = sorted(self._warmup_history, key=lambda b: (b.ts_event, self._bar_order(b)))
        self._warmup_last_seen = {}
        for bar in history:
            self._warmup_last_seen[bar.bar_type.instrument_id] = bar.ts_event
        self.msgbus.publish(
            WARMUP_TOPIC, history
        )  # the history reaches no bar subscription; recorders see it here
        backfill = bool(self._gaps)
        try:
            self.on_warmup(history)
        finally:
            self.warming_up = False
            self._warmup_history = []
            if "qt-warmup-timeout" in self.clock.timer_names:
                self.clock.cancel_timer("qt-warmup-timeout")
            if backfill:
                self._close_gaps(history)
        self.log.info(
            f"{'Backfill' if backfill else 'Warm-up'} done: {len(history)} bars of history, "
            f"{len(self._warmup_live)} live bars held"
        )
        live, self._warmup_live = self._warmup_live, []
        for bar in sorted(live, key=lambda b: (b.ts_event, self._bar_order(b))):
            self.handle_bar(bar)

    def _bar_order(self, bar: Bar) -> int:
        if not hasattr(self, "_bar_slot"):
            self._bar_slot = {bt.instrument_id: i for i, bt in enumerate(self.bar_types)}
        return self._bar_slot.get(bar.bar_type.instrument_id, len(self._bar_slot))

    def on_warmup(self, bars: list[Bar]) -> None:
        """Hook: the requested history, oldest close first (symbols in universe order within a close).

        Registered indicators have already seen these bars. The default feeds the risk gates' return windows;
        strategies with their own per-bar state (features, windows) override it and call super()."""
        if self.risk is not None:
            for bar in bars:
                self.risk.on_bar(bar)

    def _track_bar(self, bar: Bar) -> None:
        if self._deferred:
            for action in self._deferred.pop(bar.bar_type.instrument_id, ()):
                action()
        if self.exit_brain is not None:
            self.exit_brain.on_bar(bar)
        if self.risk is not None:
            self.risk.on_bar(bar)

    def on_data(self, data: Data) -> None:
        if isinstance(data, OperatorCommand):
            if data.action == "close":
                self._close_on_command(data)
            elif data.action in ("executor_stop", "executor_start"):
                self._entries_on_command(data)
        elif self.risk is not None:
            self.risk.on_data(data)

    def _close_on_command(self, command: OperatorCommand) -> None:
        """An operator's `close` of one symbol (or `*` for all): a market exit with reason manual."""
        for bar_type in self.bar_types:
            iid = bar_type.instrument_id
            names = ("*", symbol_of(iid), iid.symbol.value, str(iid))
            if command.symbol in names and self.net_side(iid) != PositionSide.FLAT:
                self.exit(iid, "MANUAL")

    def _entries_on_command(self, command: OperatorCommand) -> None:
        """executor_stop: open no new position (open ones keep their exits, the Exit Brain keeps managing them);
        executor_start: open positions again."""
        enabled = command.action == "executor_start"
        if enabled == self.entries_enabled:
            return
        self.entries_enabled = enabled
        who = f" by {command.operator}" if command.operator else ""
        why = f": {command.reason}" if command.reason else ""
        what = "resumed" if enabled else "stopped (open positions keep their exits)"
        self.log.warning(f"Entries {what}{who}{why}")

    def on_strategy_start(self) -> None:
        """Hook for subclasses (indicators, state)."""

    def on_bar(self, bar: Bar) -> None:  # pragma: no cover - subclasses override
        pass

    # ---- trading helpers ---------------------------------------------------------------------------
    def leverage(self, instrument_id: InstrumentId) -> float:
        """The account's leverage for the instrument: its own setting, else the account default."""
        account = self.portfolio.account(instrument_id.venue)
        if account is None or not account.is_margin_account:
            return 1.0  # a cash account (spot) trades its own balance
        lev = account.leverage(instrument_id) or account.default_leverage
        return float(lev) if lev else 1.0

    def free_margin(self, instrument_id: InstrumentId) -> float:
        account = self.portfolio.account(instrument_id.venue)
        free = account.balance_free(USDT) if account is not None else None
        return free.as_double() if free is not None else 0.0

    def enter(
        self,
        instrument_id: InstrumentId,
        side: OrderSide,
        price: float,
        notional: float | None = None,
        confidence: float = 1.0,
        atr: float | None = None,
        trace: str | None = None,
        detail: str = "",
        rl_adjustment: float | None = None,
    ) -> bool:
        """Market entry if the risk gates (when configured) pass it and the margin for it is free.

        Size: with a risk profile, the SPEC section 6 formula; else `notional` USDT (default from config).
        `atr` (in price) is required when the Exit Brain is on: R is set from it. `trace`: the decision's trace
        id (a Signal's, `Signal.trace_id`), else derived from the instrument's last bar close; `detail` is
        added to the decision's log line; `rl_adjustment`: an active RL sizer's multiplier (strategies/rl_sizing.py).
        """
        if self.warming_up:
            return False  # history is being replayed: its prices are gone
        if not self.entries_enabled:
            return False  # an operator stopped the executor's entries
        if self.risk is None and self._halted():
            return False  # (the risk gates refuse while the emergency stop is tripped, with a veto event)
        if self._blocked.get(instrument_id):
            return False  # a feed gap left a hole in this instrument's feature window
        pending = self._entry_orders.get(instrument_id)
        if pending is not None and not pending.is_closed:
            return False  # the last entry has not filled yet: a second one would double the position
        if side == OrderSide.SELL and not self.can_short(instrument_id):
            return False
        direction = "LONG" if side == OrderSide.BUY else "SHORT"
        trace = trace or self.decision_trace(instrument_id)
        if is_logging_initialized():
            self.log.info(
                f"trace_id={trace} signal {direction} {instrument_id} conf={confidence:.3f} price={price:g}"
                + (f" {detail}" if detail else "")
            )
        if self.exit_brain is not None and (atr is None or not atr > 0):
            self.log.error(
                f"trace_id={trace} Entry refused for {instrument_id}: the Exit Brain needs the ATR at entry"
            )
            return False
        if self.risk is not None:
            atr_ratio = atr / price if atr is not None else 0.0
            sizing = self.risk.approve(
                instrument_id, direction, confidence, price, atr_ratio, trace, rl_adjustment
            )
            if sizing is None:
                return False
            notional = sizing.notional
        notional = self.config.notional_usd if notional is None else notional
        instrument = self.cache.instrument(instrument_id)
        qty = instrument.make_qty(notional / price)
        if qty.as_double() <= 0:
            return False
        if not self.margin_available(instrument_id, qty.as_double() * price, trace):
            return False
        if not self.order_rate_allows(1 + self._protection_orders, new_positions=1):
            self.order_rate_refusals += 1
            self.log.warning(
                f"trace_id={trace} Entry refused for {instrument_id}: the order-rate limit has no room to "
                "protect it"
            )
            return False
        if self.exit_brain is not None:
            self.exit_brain.prepare(instrument_id, atr)
        order = self.order_factory.market(instrument_id, side, qty, tags=with_trace([ENTRY_TAG], trace))
        self._entry_orders[instrument_id] = order
        self.decide(instrument_id, lambda: self.submit_order(order))
        if self.risk is not None:
            sign = 1.0 if side == OrderSide.BUY else -1.0
            self.risk.entry_sent(instrument_id, sign * qty.as_double() * price)
        return True

    def _halted(self) -> bool:
        """The emergency stop's halt (REDUCING) means no new positions; Nautilus' REDUCING alone would still let
        an entry from flat, or the entry of a flip, through."""
        return self._risk_engine is not None and self._risk_engine.trading_state != TradingState.ACTIVE

    def can_short(self, instrument_id: InstrumentId) -> bool:
        """A cash account (spot) holds no borrowed coins to sell: a short entry there is refused and counted."""
        account = self.portfolio.account(instrument_id.venue)
        if account is None or account.is_margin_account:
            return True
        self.short_refusals += 1
        if self.short_refusals == 1:
            self.log.warning(f"Short entries refused: {instrument_id.venue} is a cash account (spot)")
        return False

    def margin_available(self, instrument_id: InstrumentId, notional: float, trace: str = "") -> bool:
        """The initial margin of `notional` fits the free balance; a refusal is counted and logged."""
        required = notional / self.leverage(instrument_id)
        if required > self.free_margin(instrument_id):
            self.margin_rejections += 1
            self.log.warning(
                f"trace_id={trace} Entry refused for {instrument_id}: margin {required:.2f} exceeds free balance"
            )
            return False
        return True

    # ---- trace ids -----------------------------------------------------------------------------------
    def decision_trace(self, instrument_id: InstrumentId) -> str:
        """The trace id of a decision taken now on the instrument: from its last bar close (the bar being
        handled), so a backtest and the live session it replays give the same id."""
        bar_type = self._bar_type_of.get(instrument_id)
        close = self._last_bar_ns.get(bar_type) if bar_type is not None else None
        return trace_id(self.id, instrument_id, close if close is not None else self.clock.timestamp_ns())

    def position_trace(self, position: Position | None) -> str:
        """The trace id of the decision that opened the position: its opening order's tag, else (after a restart,
        reconciled orders carry no tags) the Exit Brain's persisted record; "" when neither knows it."""
        if position is None:
            return ""
        return self._opening_trace(position.opening_order_id, position.instrument_id)

    def _opening_trace(self, opening_order_id, instrument_id: InstrumentId) -> str:
        opening = self.cache.order(opening_order_id)
        trace = trace_of(opening.tags) if opening is not None else ""
        if not trace and self.exit_brain is not None:
            trace = self.exit_brain.trace_of(instrument_id)
        return trace

    def order_rate_allows(self, orders: int, new_positions: int = 0) -> bool:
        """`orders` more fit in the rate window with room left for what the positions may still need:
        RESERVE_PER_POSITION each, and for an entry not filled yet, its own order and its protection too."""
        pending = sum(1 for order in self._entry_orders.values() if not order.is_closed)
        positions = self.cache.positions_open_count(strategy_id=self.id) + new_positions
        reserved = (
            RESERVE_PER_POSITION * positions + (1 + self._protection_orders + RESERVE_PER_POSITION) * pending
        )
        return self.order_budget.free(self.clock.timestamp_ns()) >= orders + reserved

    def submit_order(self, order: Order, position_id=None, client_id=None, params=None) -> None:
        self.order_budget.record(self.clock.timestamp_ns())
        self.guard.sent(order)
        # A backtest that bypasses logging skips the formatting too: a few microseconds an order.
        trace = trace_of(order.tags) if is_logging_initialized() else ""
        if trace:
            self.log.info(f"trace_id={trace} submit {role_of(order.tags)} {_describe(order)}")
        # What was decided, for a session recorder (live/record.py); nobody listens in a plain backtest.
        self.msgbus.publish(INTENT_TOPIC, (self.id, order))
        started = time.perf_counter_ns()
        super().submit_order(order, position_id, client_id, params)
        self.submit_ns += time.perf_counter_ns() - started

    def decide(self, instrument_id: InstrumentId, action: Callable[[], None]) -> None:
        """Carry out a market decision now, or on the instrument's next bar with `execution_delay_bars`.

        A market order reaches the simulated venue at once and fills at the last price, the close of the bar
        just seen (plus slippage). `fill_timing: next_bar_close` makes every decision wait for the
        instrument's next bar instead, so it fills at that bar's close: a full bar later, for every symbol
        alike. (Nautilus settles orders after each data point, so a venue latency would fill an order for a
        symbol processed later in the same timestamp at its old price: timing could not be held that way.)
        """
        if self.config.execution_delay_bars:
            self._deferred.setdefault(instrument_id, []).append(action)
        else:
            action()

    def exit(self, instrument_id: InstrumentId, tag: str = "STRATEGY") -> None:
        """Close the position at market; `tag` is the exit reason the Exit Brain records."""
        self.decide(instrument_id, lambda: self._exit_now(instrument_id, tag))

    def _exit_now(self, instrument_id: InstrumentId, tag: str) -> None:
        self._cancel_liquidation_order(instrument_id)
        if self.exit_brain is not None:
            self.exit_brain.close(instrument_id, tag)
            return
        for position in self.cache.positions_open(instrument_id=instrument_id, strategy_id=self.id):
            self.reduce_at_market(position, position.quantity, tag)

    def reduce_at_market(self, position: Position, quantity, tag: str) -> Order:
        """A reduce-only market order for `quantity` of the position, tagged with its exit reason and trace."""
        order = self.order_factory.market(
            instrument_id=position.instrument_id,
            order_side=OrderSide.SELL if position.side == PositionSide.LONG else OrderSide.BUY,
            quantity=quantity,
            reduce_only=True,
            tags=with_trace([tag], self.position_trace(position)),
        )
        self.submit_order(order)
        return order

    def close_position(
        self,
        position: Position,
        client_id=None,
        tags=None,
        time_in_force=TimeInForce.GTC,
        reduce_only=True,
        quote_quantity=False,
        params=None,
    ) -> None:
        """Nautilus' close (`market_exit`, the flatten on stop, goes through it): with the position's trace."""
        tags = with_trace(list(tags or []), self.position_trace(position))
        super().close_position(
            position, client_id, tags or None, time_in_force, reduce_only, quote_quantity, params
        )

    def go_to(self, instrument_id: InstrumentId, want: PositionSide, price: float) -> None:
        """Hold `want` (LONG, SHORT or FLAT) in the instrument: close the other side first, then enter."""
        have = self.net_side(instrument_id)
        if want == have:
            return
        if have != PositionSide.FLAT:
            self.exit(instrument_id)
        if want != PositionSide.FLAT:
            self.enter(instrument_id, OrderSide.BUY if want == PositionSide.LONG else OrderSide.SELL, price)

    def net_side(self, instrument_id: InstrumentId) -> PositionSide:
        if self.portfolio.is_net_long(instrument_id):
            return PositionSide.LONG
        if self.portfolio.is_net_short(instrument_id):
            return PositionSide.SHORT
        return PositionSide.FLAT

    # ---- position events: Exit Brain first, then the liquidation guard ------------------------------
    def on_order_filled(self, event: OrderFilled) -> None:
        order = self.cache.order(event.client_order_id)
        self.guard.answered(order, "filled")
        trace = trace_of(order.tags) if order is not None and is_logging_initialized() else ""
        if trace:
            self.log.info(
                f"trace_id={trace} fill {role_of(order.tags)} {event.order_side.name} {event.last_qty} "
                f"{event.instrument_id} @ {event.last_px} {event.client_order_id} position={event.position_id}"
            )
        if self.exit_brain is not None:
            self.exit_brain.on_order_filled(event)

    def on_order_accepted(self, event: OrderAccepted) -> None:
        order = self.cache.order(event.client_order_id)
        self.guard.answered(order, "accepted")
        if self.exit_brain is None:
            return
        self.exit_brain.on_order_accepted(order)
        guard = self._liquidation_orders.get(event.instrument_id)
        if (
            self.exit_brain.is_stop(order)
            and guard is not None
            and self.exit_brain.stop_comes_first(event.instrument_id, guard.trigger_price.as_double())
        ):
            # a trailing or break-even stop now rests in front of the guard: the venue holds it, the guard goes
            self._cancel_liquidation_order(event.instrument_id)

    def on_order_denied(self, event: OrderDenied) -> None:
        self._entry_failed(event)
        if self.exit_brain is not None:
            self.exit_brain.on_order_denied(self.cache.order(event.client_order_id))

    def on_order_rejected(self, event: OrderRejected) -> None:
        self._entry_failed(event)
        order = self.cache.order(event.client_order_id)
        self.guard.answered(order, "rejected")
        if self.exit_brain is not None:
            managed = self.exit_brain.positions.get(event.instrument_id)
            if managed is not None and order is managed.stop_order and not managed.closing:
                self.log.error(
                    f"Stop {event.client_order_id} of {event.instrument_id} rejected by the venue ({event.reason}); "
                    "the Exit Brain closes the position at market rather than leave it without a stop"
                )
            self.exit_brain.on_order_rejected(order)  # a rejected stop: the position is closed at market
        self.guard.exit_rejected(order, event.reason)  # a rejected close: sent again

    def on_order_cancel_rejected(self, event: OrderCancelRejected) -> None:
        self.guard.cancel_rejected(self.cache.order(event.client_order_id), event.reason)

    def on_order_canceled(self, event: OrderCanceled) -> None:
        self._entry_failed(event)
        if self.exit_brain is not None:
            self.exit_brain.on_order_canceled(self.cache.order(event.client_order_id))

    def _entry_failed(self, event) -> None:
        order = self.cache.order(event.client_order_id)
        if self.risk is not None and order is not None and ENTRY_TAG in (order.tags or []):
            self.risk.entry_done(event.instrument_id)

    def on_position_opened(self, event: PositionOpened) -> None:
        if self.risk is not None:
            self.risk.entry_done(event.instrument_id)
        position = self.cache.position(event.position_id)
        if self.exit_brain is not None and position is not None:
            self.exit_brain.on_position_opened(position)
        self._protect(position)

    def on_position_changed(self, event: PositionChanged) -> None:
        self.guard.position_changed(event.instrument_id)
        position = self.cache.position(event.position_id)
        if self.exit_brain is not None and position is not None:
            self.exit_brain.on_position_changed(position)
        self._protect(position)

    def on_position_closed(self, event: PositionClosed) -> None:
        if is_logging_initialized():
            self._log_closed(event)
        if self.exit_brain is not None:
            self.exit_brain.on_position_closed(event.instrument_id)
        self._cancel_liquidation_order(event.instrument_id)

    def _log_closed(self, event: PositionClosed) -> None:
        # asked before the Exit Brain forgets the position
        trace = self._opening_trace(event.opening_order_id, event.instrument_id)
        if trace:
            self.log.info(
                f"trace_id={trace} closed {event.instrument_id} (entry {event.entry.name}) {event.position_id} "
                f"realized_pnl={event.realized_pnl}"
            )

    def _liquidation_price(self, position: Position) -> float:
        lev = self.leverage(position.instrument_id)
        return liquidation_price(
            position.side, position.avg_px_open, lev, self.config.maintenance_margin_rate
        )

    def _guard_level(self, position: Position) -> float:
        """Where the liquidation guard of this position rests; 0.0 when it has none."""
        if not self.config.liquidation_guard:
            return 0.0
        if position.side == PositionSide.LONG and self.leverage(position.instrument_id) <= 1:
            # An unlevered long's liquidation price is mmr x entry: at a 99.5% fall, with 0.5% of the notional
            # left to lose below it, the guard would save nothing, yet every entry would rest and cancel it.
            return 0.0
        return self._liquidation_price(position)

    def _protect(self, position: Position | None) -> None:
        if position is None or position.is_closed:
            return
        iid = position.instrument_id
        self._cancel_liquidation_order(iid)
        price = self._guard_level(position)
        if price <= 0:
            return
        if self.exit_brain is not None and self.exit_brain.stop_comes_first(iid, price):
            return  # the Exit Brain's stop is reached first on every price path: a guard would never fill
        instrument = self.cache.instrument(iid)
        order = self.order_factory.stop_market(
            instrument_id=iid,
            order_side=OrderSide.SELL if position.side == PositionSide.LONG else OrderSide.BUY,
            quantity=position.quantity,
            trigger_price=instrument.make_price(price),
            time_in_force=TimeInForce.GTC,
            reduce_only=True,
            tags=with_trace([LIQUIDATION_TAG], self.position_trace(position)),
        )
        self._liquidation_orders[iid] = order
        self.submit_order(order)

    def _cancel_liquidation_order(self, instrument_id: InstrumentId) -> None:
        order = self._liquidation_orders.pop(instrument_id, None)
        if order is not None and not order.is_closed:
            self.cancel_order(order)


def _describe(order: Order) -> str:
    """An order for a log line: type, side, quantity, instrument, its price or trigger, client order id."""
    price = f" @ {order.price}" if order.has_price else ""
    trigger = f" trigger {order.trigger_price}" if order.has_trigger_price else ""
    reduce = " reduce-only" if order.is_reduce_only else ""
    return (
        f"{order.type_string()} {order.side_string()} {order.quantity} {order.instrument_id}{price}{trigger}"
        f"{reduce} {order.client_order_id}"
    )

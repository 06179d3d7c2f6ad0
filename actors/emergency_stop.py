"""The Emergency Stop System (ESS, SPEC section 6): five evaluators that trip one latched stop.

Evaluators, each tripping with its own `code`:
- drawdown, checked on a timer every `emergency.check_interval_seconds` (default 300 s, on the UTC grid of
  that interval, so with 5m bars each check lands on a bar close; see below): mark-to-market equity (balance +
  unrealised PnL on the venue) against the equity at the first check of the UTC day (`daily_drawdown`), of
  the ISO week (`weekly_drawdown`) and the running peak (`emergency_brake`). Trips when a drawdown EXCEEDS
  its limit;
- system health: a HealthEvent with status "critical" (`system_health`); "degraded" does not trip;
- execution errors: MORE than `max_consecutive_errors` OrderRejected / OrderDenied / OrderModifyRejected /
  OrderCancelRejected in a row, on the `events.order.*` topics of every strategy; an OrderAccepted or
  OrderFilled ends the run (`execution_errors`). A cancel rejected for an order that is already closed is
  neither: the venue filled or cancelled it first (it cancels the reduce-only orders of a position that
  closes), so what the cancel asked for holds. Binance answers such a cancel with -2011 "Unknown order";
- data feed: the newest bar of any watched bar type (`bar_types`, injected by the runner) is older than
  `feed_stale_seconds` + `feed_grace_seconds`, or no bar came for that long since the start or the last
  reset (`feed_stale`). A time alert just past that limit is moved on by every new bar, so it fires the
  moment the feed is stale, not at the next check;
- manual: an OperatorCommand with action "trip" (`manual`).

A trip is latched: a new day does not clear it. Only an OperatorCommand "reset" (or `reset()`) does, and a
reset re-anchors the drawdown references at the equity of that moment (the operator has acknowledged the
losses so far; otherwise the stop would re-trip within one check), restarts the error count and the
feed's clock.

On a trip the actor writes the latched state to the cache, publishes RiskEvent(action="trip") and then one
RiskEvent per configured action, in order. "halt" also sets the bound risk engine's trading state to
REDUCING (Nautilus then denies orders that would grow a position); strategies refuse every new entry
themselves by calling `emergency_state(cache)` (strategies/risk_control.py). Actors cannot send orders, so
"close_losing" and "reduce_exposure" (value = the fraction) are carried out by the strategies that receive
the events. "alert" also logs an error. A reset writes the state back to not tripped, sets the trading
state to ACTIVE and publishes RiskEvent(action="reset").

Why the checks sit on the bar-close grid: a Nautilus backtest settles the venue at every timer event, so a
check between bars is a moment at which orders can fill at the last close. Checks on the bar grid fire after
the bars of that time, where the strategies act anyway. Live, a 300 s drawdown check is at most one interval
late; the feed watch does not wait for it.

The risk engine is not reachable from an Actor, so whoever builds the system binds it:
`ess.bind_risk_engine(kernel.risk_engine)` (backtests/runner.py does it for every actor that has the
method; a live node does the same with `node.kernel.risk_engine`). Binding after a trip applies the halt.

Persistence. The state lives under the Cache GENERAL key `ESS_STATE_KEY` as JSON bytes. `Cache.add` writes
general keys through to the cache database when one is configured (`CacheConfig(database=DatabaseConfig(
type="redis", ...))`: Redis key `trader-<trader id>:general:qt.emergency_stop`), and the kernel loads all
general keys back while it is built (`ExecutionEngine.load_cache` -> `Cache.cache_general`, which runs when
`exec_engine.load_cache` is True, the default, and the cache is not flushed on start). This works the same
for a BacktestEngine and a TradingNode, and strategies read the very same key, so a restarted node with the
same trader id and database starts halted until a reset. On start the actor restores the latched state from
the key (re-applying the halt) and publishes nothing. Actor `on_save`/`on_load` would add nothing: they need
the same cache database, and the trader loads them only for actors built from the node config. The drawdown
references (day, week, peak) are kept under `ESS_ANCHORS_KEY` the same way, so a restart in the middle of a
day does not forgive that day's losses.
"""

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.enums import TradingState
from nautilus_trader.model.events import (
    OrderAccepted,
    OrderCancelRejected,
    OrderDenied,
    OrderFilled,
    OrderModifyRejected,
    OrderRejected,
)
from nautilus_trader.model.identifiers import ClientId, Venue

from actors.equity_recorder import account_equity
from actors.risk_gates import Veto
from actors.risk_profile import RiskProfile, risk_profile_from
from quantum_trader.events import HealthEvent, OperatorCommand, RiskEvent

ESS_STATE_KEY = "qt.emergency_stop"  # Cache general key: JSON bytes of EmergencyState
ESS_ANCHORS_KEY = "qt.emergency_stop.anchors"  # Cache general key: JSON bytes of the drawdown references
ORDER_EVENTS_TOPIC = "events.order.*"
SOURCE = "emergency_stop"
CHECK_TIMER = "qt_emergency_stop_check"
FEED_ALERT = "qt_emergency_stop_feed"
FEED_ALERT_AGAIN = "qt_emergency_stop_feed_again"  # re-armed from inside FEED_ALERT's own callback
TRIP_CODES = (
    "daily_drawdown",
    "weekly_drawdown",
    "emergency_brake",
    "system_health",
    "execution_errors",
    "feed_stale",
    "manual",
)
RISK_EVENT_TYPE = DataType(RiskEvent)
NS = 1_000_000_000
_ERRORS = (OrderRejected, OrderDenied, OrderModifyRejected, OrderCancelRejected)
_SUCCESSES = (OrderAccepted, OrderFilled)


class EmergencyStopConfig(ActorConfig, frozen=True):
    """`risk_profile`: a name in configs/risk/, a path, or an inline mapping; None = RiskProfile() defaults.

    `feed_grace_seconds` is added to `feed_stale_seconds`: live bars arrive a little after their close, with
    jitter, so with 5m bars and a 300 s limit the age at a check can reach 300.x s while nothing is wrong.
    """

    risk_profile: str | dict[str, Any] | None = None
    bar_types: tuple[str, ...] = ()
    venue: str = "BINANCE"
    client_id: str = "SIGNALS"
    feed_grace_seconds: float = 10.0


@dataclass(frozen=True)
class EmergencyState:
    tripped: bool = False
    code: str = ""
    reason: str = ""
    ts: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


NOT_TRIPPED = EmergencyState()


def emergency_state(cache) -> EmergencyState:
    """The latched state strategies check before every entry; not tripped when the key is absent.

    Unreadable bytes under the key read as tripped (fail safe): entries stay blocked until a reset writes
    a valid state.
    """
    raw = cache.get(ESS_STATE_KEY)
    if raw is None:
        return NOT_TRIPPED
    try:
        d = json.loads(raw)
        return EmergencyState(bool(d["tripped"]), str(d["code"]), str(d["reason"]), int(d["ts"]))
    except (ValueError, KeyError, TypeError) as err:
        return EmergencyState(True, "corrupt_state", f"unreadable emergency stop state: {err}", 0)


@dataclass
class _Anchors:
    """Equity references of the drawdown evaluator."""

    day: str
    day_start: float
    week: str
    week_start: float
    peak: float


def _day_and_week(ts_ns: int) -> tuple[str, str]:
    dt = datetime.fromtimestamp(ts_ns / NS, UTC)
    iso = dt.isocalendar()
    return dt.strftime("%Y-%m-%d"), f"{iso.year}-W{iso.week:02d}"


class EmergencyStop(Actor):
    def __init__(self, config: EmergencyStopConfig | None = None):
        config = config or EmergencyStopConfig()
        super().__init__(config)
        self.profile = risk_profile_from(config.risk_profile, "emergency_stop.risk_profile") or RiskProfile()
        self.settings = self.profile.emergency
        self.venue = Venue(config.venue)
        self.client_id = ClientId(config.client_id)
        self.bar_types = [BarType.from_str(b) for b in config.bar_types]
        self.stale_after_ns = int((self.settings.feed_stale_seconds + config.feed_grace_seconds) * NS)
        self.trips: list[str] = []
        self._risk_engine = None
        self._init_state()

    def _init_state(self) -> None:
        self._state = NOT_TRIPPED
        self._anchors: _Anchors | None = None
        self._errors = 0
        self._last_bar_ns = 0
        self._feed_since_ns = 0

    # ---- public API ----------------------------------------------------------------------------------
    @property
    def tripped(self) -> bool:
        return self._state.tripped

    @property
    def state(self) -> EmergencyState:
        return self._state

    def bind_risk_engine(self, risk_engine) -> None:
        """The engine whose trading state "halt" sets to REDUCING (and a reset back to ACTIVE)."""
        self._risk_engine = risk_engine
        if self._state.tripped and "halt" in self.settings.actions:
            self._set_trading_state(TradingState.REDUCING)

    def trip(self, code: str, reason: str, value: float = math.nan, limit: float = math.nan) -> None:
        if self._state.tripped:
            self.log.debug(f"Emergency stop already tripped ({self._state.code}); ignored {code}: {reason}")
            return
        now = self.clock.timestamp_ns()
        self._state = EmergencyState(True, code, reason, now)
        self.cache.add(ESS_STATE_KEY, self._state.to_bytes())
        self.trips.append(code)
        self.log.warning(f"EMERGENCY STOP tripped [{code}]: {reason}")
        self._publish("trip", code, reason, value, limit)
        for action in self.settings.actions:
            if action == "halt":
                halted = self._set_trading_state(TradingState.REDUCING)
                how = "trading state REDUCING" if halted else "no risk engine bound"
                self._publish("halt", code, f"new entries stopped ({how})")
            elif action == "close_losing":
                self._publish("close_losing", code, "close every losing position")
            elif action == "reduce_exposure":
                fraction = self.settings.reduce_fraction
                self._publish("reduce_exposure", code, f"reduce every position by {fraction:.0%}", fraction)
            elif action == "alert":
                self.log.error(f"ALERT: emergency stop tripped [{code}]: {reason}")
                self._publish("alert", code, reason, value, limit)

    def reset(self, reason: str, operator: str = "") -> None:
        """Clears a trip (and nothing else does). Drawdown references restart at the current equity."""
        previous = self._state
        now = self.clock.timestamp_ns()
        who = f" by {operator}" if operator else ""
        text = f"reset{who}: {reason}" if reason else f"reset{who}"
        self._state = EmergencyState(False, "", text, now)
        self.cache.add(ESS_STATE_KEY, self._state.to_bytes())
        self._errors = 0
        self._feed_since_ns = now
        self._arm_feed_watch(now)
        self._anchors = None
        self._check_drawdown(now)  # re-anchors at the current equity
        self._set_trading_state(TradingState.ACTIVE)
        self.log.warning(f"Emergency stop {text} (was {previous.code or 'not tripped'})")
        self._publish("reset", previous.code, text)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def on_start(self) -> None:
        now = self.clock.timestamp_ns()
        self._feed_since_ns = now
        restored = emergency_state(self.cache)
        if restored.tripped:
            self._state = restored
            self.log.warning(f"Emergency stop restored TRIPPED [{restored.code}]: {restored.reason}")
            if "halt" in self.settings.actions:
                self._set_trading_state(TradingState.REDUCING)
        self._anchors = self._load_anchors()
        for bar_type in self.bar_types:
            self.subscribe_bars(bar_type)
        self.subscribe_data(DataType(HealthEvent), client_id=self.client_id)
        self.subscribe_data(DataType(OperatorCommand), client_id=self.client_id)
        self.msgbus.subscribe(topic=ORDER_EVENTS_TOPIC, handler=self._on_order_event)
        interval_ns = int(self.settings.check_interval_seconds * NS)
        self.clock.set_timer(
            CHECK_TIMER,
            interval=pd.Timedelta(interval_ns, unit="ns"),
            start_time=pd.Timestamp(-(-now // interval_ns) * interval_ns, tz="UTC"),
            callback=self._on_check,
        )
        self._check_drawdown(now)
        self._arm_feed_watch(now)

    def on_stop(self) -> None:
        # Nautilus cancels the actor's timers and its own subscriptions; this one was made on the bus directly.
        if self.msgbus.is_subscribed(topic=ORDER_EVENTS_TOPIC, handler=self._on_order_event):
            self.msgbus.unsubscribe(topic=ORDER_EVENTS_TOPIC, handler=self._on_order_event)

    def on_reset(self) -> None:
        self.trips = []
        self._init_state()

    # ---- evaluators ----------------------------------------------------------------------------------
    def _on_check(self, _event=None) -> None:
        now = self.clock.timestamp_ns()
        self._check_drawdown(now)
        self._check_feed(now)

    def _check_drawdown(self, now: int) -> None:
        equity = account_equity(self.portfolio, self.venue)
        if equity is None:
            return
        day, week = _day_and_week(now)
        a = self._anchors
        if a is None:
            a = self._anchors = _Anchors(day, equity, week, equity, equity)
            changed = True
        else:
            changed = False
            if a.day != day:
                a.day, a.day_start, changed = day, equity, True
            if a.week != week:
                a.week, a.week_start, changed = week, equity, True
            if equity > a.peak:
                a.peak, changed = equity, True
        if changed:
            self.cache.add(ESS_ANCHORS_KEY, json.dumps(asdict(a)).encode())
        if self._state.tripped:
            return
        p = self.profile
        for code, anchor, limit, since in (
            ("daily_drawdown", a.day_start, p.daily_drawdown, "the start of the UTC day"),
            ("weekly_drawdown", a.week_start, p.weekly_drawdown, "the start of the ISO week"),
            ("emergency_brake", a.peak, p.emergency_brake, "the equity peak"),
        ):
            if anchor <= 0:
                continue
            drawdown = 1.0 - equity / anchor
            if drawdown > limit:
                reason = (
                    f"equity {equity:.2f} is {drawdown:.2%} below {anchor:.2f} at {since} (limit {limit:.0%})"
                )
                self.trip(code, reason, drawdown, limit)
                return

    def _load_anchors(self) -> _Anchors | None:
        raw = self.cache.get(ESS_ANCHORS_KEY)
        if raw is None:
            return None
        try:
            return _Anchors(**json.loads(raw))
        except (ValueError, TypeError) as err:
            self.log.warning(f"Ignoring unreadable drawdown references: {err}")
            return None

    def _check_feed(self, now: int) -> None:
        if not self.bar_types or self._state.tripped:
            return
        newest = max(self._last_bar_ns, self._feed_since_ns)
        if now - newest > self.stale_after_ns:
            age = (now - newest) / NS
            limit = self.settings.feed_stale_seconds
            what = "no bar since the last one" if self._last_bar_ns >= self._feed_since_ns else "no bar yet"
            self.trip(
                "feed_stale", f"data feed stale: {what} for {age:.0f} s (limit {limit:.0f} s)", age, limit
            )

    def on_bar(self, bar: Bar) -> None:
        if bar.ts_init > self._last_bar_ns:
            self._last_bar_ns = bar.ts_init
            self._arm_feed_watch(bar.ts_init)

    def _arm_feed_watch(self, newest_ns: int) -> None:
        """An alert just past the stale limit after the newest bar; each new bar moves it on, so it only fires
        when the feed really stopped (and never between bars of a healthy feed; see the module notes)."""
        if not self.bar_types:
            return
        for name in (FEED_ALERT, FEED_ALERT_AGAIN):
            if name in self.clock.timer_names:
                self.clock.cancel_timer(name)
        self.clock.set_time_alert_ns(FEED_ALERT, newest_ns + self.stale_after_ns + 1, self._on_feed_alert)

    def _on_feed_alert(self, event=None) -> None:
        """The live clock may run a time alert up to about a millisecond before its time (measured with 1.231's
        LiveClock): judged by the clock alone, the feed is then not yet stale, and with no bar to re-arm the
        alert the stall would wait for the next periodic check. The alert's own time is just past the limit."""
        now = self.clock.timestamp_ns()
        if event is not None:
            now = max(now, event.ts_event)
        self._check_feed(now)
        newest = max(self._last_bar_ns, self._feed_since_ns)
        if not self._state.tripped and self.bar_types and now - newest <= self.stale_after_ns:
            # A live time alert can fire before its time: on a 1.231 TradingNode a 1 s alert fired ~150 us
            # early in about 1 run of 3, so the feed was not stale yet and, with no re-arm, the watch stayed
            # silent until the next bar. Wait the rest, under the other name (this one is still firing).
            name = FEED_ALERT_AGAIN if FEED_ALERT in self.clock.timer_names else FEED_ALERT
            if name in self.clock.timer_names:
                self.clock.cancel_timer(name)
            at = max(newest + self.stale_after_ns + 1, now + 1_000_000)
            self.clock.set_time_alert_ns(name, at, self._on_feed_alert)

    def _on_order_event(self, event) -> None:
        if isinstance(event, OrderCancelRejected) and self._order_is_closed(event):
            return  # a late cancel: see the module notes
        if isinstance(event, _ERRORS):
            self._errors += 1
            limit = self.settings.max_consecutive_errors
            if self._errors > limit:
                reason = (
                    f"{self._errors} execution errors in a row (limit {limit}); "
                    f"last {type(event).__name__}: {getattr(event, 'reason', '')}"
                )
                self.trip("execution_errors", reason, float(self._errors), float(limit))
        elif isinstance(event, _SUCCESSES):
            self._errors = 0

    def _order_is_closed(self, event) -> bool:
        order = self.cache.order(event.client_order_id)
        return order is not None and order.is_closed

    def on_data(self, data: Data) -> None:
        if isinstance(data, HealthEvent):
            if data.status == "critical":
                self.trip("system_health", f"{data.component} critical: {data.reason}")
        elif isinstance(data, OperatorCommand):
            if data.action == "trip":
                who = f" by {data.operator}" if data.operator else ""
                self.trip("manual", f"manual trip{who}: {data.reason or 'no reason given'}")
            elif data.action == "reset":
                self.reset(data.reason, data.operator)

    # ---- helpers ------------------------------------------------------------------------------------
    def _set_trading_state(self, state: TradingState) -> bool:
        engine = self._risk_engine
        if engine is None:
            return False
        if engine.trading_state != state:
            engine.set_trading_state(state)
        return True

    def _publish(self, action: str, code: str, reason: str, value: float = math.nan, limit: float = math.nan):
        event = Veto(SOURCE, action, code, reason, value, limit).to_event("", self.clock.timestamp_ns())
        self.publish_data(RISK_EVENT_TYPE, event)

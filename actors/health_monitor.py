"""The node's health (SPEC section 10): one status per dependency, rolled up to one level, published as HealthEvents.

Dependencies (the component names of their HealthEvents) and how each is observed:

- `exchange_rest`: a probe (live: the execution engine's `check_connected()`), and the venue's answers to the
  orders it was sent, from the order events on the bus: degraded when more than `reject_rate_degraded` of the
  last `order_window` answers were rejections (with at least `min_order_answers` answers), or when their median
  submit -> accept latency is above `order_latency_degraded_seconds`. Denials are the node's own risk engine, not
  the exchange, and are not counted.
- `exchange_ws`: a probe (live: every Binance websocket of the node is up; live/node.py `websocket_probe`).
- `redis`: a probe (live, with Redis enabled: a PING) and the bus watch's `HealthEvent(component="redis_stream")`
  (live/bus_watch.py); the worse of the two.
- `models`: the model ids of each BarCloseSignals batch. Expected: `expected_models`, or else the most ids a batch
  has had. Degraded below it, critical at 0.
- `data`: the bars of `bar_types` (injected by the runner). The feed is degraded when its newest bar (of any bar
  type) is older than `data_degraded_bars` bar intervals, critical after `data_critical_bars`; when some bar types
  are that old but not all, it is degraded (some symbols stale), never critical. The clock starts at the
  monitor's start, so "no bar yet" ages the same way.
- `trader`: a probe (live: every strategy is running). Not running is critical. Actors start before strategies,
  so a probe that has not yet said True is "starting"; the monitor stops before the strategies do.

A connection probe that says False is degraded at once and critical after `disconnect_critical_seconds` of
being False. A probe that raises counts as False, its error as the reason. Probes are plain callables attached
after the node is built (`attach_probe`); they are called on the node's thread, at most every PROBE_EVERY_NS.
A dependency with no probe and no observation is not monitored (a backtest has no exchange connection, no
Redis): it is left out of the roll-up and listed as such by `report()`, never reported ok by fiat.

Each status is ok, degraded, critical, or pending (monitored but no data yet: before the first bar, the first
signal batch, the first True of the trader probe). The roll-up (`roll_up`, a pure function), first match wins:

    EMERGENCY  the emergency stop is tripped (its latched state in the cache)
    CRITICAL   any dependency is critical
    DEGRADED   a core dependency (exchange_rest, exchange_ws, data, trader) is degraded, or two or more are
    HEALTHY    exactly one non-core dependency (redis, models) is degraded, or some dependency is pending
    OPTIMAL    every monitored dependency is ok

Publishing: on every change of a dependency's status a `HealthEvent(component=<dependency>)` (pending is not a
status of the event: nothing is published for it), then, when the level changed, the roll-up
`HealthEvent(component="system", level=...)` with status ok for OPTIMAL / HEALTHY, degraded for DEGRADED,
critical for CRITICAL and EMERGENCY. At start the roll-up is published whatever it is: HEALTHY "warming up"
while the checks wait for their first data. A critical event trips the emergency stop (actors/emergency_stop.py),
and the roll-up then goes to EMERGENCY; its critical event is ignored by the already latched stop. An operator
reset while a dependency is still critical re-trips the stop (the roll-up leaves EMERGENCY for CRITICAL and says
so): fix the dependency first. Events are only published on a change, so a long outage is one event, not one
per check.

When it evaluates: on each bar (once per clock time: the bars of one close arrive together, and before the bar
is recorded, so a gap is seen at the bar that ends it, as the live timer would have seen it during the gap), on
each signal batch, order answer, bus-watch event and emergency stop event, and on a timer only when
`check_seconds` is set. A Nautilus backtest settles the venue at every timer event, so a timer would change a
backtest's fills; the live configs set it (a dead feed sends no bars to evaluate on). One code path.
"""

import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.events import OrderAccepted, OrderFilled, OrderRejected, OrderSubmitted
from nautilus_trader.model.identifiers import ClientId

from actors.emergency_stop import emergency_state
from quantum_trader.events import HEALTH_LEVELS, SYSTEM_COMPONENT, BarCloseSignals, HealthEvent, RiskEvent

OK, DEGRADED, CRITICAL, PENDING = "ok", "degraded", "critical", "pending"
OPTIMAL, HEALTHY, DEGRADED_LEVEL, CRITICAL_LEVEL, EMERGENCY = HEALTH_LEVELS
DEPENDENCIES = ("exchange_rest", "exchange_ws", "redis", "models", "data", "trader")
CORE = frozenset({"exchange_rest", "exchange_ws", "data", "trader"})
PROBES = ("exchange_rest", "exchange_ws", "redis", "trader")
BUS_WATCH_COMPONENT = "redis_stream"  # live/bus_watch.py
EVENT_STATUS = {
    OPTIMAL: OK,
    HEALTHY: OK,
    DEGRADED_LEVEL: DEGRADED,
    CRITICAL_LEVEL: CRITICAL,
    EMERGENCY: CRITICAL,
}
TIMER = "qt_health_monitor"
ORDER_TOPIC = "events.order.*"
PROBE_EVERY_NS = 1_000_000_000
NS = 1_000_000_000
_RANK = {OK: 0, PENDING: 1, DEGRADED: 2, CRITICAL: 3}


@dataclass(frozen=True)
class Status:
    status: str  # ok | degraded | critical | pending
    reason: str = ""


def worst(*statuses: Status) -> Status:
    return max(statuses, key=lambda s: _RANK[s.status])


# ---- the roll-up ---------------------------------------------------------------------------------------
def roll_up(statuses: Mapping[str, Status], emergency: bool = False, emergency_reason: str = "") -> Status:
    """The level (one of HEALTH_LEVELS) of the monitored dependencies' statuses; see the module's table."""
    if emergency:
        return Status(EMERGENCY, f"emergency stop tripped: {emergency_reason}" if emergency_reason else "")
    by = {s: sorted(name for name, st in statuses.items() if st.status == s) for s in _RANK}
    if by[CRITICAL]:
        return Status(CRITICAL_LEVEL, _describe(statuses, by[CRITICAL]))
    degraded = by[DEGRADED]
    if degraded and (len(degraded) >= 2 or CORE.intersection(degraded)):
        return Status(DEGRADED_LEVEL, _describe(statuses, degraded))
    if degraded:
        return Status(HEALTHY, _describe(statuses, degraded))
    if by[PENDING]:
        return Status(HEALTHY, "warming up: " + _describe(statuses, by[PENDING]))
    return Status(OPTIMAL, "all monitored dependencies ok")


def _describe(statuses: Mapping[str, Status], names: list[str]) -> str:
    return "; ".join(f"{name} {statuses[name].status}: {statuses[name].reason}" for name in names)


# ---- the dependency checks -----------------------------------------------------------------------------
class ConnectionCheck:
    """Connected: ok. Not connected: degraded at once, critical once it has lasted `critical_after_ns`."""

    def __init__(self, what: str, critical_after_ns: int):
        self.what = what
        self.critical_after_ns = critical_after_ns
        self._down_since: int | None = None

    def observe(self, connected: bool, now: int, detail: str = "") -> Status:
        if connected:
            self._down_since = None
            return Status(OK, f"{self.what} connected")
        if self._down_since is None:
            self._down_since = now
        down = (now - self._down_since) / NS
        reason = f"{self.what} disconnected for {down:.0f} s" + (f" ({detail})" if detail else "")
        limit = self.critical_after_ns / NS
        if now - self._down_since >= self.critical_after_ns:
            return Status(CRITICAL, f"{reason} (critical after {limit:.0f} s)")
        return Status(DEGRADED, f"{reason} (critical after {limit:.0f} s)")


class TraderCheck:
    """Every strategy running: ok. Before the first True the trader is still starting (pending); after it, a
    False is critical."""

    def __init__(self):
        self._ran = False

    def observe(self, running: bool, detail: str = "") -> Status:
        if running:
            self._ran = True
            return Status(OK, "every strategy running")
        if not self._ran:
            return Status(PENDING, "the strategies are starting")
        return Status(CRITICAL, "trader not running" + (f" ({detail})" if detail else ""))


class FreshnessCheck:
    """Bar ages in bar intervals: see the module notes (`data`)."""

    def __init__(self, intervals_ns: Mapping[object, int], degraded_bars: float, critical_bars: float):
        self.intervals_ns = dict(intervals_ns)
        self.degraded_bars = degraded_bars
        self.critical_bars = critical_bars
        self.newest: dict[object, int] = {}
        self.since_ns = 0

    def start(self, now: int) -> None:
        self.since_ns = now

    def on_bar(self, key, ts: int) -> None:
        if ts > self.newest.get(key, 0):
            self.newest[key] = ts

    def status(self, now: int) -> Status:
        ages = {key: self._bars_old(key, now) for key in self.intervals_ns}
        stale = sorted((k for k, a in ages.items() if a > self.degraded_bars), key=str)
        if not stale:
            if len(self.newest) < len(self.intervals_ns):
                return Status(
                    PENDING, f"no bar yet for {len(self.intervals_ns) - len(self.newest)} bar type(s)"
                )
            return Status(OK, f"newest bar {min(ages.values()):.1f} bar intervals old")
        if len(stale) < len(ages):
            return Status(
                DEGRADED, f"{len(stale)} of {len(ages)} bar types stale: {self._what(stale[0], now)}"
            )
        freshest = min(ages, key=ages.get)
        what = f"every bar type stale, the freshest {self._what(freshest, now)}"
        if ages[freshest] > self.critical_bars:
            return Status(CRITICAL, f"{what} (critical after {self.critical_bars:g} bar intervals)")
        return Status(DEGRADED, f"{what} (degraded after {self.degraded_bars:g} bar intervals)")

    def _bars_old(self, key, now: int) -> float:
        return (now - max(self.newest.get(key, 0), self.since_ns)) / self.intervals_ns[key]

    def _what(self, key, now: int) -> str:
        seconds = (now - max(self.newest.get(key, 0), self.since_ns)) / NS
        when = "since its last bar" if key in self.newest else "without a bar since start"
        return f"{key}: {seconds:.0f} s {when}"


class ModelsCheck:
    """The model ids of the latest signal batch against the expected count (configured, or the most seen)."""

    def __init__(self, expected: int | None = None):
        self.configured = expected
        self.expected = expected or 0
        self.count: int | None = None

    def on_batch(self, model_ids: str) -> None:
        self.count = len([m for m in model_ids.split(",") if m.strip()])
        if self.configured is None:
            self.expected = max(self.expected, self.count)

    @property
    def monitored(self) -> bool:
        return self.count is not None or self.configured is not None

    def status(self) -> Status:
        if self.count is None:
            return Status(PENDING, f"no signal batch yet ({self.expected} models expected)")
        what = f"{self.count} of {self.expected} models voting"
        if self.count == 0:
            return Status(CRITICAL, what)
        if self.count < self.expected:
            return Status(DEGRADED, what)
        return Status(OK, what)


class OrderAnswersCheck:
    """The venue's answers to submitted orders: the reject share and the median submit -> accept latency of
    the last `window` answers."""

    def __init__(self, window: int, reject_rate: float, min_answers: int, latency_seconds: float):
        self.reject_rate = reject_rate
        self.min_answers = min_answers
        self.latency_ns = int(latency_seconds * NS)
        self.answers: deque[bool] = deque(maxlen=window)  # True: rejected
        self.latencies: deque[int] = deque(maxlen=window)
        self._submitted: dict[object, int] = {}

    @property
    def seen(self) -> bool:
        return bool(self.answers)

    def on_submitted(self, order_id, ts: int) -> None:
        self._submitted[order_id] = ts

    def on_answer(self, order_id, ts: int, rejected: bool) -> bool:
        """True when this event answered a submission (the first accept / fill / reject of an order)."""
        sent = self._submitted.pop(order_id, None)
        if sent is None:
            return False
        self.answers.append(rejected)
        if not rejected:
            self.latencies.append(max(0, ts - sent))
        return True

    def status(self) -> Status:
        rejects, n = sum(self.answers), len(self.answers)
        problems = []
        if n >= self.min_answers and rejects / n > self.reject_rate:
            problems.append(f"{rejects} of the last {n} orders rejected (limit {self.reject_rate:.0%})")
        if self.latencies:
            median = statistics.median(self.latencies)
            if median > self.latency_ns:
                problems.append(
                    f"median order latency {median / NS:.2f} s (limit {self.latency_ns / NS:g} s)"
                )
        if problems:
            return Status(DEGRADED, "; ".join(problems))
        return Status(OK, f"{n - rejects} of the last {n} orders accepted")


# ---- the actor -----------------------------------------------------------------------------------------
class HealthMonitorConfig(ActorConfig, frozen=True):
    """Thresholds (defaults in brackets):

    - `check_seconds` [None]: also evaluate on a timer this often (live configs: 5); None: only on events.
    - `data_degraded_bars` [1.5] / `data_critical_bars` [3.0]: bar intervals without a new bar.
      `bar_interval_seconds` [None: each bar type's own interval] overrides the interval (tests).
    - `disconnect_critical_seconds` [60]: a connection probe False this long is critical (degraded before).
    - `expected_models` [None: the most model ids a batch has had].
    - `order_window` [20] answers; `reject_rate_degraded` [0.25] with `min_order_answers` [4];
      `order_latency_degraded_seconds` [2.0] (median submit -> accept).

    `bar_types` is injected by the runner / live node; `client_id` is where the bus events are subscribed."""

    bar_types: tuple[str, ...] = ()
    client_id: str = "SIGNALS"
    check_seconds: float | None = None
    data_degraded_bars: float = 1.5
    data_critical_bars: float = 3.0
    bar_interval_seconds: float | None = None
    disconnect_critical_seconds: float = 60.0
    expected_models: int | None = None
    order_window: int = 20
    reject_rate_degraded: float = 0.25
    min_order_answers: int = 4
    order_latency_degraded_seconds: float = 2.0


class HealthMonitor(Actor):
    def __init__(self, config: HealthMonitorConfig | None = None):
        config = config or HealthMonitorConfig()
        super().__init__(config)
        _check_config(config)
        self.bar_types = [BarType.from_str(b) for b in config.bar_types]
        override = config.bar_interval_seconds
        intervals = {
            bt: int(override * NS) if override else int(bt.spec.timedelta.total_seconds() * NS)
            for bt in self.bar_types
        }
        self.freshness = FreshnessCheck(intervals, config.data_degraded_bars, config.data_critical_bars)
        self.models = ModelsCheck(config.expected_models)
        self.orders = OrderAnswersCheck(
            config.order_window,
            config.reject_rate_degraded,
            config.min_order_answers,
            config.order_latency_degraded_seconds,
        )
        critical_ns = int(config.disconnect_critical_seconds * NS)
        self.connections = {name: ConnectionCheck(name, critical_ns) for name in PROBES if name != "trader"}
        self.trader = TraderCheck()
        self._probes: dict[str, Callable[[], bool]] = {}
        self._probed: dict[str, Status] = {}
        self._probed_ns: int | None = None
        self._bus_watch: Status | None = None
        self.statuses: dict[str, Status] = {}  # the latest status of each monitored dependency
        self.level: Status | None = None  # the latest roll-up
        self.published: deque[HealthEvent] = deque(maxlen=1000)  # the latest events it published, in order
        self._last_eval_ns = -1
        self._evaluating = False
        self._again = False

    # ---- public API ----------------------------------------------------------------------------------
    def attach_probe(self, name: str, probe: Callable[[], bool]) -> None:
        """`probe()` -> True when the dependency is up (connected, running); called on the node's thread."""
        if name not in PROBES:
            raise ValueError(f"probe name must be one of {PROBES}, got {name!r}")
        self._probes[name] = probe

    def report(self) -> dict[str, str]:
        """Each dependency's latest status and reason, or "not monitored"."""
        return {
            name: f"{s.status}: {s.reason}" if (s := self.statuses.get(name)) else "not monitored"
            for name in DEPENDENCIES
        }

    # ---- lifecycle -----------------------------------------------------------------------------------
    def on_start(self) -> None:
        now = self.clock.timestamp_ns()
        self.freshness.start(now)
        for bar_type in self.bar_types:
            self.subscribe_bars(bar_type)
        client = ClientId(self.config.client_id)
        for cls in (BarCloseSignals, HealthEvent, RiskEvent):
            self.subscribe_data(DataType(cls), client_id=client)
        self.msgbus.subscribe(topic=ORDER_TOPIC, handler=self._on_order_event)
        if self.config.check_seconds:
            self.clock.set_timer(
                TIMER, interval=timedelta(seconds=self.config.check_seconds), callback=self._on_timer
            )
        self.level = None  # published at start whatever it is
        self.evaluate(force=True)
        unwatched = [name for name, text in self.report().items() if text == "not monitored"]
        self.log.info(f"Health monitor: {self.level.status}; not monitored: {', '.join(unwatched) or 'none'}")

    def on_stop(self) -> None:
        if self.msgbus.is_subscribed(topic=ORDER_TOPIC, handler=self._on_order_event):
            self.msgbus.unsubscribe(topic=ORDER_TOPIC, handler=self._on_order_event)

    # ---- observations --------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        if self.clock.timestamp_ns() > self._last_eval_ns:
            self.evaluate()  # before the bar: a gap shows at the bar that ends it
        self.freshness.on_bar(bar.bar_type, bar.ts_init)

    def on_data(self, data: Data) -> None:
        if isinstance(data, BarCloseSignals):
            self.models.on_batch(data.model_ids)
            self.evaluate(force=True)
        elif isinstance(data, HealthEvent):
            if data.component == BUS_WATCH_COMPONENT:  # never its own events: those would loop
                self._bus_watch = Status(data.status, f"message bus: {data.reason}")
                self.evaluate(force=True)
        elif (
            isinstance(data, RiskEvent)
            and data.source == "emergency_stop"
            and data.action in ("trip", "reset")
        ):
            self.evaluate(force=True)

    def _on_order_event(self, event) -> None:
        if isinstance(event, OrderSubmitted):
            self.orders.on_submitted(event.client_order_id, event.ts_init)
        elif isinstance(event, OrderAccepted | OrderFilled | OrderRejected):
            rejected = isinstance(event, OrderRejected)
            if self.orders.on_answer(event.client_order_id, event.ts_init, rejected):
                self.evaluate(force=True)

    def _on_timer(self, _event) -> None:
        self.evaluate(force=True)

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, force: bool = False) -> Status:
        """Observe every dependency, publish what changed; returns the roll-up. Re-entrant calls (a critical
        event trips the stop, whose RiskEvent comes back here while this one publishes) run once more after."""
        if self._evaluating:
            self._again = True
            return self.level
        self._evaluating = True
        try:
            self._evaluate_once(force)
            while self._again:
                self._again = False
                self._evaluate_once(True)
        finally:
            self._evaluating = False
        return self.level

    def _evaluate_once(self, force: bool) -> None:
        now = self.clock.timestamp_ns()
        self._last_eval_ns = now
        statuses = self._observe(now, force)
        for name, status in statuses.items():
            previous = self.statuses.get(name)
            self.statuses[name] = status
            if status.status != PENDING and (previous is None or previous.status != status.status):
                self._publish(name, status)
        state = emergency_state(self.cache)  # after the dependency events: a critical one may have tripped it
        level = roll_up(self.statuses, state.tripped, state.reason)
        if self.level is None or self.level.status != level.status:
            self.level = level
            self._publish(SYSTEM_COMPONENT, Status(EVENT_STATUS[level.status], level.reason), level.status)
        else:
            self.level = level

    def _observe(self, now: int, force: bool) -> dict[str, Status]:
        if self._probes and (force or self._probed_ns is None or now - self._probed_ns >= PROBE_EVERY_NS):
            self._probed_ns = now
            self._probed = {name: self._run_probe(name, probe, now) for name, probe in self._probes.items()}
        statuses = dict(self._probed)
        if self.bar_types:
            statuses["data"] = self.freshness.status(now)
        if self.models.monitored:
            statuses["models"] = self.models.status()
        if self.orders.seen:
            statuses["exchange_rest"] = worst(statuses.get("exchange_rest", Status(OK)), self.orders.status())
        if self._bus_watch is not None:
            statuses["redis"] = worst(statuses.get("redis", Status(OK)), self._bus_watch)
        return statuses

    def _run_probe(self, name: str, probe: Callable[[], bool], now: int) -> Status:
        try:
            up, detail = bool(probe()), ""
        except Exception as err:  # a probe that fails says the dependency is not there
            up, detail = False, f"{type(err).__name__}: {err}"
        if name == "trader":
            return self.trader.observe(up, detail)
        return self.connections[name].observe(up, now, detail)

    def _publish(self, component: str, status: Status, level: str = "") -> None:
        now = self.clock.timestamp_ns()
        event = HealthEvent(
            component=component,
            status=status.status,
            reason=status.reason,
            level=level,
            ts_event=now,
            ts_init=now,
        )
        self.published.append(event)
        what = f"{component} {level or status.status}: {status.reason}"
        if status.status == OK:
            self.log.info(f"Health {what}")
        else:
            self.log.warning(f"Health {what}")
        self.publish_data(DataType(HealthEvent), event)


def _check_config(c: HealthMonitorConfig) -> None:
    """Config errors name the field and what is allowed."""
    positive = {
        "data_degraded_bars": c.data_degraded_bars,
        "disconnect_critical_seconds": c.disconnect_critical_seconds,
        "order_window": c.order_window,
        "order_latency_degraded_seconds": c.order_latency_degraded_seconds,
    }
    for name in ("check_seconds", "bar_interval_seconds", "expected_models"):
        if getattr(c, name) is not None:
            positive[name] = getattr(c, name)
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"health_monitor.{name}: must be > 0, got {value}")
    if c.data_critical_bars < c.data_degraded_bars:
        raise ValueError(
            f"health_monitor.data_critical_bars: must be >= data_degraded_bars ({c.data_degraded_bars}), "
            f"got {c.data_critical_bars}"
        )
    if not 0 <= c.reject_rate_degraded < 1:
        raise ValueError(
            f"health_monitor.reject_rate_degraded: must be in [0, 1), got {c.reject_rate_degraded}"
        )
    if c.min_order_answers < 1:
        raise ValueError(f"health_monitor.min_order_answers: must be >= 1, got {c.min_order_answers}")

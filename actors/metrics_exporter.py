"""Prometheus `qt_*` metrics fed from the message bus, for a backtest and a live node alike (SPEC section 10).

The actor listens the way any other consumer does: order and position events (`events.order.*`,
`events.position.*`), the ensemble's BarCloseSignals (and single Signals), RiskEvents, HealthEvents and the
bars themselves; the account (equity, drawdown, exposure) and the emergency stop's latched state are read from
the portfolio and the cache on the engine's thread when a bar arrives (at most every `sample_seconds` of the
clock) and at stop; a position event updates the trade counters and the position count at once. It sets no timer: a Nautilus backtest settles the venue at every timer event, so a timer
would change a backtest's fills. One code path: in a backtest it only updates its registry (`registry`), and
serves nothing unless `port` is given.

Serving: with `port` set, `prometheus_client.start_http_server` serves `/metrics` of this actor's own
`CollectorRegistry` on its own daemon thread, bound to `host` (loopback by default; `port: 0` takes a free
port, see `bound_port`). That thread only reads the registry (prometheus_client's metrics are locked); it never
touches the engine, the cache or the portfolio. The server is shut down when the actor is disposed (`close()`).

Metrics (units in the name or below; gauges read NaN until their first value):
- `qt_trades_total`: positions closed (a netting position that flips or closes counts once per close);
  `qt_win_rate`: the share of them with a positive realised PnL (commissions included);
  `qt_pnl_total`: realised PnL of the closes since start + unrealised PnL of the open positions, USDT;
  `qt_pnl_realized`: the realised part alone.
- `qt_positions_count`, `qt_equity` (balance + unrealised PnL, USDT), `qt_drawdown_pct` (percent below the
  running peak of the sampled equity since start), `qt_exposure_pct` (gross notional / equity, percent).
- `qt_model_predictions_total{model}`: votes cast by each model kind (one per symbol and bar close);
  `qt_signals_total{direction}`: decisions published; `qt_signal_confidence{symbol}`: the latest confidence;
  `qt_models_loaded`: how many model ids voted in the latest batch.
- `qt_model_latency_seconds` (histogram): wall-clock time from the first bar of a close reaching this actor to
  the BarCloseSignals of that close on the bus: features, models, vote and gates, and live also the strategy's
  `batch_delay_ms` wait for the other symbols' klines.
- `qt_orders_total{event}` (submitted, accepted, filled, canceled, expired, rejected, denied,
  modify_rejected, cancel_rejected), `qt_order_rejects_total` (the last four),
  `qt_order_latency_seconds` (histogram): from an order's OrderSubmitted to its OrderAccepted (or the first
  OrderFilled without an acceptance), on the node's clock: the exchange API's round trip live, 0 in a backtest.
- `qt_emergency_brake`: 1 while the emergency stop is tripped; `qt_emergency_trips_total{code}`;
  `qt_risk_events_total{source,action,code}` (vetoes, blocks, trips, resets, ...);
  `qt_health_status{component}`: 0 ok, 1 degraded, 2 critical, from HealthEvents;
  `qt_health_level`: the roll-up (actors/health_monitor.py), 0 OPTIMAL, 1 HEALTHY, 2 DEGRADED, 3 CRITICAL,
  4 EMERGENCY, from the HealthEvents of component `system`.
- `qt_last_bar_timestamp_seconds`: the close time (unix seconds) of the newest bar (alert on
  `time() - qt_last_bar_timestamp_seconds`: it keeps growing while the engine is stuck, which a gauge set by
  the engine would not); `qt_data_age_seconds`: the clock's age of that bar at the latest sample.
"""

import math
import time

import numpy as np
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderExpired,
    OrderFilled,
    OrderModifyRejected,
    OrderRejected,
    OrderSubmitted,
    PositionClosed,
)
from nautilus_trader.model.identifiers import ClientId, Venue
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from actors.emergency_stop import emergency_state
from actors.equity_recorder import account_equity
from quantum_trader.events import (
    DIRECTION_CODES,
    HEALTH_LEVELS,
    SYSTEM_COMPONENT,
    BarCloseSignals,
    HealthEvent,
    RiskEvent,
    Signal,
)

ORDER_TOPIC = "events.order.*"
POSITION_TOPIC = "events.position.*"
NS = 1_000_000_000
_ORDER_EVENTS = {
    OrderSubmitted: "submitted",
    OrderAccepted: "accepted",
    OrderFilled: "filled",
    OrderCanceled: "canceled",
    OrderExpired: "expired",
    OrderRejected: "rejected",
    OrderDenied: "denied",
    OrderModifyRejected: "modify_rejected",
    OrderCancelRejected: "cancel_rejected",
}
_REJECTS = {"rejected", "denied", "modify_rejected", "cancel_rejected"}
_HEALTH_LEVELS = {"ok": 0, "degraded": 1, "critical": 2}
# decision latency: sub-millisecond in a backtest, the batch delay (tens of ms) plus scoring live
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ORDER_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsExporterConfig(ActorConfig, frozen=True):
    """`port`: serve /metrics there (0 = a free port); None serves nothing (a backtest's default).
    `enabled: false` makes the actor a no-op. `bar_types` and `venue` are injected by the runner / live node."""

    enabled: bool = True
    port: int | None = None
    host: str = "127.0.0.1"
    venue: str = "BINANCE"
    client_id: str = "SIGNALS"
    bar_types: tuple[str, ...] = ()
    sample_seconds: float = 1.0


class MetricsExporter(Actor):
    def __init__(self, config: MetricsExporterConfig | None = None):
        config = config or MetricsExporterConfig()
        super().__init__(config)
        if config.port is not None and not 0 <= config.port <= 65535:
            raise ValueError(f"port must be 0..65535 or None, got {config.port}")
        self.venue = Venue(config.venue)
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None
        self._thread = None
        self.bound_port: int | None = None
        self._define()
        self._wins = 0
        self._closed = 0
        self._realized = 0.0
        self._peak_equity = -math.inf
        self._last_sample_ns: int | None = None
        self._newest_bar_ns = 0
        self._bar_seen_at: dict[int, int] = {}  # bar close ts -> perf_counter_ns when its first bar arrived
        self._submitted_ns: dict[object, int] = {}  # client order id -> OrderSubmitted ts_init
        self._last_close: dict[object, float] = {}  # instrument id -> its newest bar's close
        self._confidence_of: dict[object, object] = {}  # instrument id -> its qt_signal_confidence child

    def _define(self) -> None:
        r = self.registry

        def gauge(name, doc, labels=()):
            g = Gauge(name, doc, labels, registry=r)
            if not labels:
                g.set(math.nan)
            return g

        self.trades = Counter("qt_trades", "Positions closed since start", registry=r)
        self.win_rate = gauge("qt_win_rate", "Share of closed positions with a positive realised PnL")
        self.pnl_total = gauge(
            "qt_pnl_total", "Realised PnL since start + unrealised PnL of open positions, USDT"
        )
        self.pnl_realized = gauge("qt_pnl_realized", "Realised PnL of the positions closed since start, USDT")
        self.positions = gauge("qt_positions_count", "Open positions")
        self.equity = gauge("qt_equity", "Account balance + unrealised PnL, USDT")
        self.drawdown = gauge("qt_drawdown_pct", "Percent below the running peak of the sampled equity")
        self.exposure = gauge("qt_exposure_pct", "Gross notional of open positions / equity, percent")
        self.predictions = Counter(
            "qt_model_predictions",
            "Votes cast by each model kind (one per symbol and bar close)",
            ["model"],
            registry=r,
        )
        self.signals = Counter("qt_signals", "Decisions published, by direction", ["direction"], registry=r)
        self.confidence = gauge("qt_signal_confidence", "Latest signal confidence per symbol", ["symbol"])
        self.models_loaded = gauge("qt_models_loaded", "Model ids that voted in the latest signal batch")
        self.model_latency = Histogram(
            "qt_model_latency_seconds",
            "Wall-clock seconds from the first bar of a close to its signals on the bus",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.orders = Counter("qt_orders", "Order events, by event", ["event"], registry=r)
        self.rejects = Counter(
            "qt_order_rejects", "Orders rejected or denied, modify / cancel rejected", registry=r
        )
        self.order_latency = Histogram(
            "qt_order_latency_seconds",
            "Seconds from OrderSubmitted to OrderAccepted (or the first fill), node clock",
            buckets=ORDER_LATENCY_BUCKETS,
            registry=r,
        )
        self.brake = Gauge("qt_emergency_brake", "1 while the emergency stop is tripped", registry=r)
        self.trips = Counter("qt_emergency_trips", "Emergency stop trips, by code", ["code"], registry=r)
        self.risk_events = Counter(
            "qt_risk_events",
            "Risk events, by source, action and code",
            ["source", "action", "code"],
            registry=r,
        )
        self.health = gauge(
            "qt_health_status", "Component health: 0 ok, 1 degraded, 2 critical", ["component"]
        )
        self.health_level = gauge(
            "qt_health_level", "Health roll-up: 0 OPTIMAL, 1 HEALTHY, 2 DEGRADED, 3 CRITICAL, 4 EMERGENCY"
        )
        self.last_bar = gauge("qt_last_bar_timestamp_seconds", "Close time of the newest bar, unix seconds")
        self.data_age = gauge(
            "qt_data_age_seconds", "Age of the newest bar on the node clock at the latest sample"
        )
        for event in _ORDER_EVENTS.values():
            self.orders.labels(event=event)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        if not self.config.enabled:
            return
        for bar_type in self.config.bar_types:
            self.subscribe_bars(BarType.from_str(bar_type))
        client = ClientId(self.config.client_id)
        for cls in (BarCloseSignals, Signal, RiskEvent, HealthEvent):
            self.subscribe_data(DataType(cls), client_id=client)
        self.msgbus.subscribe(topic=ORDER_TOPIC, handler=self._on_order_event)
        self.msgbus.subscribe(topic=POSITION_TOPIC, handler=self._on_position_event)
        self.brake.set(1 if emergency_state(self.cache).tripped else 0)
        self.sample()
        if self.config.port is not None and self._server is None:
            try:
                self._server, self._thread = start_http_server(
                    self.config.port, addr=self.config.host, registry=self.registry
                )
            except OSError as err:  # e.g. the port is taken: say which one, and where it is configured
                raise OSError(
                    f"metrics exporter: cannot serve /metrics on {self.config.host}:{self.config.port}: "
                    f"{err.strerror or err} (the actor's config `port` / `host`)"
                ) from None
            self.bound_port = self._server.server_address[1]
            self.log.info(f"Serving /metrics on http://{self.config.host}:{self.bound_port}/metrics")

    def on_stop(self) -> None:
        for topic, handler in (
            (ORDER_TOPIC, self._on_order_event),
            (POSITION_TOPIC, self._on_position_event),
        ):
            if self.msgbus.is_subscribed(topic=topic, handler=handler):
                self.msgbus.unsubscribe(topic=topic, handler=handler)
        if self.config.enabled:
            self.sample()

    def on_dispose(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (idempotent); the registry keeps its values."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def exposition(self) -> str:
        """The /metrics text of this actor's registry (what a scrape returns)."""
        return generate_latest(self.registry).decode()

    # ---- bars and the account ----------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        if bar.ts_event not in self._bar_seen_at:
            if len(self._bar_seen_at) > 64:  # closes whose signals never came (e.g. no strategy scores them)
                self._bar_seen_at.clear()
            self._bar_seen_at[bar.ts_event] = time.perf_counter_ns()
        self._last_close[bar.bar_type.instrument_id] = bar.close.as_double()
        if bar.ts_event > self._newest_bar_ns:
            self._newest_bar_ns = bar.ts_event
            self.last_bar.set(bar.ts_event / NS)
        now = self.clock.timestamp_ns()
        if self._last_sample_ns is None or now - self._last_sample_ns >= self.config.sample_seconds * NS:
            self.sample()

    def sample(self) -> None:
        """Equity, drawdown, exposure, positions, PnL and the ESS state, read on the engine's thread."""
        now = self.clock.timestamp_ns()
        self._last_sample_ns = now
        if self._newest_bar_ns:
            self.data_age.set(max(0.0, (now - self._newest_bar_ns) / NS))
        self.brake.set(1 if emergency_state(self.cache).tripped else 0)
        open_positions = self.cache.positions_open(venue=self.venue)
        self.positions.set(len(open_positions))
        account = self.portfolio.account(self.venue)
        # one unrealised-PnL pass (the costly part of a sample): a margin account's equity is its balance plus it
        unrealized = sum(m.as_double() for m in self.portfolio.unrealized_pnls(self.venue).values())
        self.pnl_total.set(self._realized + unrealized)
        self.pnl_realized.set(self._realized)
        if account is None:
            return
        if account.is_margin_account:
            balance = account.balance_total(USDT)
            equity = (balance.as_double() if balance is not None else 0.0) + unrealized
        else:
            equity = account_equity(self.portfolio, self.venue)
        gross = 0.0  # notional at the last close this actor saw: cheaper than the portfolio's net exposure
        for position in open_positions:
            price = self._last_close.get(position.instrument_id)
            if price is None:
                exposure = self.portfolio.net_exposure(position.instrument_id)
                gross += abs(exposure.as_double()) if exposure is not None else 0.0
            else:
                gross += position.quantity.as_double() * price * position.multiplier.as_double()
        self.equity.set(equity)
        self._peak_equity = max(self._peak_equity, equity)
        self.drawdown.set(
            100.0 * (self._peak_equity - equity) / self._peak_equity if self._peak_equity > 0 else 0.0
        )
        self.exposure.set(100.0 * gross / equity if equity > 0 else math.nan)

    # ---- bus events --------------------------------------------------------------------------------
    def on_data(self, data: Data) -> None:
        if isinstance(data, BarCloseSignals):
            self._on_signals(data)
        elif isinstance(data, Signal):
            self._on_signals(BarCloseSignals.of(data))
        elif isinstance(data, RiskEvent):
            self.risk_events.labels(source=data.source, action=data.action, code=data.code).inc()
            if data.source == "emergency_stop" and data.action == "trip":
                self.trips.labels(code=data.code).inc()
                self.brake.set(1)
            elif data.source == "emergency_stop" and data.action == "reset":
                self.brake.set(0)
        elif isinstance(data, HealthEvent):
            self.health.labels(component=data.component).set(_HEALTH_LEVELS.get(data.status, 2))
            if data.component == SYSTEM_COMPONENT and data.level in HEALTH_LEVELS:
                self.health_level.set(HEALTH_LEVELS.index(data.level))

    def _on_signals(self, batch: BarCloseSignals) -> None:
        seen = self._bar_seen_at.pop(batch.ts_event, None)
        if seen is not None:
            self.model_latency.observe((time.perf_counter_ns() - seen) / NS)
        for kind, votes in batch.votes.items():
            cast = int(np.count_nonzero(~np.isnan(np.asarray(votes, dtype=np.float64))))
            if cast:
                self.predictions.labels(model=kind).inc(cast)
        counts = np.bincount(np.asarray(batch.direction, dtype=np.int64) + 1, minlength=3)
        for code, name in DIRECTION_CODES.items():
            if counts[code + 1]:
                self.signals.labels(direction=name).inc(int(counts[code + 1]))
        children = self._confidence_of
        for iid, confidence in zip(batch.instrument_ids, batch.confidence.tolist(), strict=True):
            child = children.get(iid)
            if child is None:
                child = children[iid] = self.confidence.labels(symbol=iid.symbol.value)
            child.set(confidence)
        if batch.model_ids:
            self.models_loaded.set(len([m for m in batch.model_ids.split(",") if m]))

    def _on_order_event(self, event) -> None:
        name = _ORDER_EVENTS.get(type(event))
        if name is None:
            return
        self.orders.labels(event=name).inc()
        if name in _REJECTS:
            self.rejects.inc()
        order = event.client_order_id
        if name == "submitted":
            self._submitted_ns[order] = event.ts_init
        elif name in ("accepted", "filled"):
            sent = self._submitted_ns.pop(order, None)
            if sent is not None:
                self.order_latency.observe(max(0, event.ts_init - sent) / NS)
        elif name in ("rejected", "denied", "canceled", "expired"):
            self._submitted_ns.pop(order, None)

    def _on_position_event(self, event) -> None:
        if isinstance(event, PositionClosed):
            pnl = event.realized_pnl.as_double() if event.realized_pnl is not None else 0.0
            self._closed += 1
            self._wins += pnl > 0
            self._realized += pnl
            self.trades.inc()
            self.win_rate.set(self._wins / self._closed)
            self.pnl_realized.set(self._realized)
        # the count at once; equity, PnL and exposure at the next bar's sample (a full sample per fill would
        # cost a backtest more than the fills themselves)
        self.positions.set(self.cache.positions_open_count(venue=self.venue))

"""The Emergency Stop System: what trips it, what it does then, and that it stays tripped until a reset.

Every scenario is a real backtest through backtests.runner.run_backtest on a tiny catalog of 5m bars that
starts at 2025-01-01 00:00 UTC (a Wednesday). The ESS is in the config's `actors:` list like any actor; a
small Injector actor publishes operator commands and health events at given times, and the Probe strategy
records on every bar what a strategy sees of the stop (`emergency_state(cache)`) and trades a small script.
"""

import functools

import numpy as np
import pandas as pd
import pytest
from nautilus_trader.backtest.engine import BacktestEngineConfig
from nautilus_trader.cache.cache import Cache
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig, CacheConfig, DatabaseConfig
from nautilus_trader.model.data import Bar, DataType
from nautilus_trader.model.enums import OrderSide, TradingState
from nautilus_trader.model.objects import Price

import backtests.runner
from actors.emergency_stop import ESS_STATE_KEY, EmergencyStop, EmergencyStopConfig, emergency_state
from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from quantum_trader.config import ConfigError
from quantum_trader.events import HealthEvent, OperatorCommand, RiskEvent
from strategies.base import QTStrategy, QTStrategyConfig
from tests.conftest import build_catalog, candles

T0 = pd.Timestamp("2025-01-01", tz="UTC")
BARS_PER_DAY = 288
ALL_ACTIONS = ["trip", "halt", "close_losing", "reduce_exposure", "alert"]


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# ---- test components ----------------------------------------------------------------------------------
class ProbeConfig(QTStrategyConfig, frozen=True):
    buy_on_bar: int = 0  # market BUY of notional_usd on this bar (0 = never)
    add_every: int = 0  # after the buy, try to add 100 USDT every n bars
    plan: tuple[str, ...] = ()  # from bar 3 on, one step a bar: "errors N", "buy" or "bracket N"


class Probe(QTStrategy):
    """Records the emergency state a strategy sees on each bar; trades the configured script."""

    def on_strategy_start(self) -> None:
        self.n = 0
        self.seen: list[tuple[pd.Timestamp, bool]] = []
        self.denied: list[tuple[pd.Timestamp, str]] = []
        self.adds: list[pd.Timestamp] = []
        self.cancel_rejects: list[str] = []

    def on_bar(self, bar: Bar) -> None:
        self.n += 1
        self.seen.append((pd.Timestamp(bar.ts_event, tz="UTC"), emergency_state(self.cache).tripped))
        iid, price = bar.bar_type.instrument_id, bar.close.as_double()
        c = self.config
        if self.n == c.buy_on_bar:
            self.enter(iid, OrderSide.BUY, price)
        elif c.add_every and self.n > c.buy_on_bar and (self.n - c.buy_on_bar) % c.add_every == 0:
            self.adds.append(pd.Timestamp(bar.ts_event, tz="UTC"))
            # sent past `enter`, which itself refuses entries while the stop is tripped: the risk engine's
            # REDUCING state is what is checked here
            qty = self.cache.instrument(iid).make_qty(100.0 / price)
            self.submit_order(self.order_factory.market(iid, OrderSide.BUY, qty))
        step = self.n - 3
        if 0 <= step < len(c.plan):
            if c.plan[step] == "buy":
                self.enter(iid, OrderSide.BUY, price)
            elif c.plan[step].startswith("bracket"):
                self.bracket(iid, int(c.plan[step].split()[1]))
            else:
                self.bad_orders(iid, int(c.plan[step].split()[1]))

    def bad_orders(self, iid, n: int) -> None:
        """Alternately an order the venue rejects and one the RiskEngine denies."""
        qty = self.cache.instrument(iid).make_qty(1)
        for i in range(n):
            if i % 2 == 0:  # reduce-only BUY while flat or long: "would have increased position"
                order = self.order_factory.market(iid, OrderSide.BUY, qty, reduce_only=True)
            else:  # 5 decimals on a 4-decimal instrument: "price invalid (precision 5 > 4)"
                order = self.order_factory.limit(iid, OrderSide.BUY, qty, Price(1.00001, 5))
            self.submit_order(order)

    def bracket(self, iid, stops: int) -> None:
        """A reduce-only take-profit 5% above the entry and `stops` reduce-only stops 5% below it."""
        instrument = self.cache.instrument(iid)
        (position,) = self.cache.positions_open(instrument_id=iid, strategy_id=self.id)
        entry, qty = position.avg_px_open, position.quantity
        self.submit_order(
            self.order_factory.limit(
                iid, OrderSide.SELL, qty, instrument.make_price(entry * 1.05), reduce_only=True
            )
        )
        for _ in range(stops):
            trigger = instrument.make_price(entry * 0.95)
            self.submit_order(
                self.order_factory.stop_market(iid, OrderSide.SELL, qty, trigger, reduce_only=True)
            )

    def on_position_closed(self, event) -> None:
        super().on_position_closed(event)
        for order in self.cache.orders_open(instrument_id=event.instrument_id, strategy_id=self.id):
            self.cancel_order(order)

    def on_order_cancel_rejected(self, event) -> None:
        self.cancel_rejects.append(event.reason)

    def on_order_denied(self, event) -> None:
        self.denied.append((pd.Timestamp(event.ts_event, tz="UTC"), event.reason))


class InjectorConfig(ActorConfig, frozen=True):
    events: tuple[dict, ...] = ()  # {"at": "2025-01-01 10:02:30", "type": "command" | "health", **fields}


class Injector(Actor):
    """Publishes operator commands and health events at their times; records the risk engine's state."""

    def __init__(self, config: InjectorConfig):
        super().__init__(config)
        self.trading_states: list[tuple[pd.Timestamp, str]] = []

    def on_start(self) -> None:
        self.msgbus.subscribe(topic="events.risk", handler=self._on_trading_state)
        for i, event in enumerate(self.config.events):
            fire = functools.partial(self._publish, event)
            self.clock.set_time_alert(f"inject-{i}", at(event["at"]), callback=fire)

    def _publish(self, event: dict, _alert) -> None:
        now = self.clock.timestamp_ns()
        fields = {k: v for k, v in event.items() if k not in ("at", "type")}
        cls = OperatorCommand if event["type"] == "command" else HealthEvent
        self.publish_data(DataType(cls), cls(ts_event=now, ts_init=now, **fields))

    def _on_trading_state(self, event) -> None:
        self.trading_states.append((pd.Timestamp(event.ts_event, tz="UTC"), event.state.name))


def command(when: str, action: str, **fields) -> dict:
    return {"at": when, "type": "command", "action": action, "operator": "ops", **fields}


def health(when: str, status: str) -> dict:
    return {"at": when, "type": "health", "component": "redis_stream", "status": status, "reason": "test"}


# ---- running a scenario -------------------------------------------------------------------------------
def catalog_of(tmp_path, closes, drop: tuple[int, ...] = (), wide: tuple[int, ...] = ()):
    """`wide`: bars whose high is 10% above and whose low is 10% below their close."""
    frame = candles(np.round(np.asarray(closes, dtype=float), 4), spread=0.0)
    frame.loc[list(wide), "high"] = frame.loc[list(wide), "close"] * 1.1
    frame.loc[list(wide), "low"] = frame.loc[list(wide), "close"] * 0.9
    frame = frame.drop(index=list(drop)).reset_index(drop=True)
    return build_catalog(tmp_path / "catalog", {"ESSUSDT": frame}).path


def flat(days: float) -> np.ndarray:
    return np.full(int(days * BARS_PER_DAY), 100.0)


class Scenario:
    def __init__(self, result):
        self.result = result
        self.ess = next(a for a in result.engine.trader.actors() if isinstance(a, EmergencyStop))
        self.injector = next(a for a in result.engine.trader.actors() if isinstance(a, Injector))
        self.probe = result.strategies[0]
        self.risk_engine = result.engine.kernel.risk_engine
        self.events = result.events.frame(RiskEvent)

    def ess_events(self) -> pd.DataFrame:
        if self.events.empty:
            return self.events
        return self.events[self.events["source"] == "emergency_stop"].reset_index(drop=True)

    def actions(self) -> list[str]:
        return list(self.ess_events().get("action", []))

    def trip(self) -> pd.Series:
        (row,) = [r for _, r in self.ess_events().iterrows() if r["action"] == "trip"]
        return row

    def seen_tripped(self, start=None, end=None) -> set[bool]:
        return {s for t, s in self.probe.seen if (start is None or t >= start) and (end is None or t < end)}


def run(catalog, profile: dict | None = None, events=(), **strategy) -> Scenario:
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"slippage_bps": 0, "funding": False, "leverage": {"ESSUSDT": 5}},
            "strategies": [{"path": "tests.test_emergency_stop:Probe", "config": strategy}],
            "actors": [  # the Injector starts first, so it sees the trading state the ESS sets on start
                {"path": "tests.test_emergency_stop:Injector", "config": {"events": list(events)}},
                {"path": "actors.emergency_stop:EmergencyStop", "config": {"risk_profile": profile}},
            ],
            "report": {"tearsheet": False},
        }
    )
    return Scenario(run_backtest(cfg, progress=False))


# ---- the state strategies read ------------------------------------------------------------------------
def test_the_state_reads_not_tripped_when_absent_and_tripped_when_unreadable():
    cache = Cache()
    assert emergency_state(cache).tripped is False
    cache.add(ESS_STATE_KEY, b"not json")
    state = emergency_state(cache)
    assert state.tripped is True and state.code == "corrupt_state"


def test_the_profile_can_be_a_name_as_the_runner_injects_it_or_a_mapping():
    by_name = EmergencyStop(EmergencyStopConfig(risk_profile="conservative"))
    assert (by_name.profile.name, by_name.profile.daily_drawdown) == ("conservative", 0.10)
    inline = EmergencyStop(EmergencyStopConfig(risk_profile={"emergency": {"feed_stale_seconds": 60}}))
    assert inline.settings.feed_stale_seconds == 60 and inline.profile.daily_drawdown == 0.15
    with pytest.raises(ConfigError, match="feed_stale_secs"):
        EmergencyStop(EmergencyStopConfig(risk_profile={"emergency": {"feed_stale_secs": 60}}))


# ---- 1. data feed -------------------------------------------------------------------------------------
def test_bars_arriving_every_300_s_never_trip_the_feed_check(tmp_path):
    s = run(catalog_of(tmp_path, flat(1)))
    assert s.ess.trips == [] and s.actions() == []
    assert s.seen_tripped() == {False}


def test_a_feed_that_stops_for_longer_than_300_s_trips_feed_stale(tmp_path):
    # bar 100 (08:20 to 08:25) is missing: bar 99 closes at 08:20, the next bar at 08:30
    s = run(catalog_of(tmp_path, flat(1), drop=(100,)))
    assert s.ess.trips == ["feed_stale"]
    trip = s.trip()
    last_bar = T0 + pd.Timedelta(minutes=500)  # close of bar 99
    # the watch fires just past 300 s plus the 10 s grace after the last bar, not at a later periodic check
    assert trip["ts_event"] == last_bar + pd.Timedelta(seconds=310) + pd.Timedelta(1, unit="ns")
    assert (trip["code"], trip["limit"]) == ("feed_stale", 300.0)
    assert trip["value"] == pytest.approx(310.0)
    assert s.seen_tripped(end=last_bar + pd.Timedelta(minutes=1)) == {False}
    assert s.seen_tripped(start=last_bar + pd.Timedelta(minutes=6)) == {True}  # latched, bars or not


def test_a_gap_shorter_than_the_limit_does_not_trip(tmp_path):
    # the same 600 s gap against a 900 s limit
    s = run(catalog_of(tmp_path, flat(1), drop=(100,)), profile={"emergency": {"feed_stale_seconds": 900}})
    assert s.ess.trips == [] and s.seen_tripped() == {False}


def test_a_feed_alert_the_live_clock_runs_a_little_early_still_trips():
    """Nautilus' LiveClock runs time alerts up to about a millisecond early; the check judges by the alert's time
    (before, such an early alert found the feed 0.7 ms short of stale and the stall went unnoticed)."""
    from nautilus_trader.common.component import MessageBus, TestClock, TimeEvent
    from nautilus_trader.core.uuid import UUID4
    from nautilus_trader.model.identifiers import TraderId
    from nautilus_trader.portfolio.portfolio import Portfolio

    from actors.emergency_stop import FEED_ALERT

    clock, cache = TestClock(), Cache()
    msgbus = MessageBus(TraderId("TESTER-001"), clock)
    ess = EmergencyStop(EmergencyStopConfig(bar_types=["BTCUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL"]))
    ess.register_base(Portfolio(msgbus, cache, clock), msgbus, cache, clock)
    last_bar = 1_700_000_000 * 10**9
    ess._last_bar_ns = last_bar
    due = last_bar + ess.stale_after_ns + 1
    clock.set_time(due - 700_000)
    ess._on_feed_alert(TimeEvent(FEED_ALERT, UUID4(), due, due))
    assert ess.trips == ["feed_stale"]


# ---- 2. execution errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "plan, trips",
    [
        (("errors 6",), ["execution_errors"]),
        (("errors 5",), []),
        (("errors 3", "errors 3"), ["execution_errors"]),  # in a row across bars
        (("errors 5", "idle", "idle", "errors 5"), ["execution_errors"]),  # quiet bars do not end the run
        (("errors 5", "buy", "idle", "errors 5"), []),  # the buy's accept and fill end the run of errors
    ],
)
def test_more_than_five_consecutive_rejected_or_denied_orders_trip_execution_errors(tmp_path, plan, trips):
    plan = tuple("errors 0" if p == "idle" else p for p in plan)
    s = run(catalog_of(tmp_path, flat(0.2)), plan=plan)
    assert s.ess.trips == trips
    denied = len(s.probe.denied)
    assert denied == sum(int(p.split()[1]) // 2 for p in plan if p.startswith("errors"))
    if trips:
        trip = s.trip()
        assert (trip["value"], trip["limit"]) == (6.0, 5.0)


def test_a_cancel_that_arrives_after_the_order_is_done_is_no_execution_error(tmp_path):
    """One bar's low triggers the six stops: the first fills and closes the position, and the strategy cancels
    the take-profit and the five other stops. The venue has already cancelled them itself (reduce-only orders
    of a closed position) when those cancels arrive, and answers each with "not found". What a cancel asks for
    holds, on Binance as in the simulation: these six do not count, and five real errors after them do not
    trip the stop either."""
    catalog = catalog_of(tmp_path, flat(0.2), wide=(6,))
    s = run(catalog, plan=("buy", "bracket 6", "errors 0", "errors 0", "errors 0", "errors 5"))
    assert len(s.probe.cancel_rejects) == 6 and all("not found" in r for r in s.probe.cancel_rejects)
    assert len(s.probe.denied) == 2  # the real errors happened: two denials and three rejections
    assert s.ess.trips == []


# ---- 3. system health ---------------------------------------------------------------------------------
def test_a_critical_health_event_trips_system_health(tmp_path):
    events = [health("2025-01-01 06:02:30", "degraded"), health("2025-01-01 08:02:30", "critical")]
    s = run(catalog_of(tmp_path, flat(0.5)), events=events)
    assert s.ess.trips == ["system_health"]
    assert s.trip()["ts_event"] == at("2025-01-01 08:02:30")
    assert "redis_stream critical" in s.trip()["reason"]


def test_degraded_or_ok_health_does_not_trip(tmp_path):
    events = [health("2025-01-01 06:02:30", "degraded"), health("2025-01-01 07:02:30", "ok")]
    s = run(catalog_of(tmp_path, flat(0.5)), events=events)
    assert s.ess.trips == [] and s.seen_tripped() == {False}


# ---- 4. manual trip, latched until a manual reset -----------------------------------------------------
def test_a_manual_trip_stays_latched_through_later_bars_and_days_until_a_reset_command(tmp_path):
    trip_at, reset_at = at("2025-01-01 10:02:30"), at("2025-01-02 12:02:30")
    events = [
        command("2025-01-01 10:02:30", "trip", reason="exchange incident"),
        command("2025-01-01 20:02:30", "close", symbol="ESSUSDT"),  # other commands do not reset
        health("2025-01-02 00:02:30", "ok"),  # nor does good health, nor a new day
        command("2025-01-02 12:02:30", "reset", reason="incident over"),
    ]
    s = run(catalog_of(tmp_path, flat(2.5)), events=events)
    assert s.ess.trips == ["manual"]
    assert s.seen_tripped(end=trip_at) == {False}
    assert s.seen_tripped(start=trip_at, end=reset_at) == {True}
    assert s.seen_tripped(start=reset_at) == {False}
    assert s.actions() == ALL_ACTIONS + ["reset"]
    trip, reset = s.trip(), s.ess_events().iloc[-1]
    assert trip["reason"] == "manual trip by ops: exchange incident"
    assert reset["ts_event"] == reset_at and reset["code"] == "manual"
    assert s.risk_engine.trading_state == TradingState.ACTIVE
    assert s.injector.trading_states == [(trip_at, "REDUCING"), (reset_at, "ACTIVE")]


# ---- 5. drawdown --------------------------------------------------------------------------------------
def falling(days: float, to: float, start_bar: int = 12, end_bar: int = 200) -> np.ndarray:
    path = flat(days)
    path[start_bar:end_bar] = np.linspace(100.0, to, end_bar - start_bar)
    path[end_bar:] = to
    return path


@pytest.mark.parametrize("low, trips", [(70.0, ["daily_drawdown"]), (95.0, [])])
def test_a_daily_drawdown_over_15_percent_trips_daily_drawdown(tmp_path, low, trips):
    # 20k notional long on a 10k account: a 30% fall is a 60% drawdown, a 5% fall a 10% one
    s = run(catalog_of(tmp_path, falling(1, low)), buy_on_bar=3, notional_usd=20_000)
    assert s.ess.trips == trips
    if trips:
        trip = s.trip()
        assert trip["limit"] == 0.15
        assert 0.15 < trip["value"] < 0.16  # tripped at the first check past the limit
        assert trip["ts_event"] < T0 + pd.Timedelta(hours=17)  # long before the 80.5 liquidation
        assert s.actions() == ALL_ACTIONS


def test_a_slow_decline_over_days_trips_the_emergency_brake_not_the_daily_limit(tmp_path):
    # 4% a day on 2x exposure: about 8% a day (under 15%), 20% from the peak on the third day
    closes = 100.0 * 0.96 ** (np.arange(3 * BARS_PER_DAY) / BARS_PER_DAY)
    s = run(catalog_of(tmp_path, closes), buy_on_bar=3, notional_usd=20_000)
    assert s.ess.trips == ["emergency_brake"]
    trip = s.trip()
    assert trip["ts_event"].normalize() == at("2025-01-03")
    assert 0.20 < trip["value"] < 0.21 and trip["limit"] == 0.20


# ---- what a trip does -----------------------------------------------------------------------------------
def test_after_a_trip_the_risk_engine_is_reducing_and_adding_to_a_position_is_denied(tmp_path):
    trip_at = at("2025-01-01 06:02:30")
    events = [command("2025-01-01 06:02:30", "trip", reason="test")]
    s = run(catalog_of(tmp_path, flat(0.5)), events=events, buy_on_bar=3, add_every=12)
    assert s.risk_engine.trading_state == TradingState.REDUCING
    adds_after = [t for t in s.probe.adds if t > trip_at]
    assert len(adds_after) > 5
    assert [t for t, _ in s.probe.denied] == adds_after
    assert all("REDUCING" in reason for _, reason in s.probe.denied)
    (position,) = s.result.engine.cache.positions()
    adds_before = len(s.probe.adds) - len(adds_after)
    assert position.quantity.as_double() == pytest.approx((1000 + 100 * adds_before) / 100.0)
    events = s.ess_events()
    assert s.actions() == ALL_ACTIONS
    assert (events["code"] == "manual").all() and (events["ts_event"] == trip_at).all()
    assert events.set_index("action").loc["reduce_exposure", "value"] == 0.5


def test_the_configured_actions_are_published_in_their_order(tmp_path):
    profile = {"emergency": {"actions": ["alert", "reduce_exposure"], "reduce_fraction": 0.25}}
    events = [command("2025-01-01 06:02:30", "trip")]
    s = run(catalog_of(tmp_path, flat(0.5)), profile=profile, events=events)
    assert s.actions() == ["trip", "alert", "reduce_exposure"]
    assert s.ess_events()["value"].iloc[-1] == 0.25
    assert s.risk_engine.trading_state == TradingState.ACTIVE  # no halt configured


# ---- persistence across a restart ----------------------------------------------------------------------
def test_a_trip_survives_a_restart_with_a_redis_cache_until_a_reset(tmp_path, redis_port, monkeypatch):
    # The runner's engine config with a persistent cache: same trader id (QT-001), same Redis.
    cache = CacheConfig(database=DatabaseConfig(type="redis", host="127.0.0.1", port=redis_port))
    monkeypatch.setattr(
        backtests.runner, "BacktestEngineConfig", functools.partial(BacktestEngineConfig, cache=cache)
    )
    catalog = catalog_of(tmp_path, flat(1))
    first = run(catalog, events=[command("2025-01-01 10:02:30", "trip", reason="before restart")])
    assert first.ess.tripped and first.ess.trips == ["manual"]
    first.result.engine.dispose()  # the "process" ends

    reset_at = at("2025-01-01 12:02:30")
    second = run(catalog, events=[command("2025-01-01 12:02:30", "reset", reason="checked")])
    assert second.seen_tripped(end=reset_at) == {True}  # from the very first bar
    assert second.seen_tripped(start=reset_at) == {False}
    assert second.ess.trips == []  # restored, not tripped again
    assert second.actions() == ["reset"]
    assert second.ess_events()["code"].iloc[0] == "manual"
    assert [state for _, state in second.injector.trading_states] == ["REDUCING", "ACTIVE"]
    assert second.injector.trading_states[1][0] == reset_at
    assert emergency_state(second.result.engine.cache).tripped is False
    second.result.engine.dispose()

    third = run(catalog)  # the reset is persisted too
    assert third.seen_tripped() == {False} and third.injector.trading_states == []
    third.result.engine.dispose()


def test_a_feed_alert_that_fires_early_waits_the_rest_instead_of_going_silent():
    """Live, a time alert can fire before its time (seen on a 1.231 TradingNode: a 1 s alert ~150 us early in
    about 1 run of 3). The feed is then not stale yet; the watch must re-arm rather than stay silent."""
    from types import SimpleNamespace

    from actors.emergency_stop import FEED_ALERT, FEED_ALERT_AGAIN, NOT_TRIPPED, NS

    armed = []
    early = 1000 * NS - 150_000
    clock = SimpleNamespace(
        timer_names=[FEED_ALERT],  # the alert is still the one firing
        timestamp_ns=lambda: early,
        cancel_timer=lambda name: None,
        set_time_alert_ns=lambda name, at, callback: armed.append((name, at)),
    )
    checked = []
    ess = SimpleNamespace(
        clock=clock,
        _last_bar_ns=0,
        _feed_since_ns=999 * NS,
        stale_after_ns=NS,
        _state=NOT_TRIPPED,
        bar_types=["a bar type"],
        _check_feed=checked.append,
        _on_feed_alert=None,
    )
    EmergencyStop._on_feed_alert(ess)
    assert checked == [early]  # checked (not stale yet: 1 s less 150 us) ...
    assert armed == [(FEED_ALERT_AGAIN, early + 1_000_000)]  # ... and asked again 1 ms later

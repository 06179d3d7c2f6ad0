"""The health monitor (actors/health_monitor.py): the roll-up table, each dependency's thresholds, a backtest where
the models count drops and the data goes stale in simulated time (the real EmergencyStop trips on the critical
event), and a live node on the fake exchange whose health follows its feed.
"""

import itertools
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import InstrumentId

from actors.emergency_stop import EmergencyStop
from actors.health_monitor import (
    CORE,
    CRITICAL,
    DEGRADED,
    DEPENDENCIES,
    OK,
    PENDING,
    ConnectionCheck,
    FreshnessCheck,
    HealthMonitor,
    HealthMonitorConfig,
    ModelsCheck,
    OrderAnswersCheck,
    Status,
    TraderCheck,
    roll_up,
)
from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from quantum_trader.events import HEALTH_LEVELS, BarCloseSignals
from tests.conftest import build_catalog, candles, fills_of, random_walk

NS = 1_000_000_000
ROOT = Path(__file__).resolve().parents[1]


def level(statuses: dict[str, str], emergency: bool = False) -> str:
    return roll_up({name: Status(s, "why") for name, s in statuses.items()}, emergency).status


# ---- the roll-up table ---------------------------------------------------------------------------------
def expected_level(statuses: dict[str, str], emergency: bool) -> str:
    """The module's table, written out once more as the specification the function is held to."""
    values = list(statuses.values())
    degraded = [n for n, s in statuses.items() if s == DEGRADED]
    if emergency:
        return "EMERGENCY"
    if CRITICAL in values:
        return "CRITICAL"
    if len(degraded) >= 2 or any(n in CORE for n in degraded):
        return "DEGRADED"
    if degraded or PENDING in values:
        return "HEALTHY"
    return "OPTIMAL"


def test_the_roll_up_table_over_every_combination_of_two_dependencies_and_the_emergency_stop():
    seen = set()
    for a, b in itertools.combinations(DEPENDENCIES, 2):
        for sa, sb in itertools.product((OK, PENDING, DEGRADED, CRITICAL), repeat=2):
            for emergency in (False, True):
                statuses = {a: sa, b: sb}
                got = level(statuses, emergency)
                assert got == expected_level(statuses, emergency), (statuses, emergency)
                seen.add(got)
    assert seen == set(HEALTH_LEVELS)


@pytest.mark.parametrize(
    "statuses, expected",
    [
        ({}, "OPTIMAL"),  # nothing monitored: nothing wrong
        ({n: OK for n in DEPENDENCIES}, "OPTIMAL"),
        ({"data": PENDING, "trader": OK}, "HEALTHY"),  # before the first bar
        ({"redis": DEGRADED, "data": OK}, "HEALTHY"),  # one non-core dependency degraded
        ({"models": DEGRADED, "data": OK}, "HEALTHY"),
        ({"models": DEGRADED, "redis": DEGRADED}, "DEGRADED"),  # two non-core ones
        ({"exchange_ws": DEGRADED}, "DEGRADED"),  # any core one
        ({"exchange_rest": DEGRADED}, "DEGRADED"),
        ({"data": DEGRADED}, "DEGRADED"),
        ({"trader": DEGRADED}, "DEGRADED"),
        ({"models": CRITICAL, "data": OK}, "CRITICAL"),  # critical whatever it is
        ({"redis": CRITICAL, "exchange_ws": DEGRADED}, "CRITICAL"),
    ],
)
def test_the_roll_up_rows(statuses, expected):
    assert level(statuses) == expected


def test_the_emergency_stop_wins_over_everything_and_the_reasons_name_the_dependencies():
    assert level({n: OK for n in DEPENDENCIES}, emergency=True) == "EMERGENCY"
    assert level({"data": CRITICAL}, emergency=True) == "EMERGENCY"
    rolled = roll_up({"data": Status(CRITICAL, "no bar"), "redis": Status(DEGRADED, "slow")})
    assert rolled == Status("CRITICAL", "data critical: no bar")
    rolled = roll_up({"data": Status(PENDING, "no bar yet"), "trader": Status(OK, "running")})
    assert rolled == Status("HEALTHY", "warming up: data pending: no bar yet")
    assert roll_up({}, True, "manual trip").reason == "emergency stop tripped: manual trip"


# ---- the dependency checks -----------------------------------------------------------------------------
def test_a_connection_is_degraded_at_once_and_critical_after_its_limit_and_ok_when_back():
    check = ConnectionCheck("exchange_ws", critical_after_ns=60 * NS)
    assert check.observe(True, 0).status == OK
    assert check.observe(False, 10 * NS).status == DEGRADED
    assert check.observe(False, 69 * NS).status == DEGRADED  # 59 s down
    critical = check.observe(False, 70 * NS, "closed")
    assert critical == Status(CRITICAL, "exchange_ws disconnected for 60 s (closed) (critical after 60 s)")
    assert check.observe(True, 71 * NS).status == OK
    assert check.observe(False, 72 * NS).status == DEGRADED  # a new outage starts its own clock


def test_the_trader_is_starting_until_it_first_runs_then_critical_when_it_stops():
    check = TraderCheck()
    assert check.observe(False).status == PENDING
    assert check.observe(True).status == OK
    assert check.observe(False) == Status(CRITICAL, "trader not running")


def test_data_freshness_in_bar_intervals_for_the_whole_feed_and_for_some_bar_types():
    five = 300 * NS
    check = FreshnessCheck({"A": five, "B": five}, degraded_bars=1.5, critical_bars=3.0)
    check.start(0)
    assert check.status(five).status == PENDING  # no bar yet, not yet late
    check.on_bar("A", five)
    assert check.status(five).status == PENDING  # B has had none yet
    check.on_bar("B", five)
    assert check.status(2 * five).status == OK  # one interval: the next close
    assert check.status(int(2.5 * five)).status == OK  # 1.5 intervals: not above
    assert check.status(int(2.6 * five)).status == DEGRADED
    assert check.status(4 * five).status == DEGRADED  # 3 intervals: not above
    stale = check.status(4 * five + 1)
    assert stale.status == CRITICAL and "every bar type stale" in stale.reason
    check.on_bar("A", 4 * five)  # A is back, B is still silent: some symbols stale, never critical
    some = check.status(5 * five)
    assert some.status == DEGRADED and some.reason.startswith("1 of 2 bar types stale: B: 1200 s")
    check.on_bar("B", 5 * five)
    assert check.status(5 * five).status == OK


def test_no_bar_at_all_since_start_goes_degraded_then_critical():
    check = FreshnessCheck({"A": 60 * NS}, degraded_bars=1.5, critical_bars=3.0)
    check.start(100 * NS)
    assert check.status(150 * NS).status == PENDING
    assert check.status(200 * NS).status == DEGRADED
    assert "without a bar since start" in check.status(290 * NS).reason
    assert check.status(290 * NS).status == CRITICAL


def test_models_expected_from_the_first_batches_degraded_below_and_critical_at_zero():
    check = ModelsCheck()
    assert check.monitored is False  # no ensemble publishes: not monitored
    check.on_batch("xgb-1,lgbm-1,nhits-1,patch-1")
    assert check.status() == Status(OK, "4 of 4 models voting")
    check.on_batch("xgb-1,lgbm-1,nhits-1")
    assert check.status() == Status(DEGRADED, "3 of 4 models voting")
    check.on_batch("")
    assert check.status().status == CRITICAL
    configured = ModelsCheck(expected=4)
    assert configured.monitored and configured.status().status == PENDING
    configured.on_batch("a,b,c,d,e")  # more than configured: the configured count stays the bar
    assert configured.status().status == OK and configured.expected == 4


def test_order_answers_reject_rate_and_latency():
    check = OrderAnswersCheck(window=8, reject_rate=0.25, min_answers=4, latency_seconds=2.0)
    ids = iter(range(100))

    def answer(rejected: bool, latency_s: float = 0.1):
        order = next(ids)
        check.on_submitted(order, 0)
        assert check.on_answer(order, int(latency_s * NS), rejected)

    answer(True)
    answer(True)
    assert check.status().status == OK  # 2 answers: too few to judge a rate
    answer(False)
    answer(False)
    assert check.status().status == DEGRADED  # 2 of 4 rejected
    for _ in range(4):
        answer(False)
    assert check.status().status == OK  # 2 of 8: not above 25%
    assert not check.on_answer("never-submitted", 0, False)  # a second fill of an order answers nothing
    for _ in range(8):
        answer(False, latency_s=3.0)
    slow = check.status()
    assert slow.status == DEGRADED and "median order latency 3.00 s" in slow.reason


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="health_monitor.data_critical_bars: must be >= data_degraded_bars"):
        HealthMonitor(HealthMonitorConfig(data_degraded_bars=3, data_critical_bars=2))
    with pytest.raises(ValueError, match="health_monitor.check_seconds: must be > 0"):
        HealthMonitor(HealthMonitorConfig(check_seconds=0))
    with pytest.raises(ValueError, match="probe name must be one of"):
        HealthMonitor().attach_probe("kafka", lambda: True)


# ---- a backtest: models drop, data goes stale, the emergency stop trips ------------------------------------
T0 = pd.Timestamp("2025-01-01", tz="UTC")
SYMBOL = "HLTUSDT"
MODEL_BATCHES = {"01:00": "a,b,c,d", "02:00": "a,b,c", "03:00": "a,b,c,d"}  # the count drops, then recovers
ONE_MISSING = (
    60  # bar index (closing 05:05): one bar lost, the next arrives 2 intervals after its predecessor
)
FIVE_MISSING = range(120, 125)  # closing 10:05 to 10:25: five bars lost, the next arrives 6 intervals after


class BatchesConfig(ActorConfig, frozen=True):
    batches: tuple[tuple[str, str], ...] = ()  # (HH:MM on 2025-01-01, model ids)


class Batches(Actor):
    """Publishes a signal batch with the given model ids at each time (just after that close's bars)."""

    def on_start(self) -> None:
        for i, (hhmm, ids) in enumerate(self.config.batches):
            when = T0 + pd.Timedelta(hhmm + ":01")
            self.clock.set_time_alert(f"batch-{i}", when, lambda _e, ids=ids: self._publish(ids))

    def _publish(self, model_ids: str) -> None:
        now = self.clock.timestamp_ns()
        batch = BarCloseSignals(
            ts_event=now,
            ts_init=now,
            instrument_ids=[InstrumentId.from_str(f"{SYMBOL}-PERP.BINANCE")],
            direction=np.array([0], dtype=np.int8),
            confidence=np.array([0.5]),
            prob_up=np.array([0.5]),
            forecast=np.array([0.0]),
            votes={},
            model_ids=model_ids,
            features_hash="",
        )
        self.publish_data(DataType(BarCloseSignals), batch)


def buy_hold_backtest(catalog, actors: list[dict]):
    """BuyHold on `catalog` (no funding) with `actors` beside it."""
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"funding": False},
            "strategies": [{"path": "strategies.buy_hold:BuyHold"}],
            "actors": actors,
            "report": {"tearsheet": False},
        }
    )
    return run_backtest(cfg, progress=False)


@pytest.fixture(scope="module")
def backtest(tmp_path_factory):
    frame = candles(random_walk(200, seed=3))
    frame = frame.drop(index=[ONE_MISSING, *FIVE_MISSING]).reset_index(drop=True)
    catalog = build_catalog(tmp_path_factory.mktemp("health") / "catalog", {SYMBOL: frame}).path
    result = buy_hold_backtest(
        catalog,
        [
            {
                "path": "tests.test_health_monitor:Batches",
                "config": {"batches": list(MODEL_BATCHES.items())},
            },
            # the stop's own feed watch is pushed out of the way: here it is the health event that trips it
            {
                "path": "actors.emergency_stop:EmergencyStop",
                "config": {"risk_profile": {"emergency": {"feed_stale_seconds": 86400}}},
            },
            {"path": "actors.health_monitor:HealthMonitor"},
            {"path": "actors.metrics_exporter:MetricsExporter"},  # no port: its registry only
        ],
    )
    actors = result.engine.trader.actors()
    (monitor,) = [a for a in actors if isinstance(a, HealthMonitor)]
    (ess,) = [a for a in actors if isinstance(a, EmergencyStop)]
    return result, monitor, ess


def published(monitor) -> list[tuple[str, str, str, str]]:
    return [
        (pd.Timestamp(e.ts_event, tz="UTC").strftime("%H:%M"), e.component, e.status, e.level)
        for e in monitor.published
    ]


def test_a_backtest_publishes_each_change_and_the_roll_up_in_simulated_time(backtest):
    _, monitor, _ = backtest
    events = published(monitor)
    assert events[0][1:] == ("system", "ok", "HEALTHY")  # at start: warming up
    assert "warming up" in monitor.published[0].reason
    assert events[1:] == [
        ("00:05", "data", "ok", ""),  # the second bar: the first one is fresh
        ("00:05", "exchange_rest", "ok", ""),  # the simulated venue accepted BuyHold's order
        ("00:05", "system", "ok", "OPTIMAL"),
        ("01:00", "models", "ok", ""),  # 4 models: the expected count
        ("02:00", "models", "degraded", ""),
        ("02:00", "system", "ok", "HEALTHY"),  # one non-core dependency degraded
        ("03:00", "models", "ok", ""),
        ("03:00", "system", "ok", "OPTIMAL"),
        ("05:10", "data", "degraded", ""),  # the bar closing 05:05 is lost: 2 intervals without a bar
        ("05:10", "system", "degraded", "DEGRADED"),
        ("05:15", "data", "ok", ""),
        ("05:15", "system", "ok", "OPTIMAL"),
        ("10:30", "data", "critical", ""),  # 6 intervals without a bar: critical, the stop trips on it
        ("10:30", "system", "critical", "EMERGENCY"),
        ("10:35", "data", "ok", ""),  # the data is back, the stop stays latched
    ]
    assert "3 of 4 models voting" in monitor.published[6].reason
    assert "every bar type stale" in monitor.published[-3].reason
    assert monitor.level.status == "EMERGENCY"
    report = monitor.report()
    assert report["data"].startswith("ok") and report["models"].startswith("ok")
    assert report["exchange_rest"].startswith("ok")  # the simulated venue answered BuyHold's order
    for unseen in ("exchange_ws", "redis", "trader"):  # no probes in a backtest: not monitored, not "ok"
        assert report[unseen] == "not monitored"


def test_the_metrics_exporter_serves_the_roll_up_level_and_each_component(backtest):
    from actors.metrics_exporter import MetricsExporter
    from tests.test_metrics_exporter import parse, value

    result, _, _ = backtest
    (exporter,) = [a for a in result.engine.trader.actors() if isinstance(a, MetricsExporter)]
    metrics = parse(exporter.exposition())
    assert value(metrics, "qt_health_level") == 4  # EMERGENCY
    assert value(metrics, "qt_health_status", component="system") == 2
    assert value(metrics, "qt_health_status", component="data") == 0
    assert value(metrics, "qt_health_status", component="models") == 0


def test_the_critical_event_trips_the_real_emergency_stop_once(backtest):
    result, _, ess = backtest
    assert ess.trips == ["system_health"]  # the EMERGENCY roll-up's critical event did not trip it again
    assert ess.state.reason.startswith("data critical: every bar type stale")
    trip_at = pd.Timestamp(ess.state.ts, tz="UTC")
    assert trip_at == T0 + pd.Timedelta("10:30:00")


def test_the_monitor_changes_no_fill_of_a_backtest(tmp_path):
    frames = {s: candles(random_walk(400, seed=i)) for i, s in enumerate(("AAAUSDT", "BBBUSDT"))}
    catalog = build_catalog(tmp_path / "catalog", frames).path

    def fills(actors):
        cfg = parse_backtest_config(
            {
                "catalog": str(catalog),
                "universe": {"select": "all"},
                "venue": {"slippage_bps": 0, "funding": False},
                "strategies": [
                    {"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": 2, "slow_period": 4}}
                ],
                "actors": actors,
                "report": {"tearsheet": False},
            }
        )
        return fills_of(run_backtest(cfg, progress=False).engine)

    monitored = fills([{"path": "actors.health_monitor:HealthMonitor"}])
    assert monitored == fills([]) != []


# ---- live: `qt live` on the fake exchange ------------------------------------------------------------------
def health_lines(output: str, what: str) -> list[int]:
    """Indexes of the node's log lines that report `what` (e.g. "system OPTIMAL")."""
    return [i for i, line in enumerate(output.splitlines()) if f"Health {what}:" in line]


def wait_lines(session, what: str, count: int, timeout: float = 15) -> None:
    """Until the node has logged `count` health lines of `what`."""
    deadline = time.monotonic() + timeout
    while len(health_lines(session.output(), what)) < count:
        assert session.node.poll() is None, session.output()[-3000:]
        assert time.monotonic() < deadline, f"fewer than {count} {what!r}:\n{session.output()[-3000:]}"
        time.sleep(0.1)


def test_a_live_node_goes_optimal_on_its_first_bars_degraded_when_the_feed_stalls_and_back(tmp_path):
    """The example config's EMA node with the monitor on a fast clock (bars counted as 3 s long, checked every
    0.5 s): every probe attached by the live node is up, the first bars make it OPTIMAL, a feed that goes silent
    (the fake closes no bar) makes the data and the roll-up degraded with no bar to evaluate on (the timer), and
    the next kline brings it back; then every websocket drops and the user stream cannot reconnect for a while:
    exchange_ws degraded until it is back."""
    from tests.fake_session import live_session

    history = 10
    closes = np.concatenate([np.full(history, 100.0), np.full(10, 100.0)])
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(closes)})
    start = T0 + pd.Timedelta(minutes=5 * history)
    config = yaml.safe_load((ROOT / "configs" / "live" / "fake_exchange.yaml").read_text())
    for actor in config["actors"]:
        if "port" in actor.get(
            "config", {}
        ):  # the exporter and the control API: free ports, not the example's
            actor["config"]["port"] = 0
        if actor["path"] == "actors.health_monitor:HealthMonitor":
            actor["config"] |= {"check_seconds": 0.5, "bar_interval_seconds": 3, "data_critical_bars": 100}
    with live_session(tmp_path, tmp_path / "catalog", ["BTCUSDT"], start, config) as session:
        session.wait_until(lambda st: "btcusdt@kline_5m" in st["subscriptions"], "the node subscribed", 30)
        session.step(2)
        session.wait_for("Health system OPTIMAL", timeout=10)
        # the fake closes no bar for a while: the node's feed goes silent
        session.wait_for("Health data degraded", timeout=15)
        session.wait_for("Health system DEGRADED", timeout=5)
        session.step(1)  # the feed resumes with the next bar (contiguous: none closed while it was silent)
        wait_lines(session, "system OPTIMAL", 2)
        # Every websocket dropped, the user stream held down at the fake: the node's websockets are reconnecting
        session.fake.call(_drop_websockets(session.fake.fake, hold_user_stream=True))
        session.wait_for("Health exchange_ws degraded", timeout=10)
        session.fake.call(_release_user_stream(session.fake.fake))
        wait_lines(session, "exchange_ws ok", 2)  # the first one was at start
        wait_lines(session, "system OPTIMAL", 3)
        returncode = session.stop(timeout=30)
        output = session.output()
    assert returncode == 0, output[-3000:]
    lines = output.splitlines()
    first_optimal, again, after_drop = health_lines(output, "system OPTIMAL")[:3]
    (ws_down,) = health_lines(output, "exchange_ws degraded")
    assert again < ws_down < after_drop
    assert [i for i in health_lines(output, "system DEGRADED") if again < i < after_drop]
    degraded = health_lines(output, "system DEGRADED")[0]
    assert first_optimal < degraded < again
    stale = lines[health_lines(output, "data degraded")[0]]
    age = int(re.search(r"freshest \S+: (\d+) s since its last bar", stale).group(1))
    assert age >= 4  # not before 1.5 intervals of 3 s (on the node's clock)
    for probed in ("exchange_rest", "exchange_ws", "trader"):  # the live node's probes, each up
        assert health_lines(output, f"{probed} ok"), probed
    assert not health_lines(output, "redis ok")  # no Redis in this config: not monitored
    assert "not monitored: redis, models" in output  # models: the EMA publishes no signal batches
    assert "[ERROR]" not in output, [line for line in output.splitlines() if "[ERROR]" in line]


async def _drop_websockets(fake, hold_user_stream: bool) -> int:
    if hold_user_stream:
        fake.user.accepting.clear()  # a user stream that reconnects waits until released
    return await fake.drop_websockets()


async def _release_user_stream(fake) -> None:
    fake.user.accepting.set()


# ---- the live node's probes; the bus watch's events ------------------------------------------------------
def live_config(**fields):
    from live.config import parse_live_config
    from tests.conftest import free_port

    port = free_port()
    data = {
        "symbols": ["BTCUSDT"],
        "endpoints": {"http": f"http://127.0.0.1:{port}", "ws": f"ws://127.0.0.1:{port}"},
        "redis": {"enabled": False},
        "strategies": [{"path": "strategies.ema_cross:EmaCross"}],
        "actors": [{"path": "actors.health_monitor:HealthMonitor", "config": {"check_seconds": 5}}],
        "log_level": "WARNING",
    }
    return parse_live_config(data | fields)


@pytest.fixture
def built(monkeypatch):
    """Live nodes built (not started) by a test; disposed after it."""
    from live.node import build_live_node, dispose
    from tests.fake_session import KEYS

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    nodes = []

    def build(cfg):
        live = build_live_node(cfg)
        nodes.append(live.node)
        (monitor,) = [a for a in live.actors if isinstance(a, HealthMonitor)]
        return monitor

    yield build
    for node in nodes:
        dispose(node)


def test_the_live_node_attaches_every_probe_and_a_redis_ping_only_with_redis(built, redis_port):
    without = built(live_config())
    assert set(without._probes) == {"exchange_rest", "exchange_ws", "trader"}
    assert without._probes["trader"]() is False  # built, not started
    assert without._probes["exchange_rest"]() is False  # nothing connected yet
    with_redis = built(
        live_config(
            redis={"enabled": True, "port": redis_port}, message_bus={"streams": False}, trader_id="H-002"
        )
    )
    assert set(with_redis._probes) == {"exchange_rest", "exchange_ws", "trader", "redis"}
    assert with_redis._probes["redis"]() is True  # PONG


def test_the_bus_watch_events_are_the_redis_dependency(tmp_path):
    """The bus watch's `redis_stream` events (live/bus_watch.py) become the `redis` dependency: one non-core
    dependency degraded is HEALTHY; its critical event is the bus watch's own trip, mirrored."""
    catalog = build_catalog(tmp_path / "catalog", {SYMBOL: candles(random_walk(60, seed=1))}).path
    events = [
        {
            "at": "2025-01-01 01:00:30",
            "type": "health",
            "component": "redis_stream",
            "status": "degraded",
            "reason": "slow",
        },
        {"at": "2025-01-01 02:00:30", "type": "health", "component": "redis_stream", "status": "ok"},
        {
            "at": "2025-01-01 03:00:30",
            "type": "health",
            "component": "redis_stream",
            "status": "critical",
            "reason": "silent",
        },
    ]
    result = buy_hold_backtest(
        catalog,
        [
            {"path": "tests.test_emergency_stop:Injector", "config": {"events": events}},
            {"path": "actors.health_monitor:HealthMonitor"},
        ],
    )
    (monitor,) = [a for a in result.engine.trader.actors() if isinstance(a, HealthMonitor)]
    redis_and_system = [e for e in published(monitor) if e[1] in ("redis", "system")]
    assert redis_and_system[-6:] == [
        ("01:00", "redis", "degraded", ""),
        ("01:00", "system", "ok", "HEALTHY"),
        ("02:00", "redis", "ok", ""),
        ("02:00", "system", "ok", "OPTIMAL"),
        ("03:00", "redis", "critical", ""),
        ("03:00", "system", "critical", "CRITICAL"),  # no emergency stop in this run
    ]
    assert monitor.report()["redis"] == "critical: message bus: silent"


def test_a_reset_while_a_dependency_is_still_critical_trips_the_stop_again_and_nothing_loops(tmp_path):
    """Models at 0 are critical: the stop trips. An operator reset while they are still at 0 leaves EMERGENCY for
    CRITICAL, whose event trips the stop again (fail safe: fix the dependency first); the models back, it stays
    latched until the next reset, which then finds everything ok."""
    catalog = build_catalog(tmp_path / "catalog", {SYMBOL: candles(random_walk(72, seed=2))}).path
    batches = {"01:00": "a,b", "02:00": "", "03:00": "a,b"}
    resets = [
        {"at": f"2025-01-01 {hhmm}:30", "type": "command", "action": "reset", "operator": "ops"}
        for hhmm in ("02:30", "04:00")
    ]
    result = buy_hold_backtest(
        catalog,
        [
            {"path": "tests.test_health_monitor:Batches", "config": {"batches": list(batches.items())}},
            {"path": "tests.test_emergency_stop:Injector", "config": {"events": resets}},
            {"path": "actors.emergency_stop:EmergencyStop"},
            {"path": "actors.health_monitor:HealthMonitor"},
        ],
    )
    actors = result.engine.trader.actors()
    (monitor,) = [a for a in actors if isinstance(a, HealthMonitor)]
    (ess,) = [a for a in actors if isinstance(a, EmergencyStop)]
    events = [e for e in published(monitor) if e[0] >= "02:00"]
    assert events == [
        ("02:00", "models", "critical", ""),
        ("02:00", "system", "critical", "EMERGENCY"),
        ("02:30", "system", "critical", "CRITICAL"),  # the reset: models still at 0
        ("02:30", "system", "critical", "EMERGENCY"),  # ... and the stop tripped again
        ("03:00", "models", "ok", ""),
        ("04:00", "system", "ok", "OPTIMAL"),  # the second reset
    ]
    assert ess.trips == ["system_health", "system_health"]
    assert not ess.tripped

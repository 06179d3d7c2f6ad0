"""The live node (`qt live`): how it is built, what it does to Redis before it starts, what reaches the Redis
streams, how paper orders fill, and how a node that cannot reach the exchange reports CRITICAL.

Nothing here talks to Binance: the clients point at loopback ports. Redis is a real redis-server started on
a free port per test (tests/conftest.py `redis_port`).
"""

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
import pytest
import redis
import yaml
from nautilus_trader.adapters.binance.futures.execution import BinanceFuturesExecutionClient
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig, StrategyConfig
from nautilus_trader.live.node import TradingNode
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Price, Quantity
from nautilus_trader.trading.strategy import Strategy

from catalog.instruments import make_instrument
from live.bus_watch import BusWatch, BusWatchConfig, heartbeat_age_seconds
from live.config import parse_live_config
from live.node import (
    EXIT_CRITICAL,
    LiveNode,
    build_live_node,
    clear_execution_state,
    dispose,
    node_config,
    prepare_redis,
    run_live,
)
from live.paper import PaperExecClient
from quantum_trader.config import ConfigError
from quantum_trader.events import BarCloseSignals, Signal
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "BINANCE_FUTURES_TESTNET_API_KEY": "SENTINELKEYxq7",
    "BINANCE_FUTURES_TESTNET_API_SECRET": "SENTINELSECxq7",
    "QT_ADMIN_TOKEN": "SENTINELTOKENq9z",  # configs/live/fake_exchange.yaml runs the control API
}
BTC = InstrumentId.from_str("BTCUSDT-PERP.BINANCE")
ETH = InstrumentId.from_str("ETHUSDT-PERP.BINANCE")
BAR5 = "{}USDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL"


def loopback(port: int) -> dict:
    return {"http": f"http://127.0.0.1:{port}", "ws": f"ws://127.0.0.1:{port}"}


def live_config(port: int | None = None, **fields):
    data = {
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "endpoints": loopback(port or free_port()),
        "redis": {"enabled": False},
        "strategies": [{"path": "strategies.ema_cross:EmaCross"}],
        "timeouts": {"connection": 2, "disconnection": 1, "post_stop": 0.2},
        "log_level": "WARNING",
    }
    return parse_live_config(data | fields)


@pytest.fixture
def keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def disposed():
    """Nodes a test builds; each is disposed after it (closing its event loop)."""
    nodes: list[TradingNode] = []
    yield nodes
    for node in nodes:
        dispose(node)


# ---- the node as built ---------------------------------------------------------------------------------
def test_the_node_builds_binance_clients_on_the_configured_endpoints_without_connecting(keys, disposed):
    port = free_port()
    cfg = live_config(
        port,
        actors=[{"path": "actors.emergency_stop:EmergencyStop"}],
        max_order_rate="100/00:00:10",
    )
    live = build_live_node(cfg)
    disposed.append(live.node)
    node = live.node
    exec_client = next(iter(node.kernel.exec_engine._clients.values()))
    assert isinstance(exec_client, BinanceFuturesExecutionClient)
    assert exec_client._http_client.base_url == f"http://127.0.0.1:{port}"
    data_client = next(iter(node.kernel.data_engine._clients.values()))
    assert data_client._http_client.base_url == f"http://127.0.0.1:{port}"
    config = node_config(cfg)
    for client in (config.data_clients["BINANCE"], config.exec_clients["BINANCE"]):
        assert client.instrument_provider.load_ids == frozenset({BTC, ETH})
        assert client.account_type.value == "USDT_FUTURES" and client.environment.value == "TESTNET"
        assert client.api_key is None and getattr(client, "api_secret", None) is None  # keys stay in the env
    assert config.exec_clients["BINANCE"].futures_leverages == {"BTCUSDT": 5, "ETHUSDT": 5}
    assert [str(c) for c in config.data_engine.external_clients] == ["SIGNALS"]
    assert not node.trader.is_running and not node.kernel.is_running()  # built, never started


def test_every_strategy_runs_netting_and_claims_its_own_instruments(keys, disposed):
    cfg = live_config(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        strategies=[
            {"path": "strategies.ema_cross:EmaCross", "config": {"bar_types": [BAR5.format("BTC"), BAR5.format("SOL")]}},
            {"path": "strategies.ema_cross:EmaCross", "config": {"bar_types": [BAR5.format("ETH")]}},
        ],
    )  # fmt: skip
    live = build_live_node(cfg)
    disposed.append(live.node)
    strategies = live.node.trader.strategies()
    assert [str(s.id) for s in strategies] == ["EmaCross-000", "EmaCross-001"]
    assert all(s.config.oms_type == "NETTING" and s.oms_type.name == "NETTING" for s in strategies)
    assert strategies[0].external_order_claims == [BTC, InstrumentId.from_str("SOLUSDT-PERP.BINANCE")]
    assert strategies[1].external_order_claims == [ETH]


def test_a_strategy_without_its_own_bar_types_claims_every_symbol(keys, disposed):
    live = build_live_node(live_config())
    disposed.append(live.node)
    assert live.strategies[0].external_order_claims == [BTC, ETH]


def test_two_strategies_on_one_symbol_are_refused(keys):
    # One-way mode: one position per symbol at the venue; Nautilus lets one strategy claim an instrument.
    cfg = live_config(strategies=[{"path": "strategies.ema_cross:EmaCross"}] * 2)
    with pytest.raises(
        ConfigError, match=r"strategies\[1\]: BTCUSDT-PERP.BINANCE is already traded by strategies\[0\]"
    ):
        build_live_node(cfg)


def test_the_risk_engine_is_bound_to_every_component_that_asks_for_it(keys, disposed):
    cfg = live_config(actors=[{"path": "actors.emergency_stop:EmergencyStop"}], max_order_rate="100/00:00:10")
    live = build_live_node(cfg)
    disposed.append(live.node)
    ess = live.actors[0]
    assert ess._risk_engine is live.node.kernel.risk_engine
    assert live.strategies[0].order_budget.limit == 100  # read from the node's RiskEngine


def test_a_strategy_configured_with_another_oms_is_refused_by_field(keys):
    cfg = live_config(
        strategies=[{"path": "strategies.ema_cross:EmaCross", "config": {"oms_type": "HEDGING"}}]
    )
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.config\.oms_type.*allowed: NETTING"):
        build_live_node(cfg)


def test_a_node_with_no_usable_model_refuses_to_start_before_anything_connects(keys, tmp_path):
    cfg = live_config(
        models=str(tmp_path / "empty-registry"),
        strategies=[{"path": "strategies.ensemble:EnsembleStrategy"}],
    )
    with pytest.raises(RuntimeError, match="no usable model, refusing to start"):
        build_live_node(cfg)


def test_a_missing_key_stops_the_build_with_the_variable_name(monkeypatch):
    monkeypatch.delenv("BINANCE_FUTURES_TESTNET_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="^BINANCE_FUTURES_TESTNET_API_KEY is not set"):
        build_live_node(live_config())


# ---- Redis before start --------------------------------------------------------------------------------
def test_redis_preparation_deletes_only_this_traders_orders_positions_and_index(redis_port):
    r = redis.Redis(port=redis_port)
    mine = {
        "trader-QT-001:orders:O-1": "x",
        "trader-QT-001:positions:P-1": "x",
        "trader-QT-001:index:order_position": "x",
    }
    kept = {
        "trader-QT-001:general:qt.emergency_stop": "tripped",
        "trader-QT-001:accounts:BINANCE-001": "x",
        "trader-QT-001:instruments:BTCUSDT-PERP.BINANCE": "x",
        "trader-QT-002:orders:O-9": "other trader",
        "trader-QT-002:index:order_position": "other trader",
        "unrelated": "x",
    }
    for key, value in (mine | kept).items():
        r.set(key, value)
    r.xadd("trader-QT-001:stream:data.Signal*", {"payload": "kept"})
    cfg = live_config(redis={"port": redis_port}, trader_id="QT-001")
    assert prepare_redis(cfg) == 3
    left = {k.decode() for k in r.keys("*")}
    assert left == set(kept) | {"trader-QT-001:stream:data.Signal*"}
    assert clear_execution_state(r, "QT-001") == 0  # idempotent


def test_redis_down_at_start_is_a_critical_start_error_naming_host_and_port():
    from live.node import LiveStartError

    port = free_port()
    with pytest.raises(LiveStartError, match=f"Redis at 127.0.0.1:{port} is not reachable"):
        prepare_redis(live_config(redis={"port": port, "timeout_seconds": 1}))


# ---- the message bus in Redis --------------------------------------------------------------------------
class PublisherConfig(ActorConfig, frozen=True):
    pass


class Publisher(Actor):
    """Publishes one Signal and one BarCloseSignals batch when it starts, as the EnsembleStrategy does."""

    def on_start(self) -> None:
        from nautilus_trader.model.data import DataType

        now = self.clock.timestamp_ns()
        self.publish_data(
            DataType(Signal),
            Signal(instrument_id=BTC, direction="LONG", confidence=0.8, ts_event=now, ts_init=now),
        )
        batch = BarCloseSignals(
            now, now, [BTC], np.array([1], dtype=np.int8), np.array([0.8]), np.array([0.6]),
            np.array([0.001]), {"xgboost": np.array([np.nan])}, "m-1", "h",
        )  # fmt: skip
        self.publish_data(DataType(BarCloseSignals), batch)


def _clientless_node(cfg, actors) -> LiveNode:
    """The node `build_live_node` makes, less its Binance clients (nothing to connect to here), so it starts."""
    from quantum_trader.events import register_bus_types

    register_bus_types()  # what build_live_node does before the node exists
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    config = msgspec.structs.replace(node_config(cfg), data_clients={}, exec_clients={})
    node = TradingNode(config=config, loop=loop)
    for actor in actors:
        node.trader.add_actor(actor)
    return LiveNode(cfg, node, [], actors, None)


def test_signals_and_bar_close_batches_reach_redis_streams_with_a_heartbeat(redis_port, disposed):
    cfg = live_config(redis={"port": redis_port}, trader_id="BUS-001", message_bus={"heartbeat_seconds": 1})
    watch_config = {"host": "127.0.0.1", "port": redis_port, "heartbeat_seconds": 1, "check_seconds": 1.5}
    watch = BusWatch(BusWatchConfig(trader_id="BUS-001", component_id="Watch-ok", **watch_config))
    silent = BusWatch(BusWatchConfig(trader_id="SILENT-001", component_id="Watch-silent", **watch_config))
    live = _clientless_node(cfg, [Publisher(PublisherConfig()), watch, silent])
    disposed.append(live.node)
    code = live.node.get_event_loop().run_until_complete(run_live(live, duration=3.2, report=lambda _: None))
    assert code == 0
    r = redis.Redis(port=redis_port)
    streams = {k.decode() for k in r.keys("trader-BUS-001:stream:*")}
    assert "trader-BUS-001:stream:data.Signal*" in streams
    assert "trader-BUS-001:stream:data.BarCloseSignals*" in streams
    assert "trader-BUS-001:stream:health:heartbeat" in streams
    payload = r.xrange("trader-BUS-001:stream:data.BarCloseSignals*")[0][1][b"payload"]
    assert b'"instrument_ids":["BTCUSDT-PERP.BINANCE"]' in payload and b'"xgboost":[null]' in payload
    assert heartbeat_age_seconds(r, "BUS-001") < 2.0
    assert watch.status == "ok"  # heartbeats arrive
    assert silent.status == "critical" and "no heartbeat" in silent.last_reason  # a silent bus is caught


# ---- paper trading -------------------------------------------------------------------------------------
class BuyOnBarConfig(StrategyConfig, frozen=True):
    instrument_id: str = "BTCUSDT-PERP.BINANCE"


class BuyOnBar(Strategy):
    """Buys 0.01 at the first bar, in on_bar, as our strategies act on a bar close."""

    def __init__(self, config):
        super().__init__(config)
        self.bought = False

    def on_start(self) -> None:
        from nautilus_trader.model.data import BarType

        self.msgbus.subscribe(f"data.bars.{BarType.from_str(BAR)}", self.on_bar)

    def on_bar(self, bar: Bar) -> None:
        if not self.bought:
            self.bought = True
            iid = InstrumentId.from_str(self.config.instrument_id)
            self.submit_order(self.order_factory.market(iid, OrderSide.BUY, Quantity.from_str("0.010")))


BAR = "BTCUSDT-PERP.BINANCE-1-MINUTE-LAST-EXTERNAL"


def test_paper_orders_fill_at_the_close_of_the_bar_they_were_sent_on(disposed):
    from nautilus_trader.model.data import BarType

    cfg = live_config(paper=True, symbols=["BTCUSDT"], interval="1m", leverage={"default": 3})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    config = msgspec.structs.replace(node_config(cfg), data_clients={})  # bars are fed below instead
    node = TradingNode(config=config, loop=loop)
    disposed.append(node)
    from live.paper import PaperExecClientFactory

    node.add_exec_client_factory("BINANCE", PaperExecClientFactory)
    strategy = BuyOnBar(BuyOnBarConfig(oms_type="NETTING"))
    node.trader.add_strategy(strategy)
    node.build()
    node.kernel.cache.add_instrument(make_instrument("BTCUSDT", 1, 3))
    assert isinstance(next(iter(node.kernel.exec_engine._clients.values())), PaperExecClient)

    def bar(close: str, ts: int) -> Bar:
        o = Price.from_str("100000.0")
        c = Price.from_str(close)
        return Bar(BarType.from_str(BAR), o, max(o, c), min(o, c), c, Quantity.from_str("5.000"), ts, ts)

    async def scenario():
        await node.kernel.start_async()
        assert node.trader.is_running
        now = node.kernel.clock.timestamp_ns()
        node.kernel.data_engine.process(bar("100100.0", now))
        await asyncio.sleep(0.3)
        await node.stop_async()

    loop.run_until_complete(scenario())
    fills = [e for o in node.kernel.cache.orders() for e in o.events if type(e).__name__ == "OrderFilled"]
    assert len(fills) == 1 and fills[0].last_px == Price.from_str("100100.0")
    account = node.kernel.cache.account_for_venue(BTC.venue)
    assert account.balance_total(USDT).as_decimal() < Decimal("10000")  # the taker fee was charged
    assert account.leverage(BTC) in (None, Decimal(3)) and account.default_leverage == Decimal(3)


# ---- health at start, through the command line ---------------------------------------------------------
def test_a_refused_exchange_connection_is_critical_and_exits_non_zero_without_leaking_keys(
    tmp_path, redis_port
):
    closed = free_port()
    config = {
        "name": "closed",
        "trader_id": "HEALTH-001",
        "symbols": ["BTCUSDT"],
        "endpoints": loopback(closed),
        "redis": {"port": redis_port},
        "message_bus": {"heartbeat_seconds": 1},
        "timeouts": {"connection": 2, "disconnection": 1, "post_stop": 0.2},
        "log_directory": str(tmp_path / "logs"),
        "strategies": [{"path": "strategies.ema_cross:EmaCross"}],
    }
    path = tmp_path / "closed.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | KEYS | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "live", str(path), "--duration", "5"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == EXIT_CRITICAL, done.stderr[-2000:]
    critical = [line for line in done.stderr.splitlines() if line.startswith("CRITICAL")]
    assert len(critical) == 1 and "the trader did not start" in critical[0]
    assert "Connection refused" in done.stdout + done.stderr  # the cause is in the log above it
    # The keys were in the process' environment; they appear in no output, log file or Redis entry.
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*"))
    assert logs and "Timed out" in logs
    r = redis.Redis(port=redis_port)
    stored = [k.decode() for k in r.keys("*")]
    assert any(k.startswith("trader-HEALTH-001:") for k in stored)  # the node did write to Redis
    for key in stored:
        kind = r.type(key).decode()
        dumped = (
            str(r.xrange(key))
            if kind == "stream"
            else str(r.hgetall(key))
            if kind == "hash"
            else str(r.dump(key))
        )
        assert "SENTINEL" not in key + dumped
    for text in (done.stdout, done.stderr, logs):
        assert "SENTINEL" not in text


# ---- end to end: `qt live` against the local fake exchange ---------------------------------------------
def test_qt_live_trades_on_the_fake_exchange_and_flattens_on_sigint(tmp_path):
    """`qt live configs/live/fake_exchange.yaml` (only the port changed) against `live/fake_exchange`: the EMA
    cross trades on the fake's closing klines, and SIGINT closes the position there before a clean exit."""
    import signal
    import time

    import pandas as pd

    from live.fake_exchange.server import FakeBinance
    from tests.conftest import build_catalog, candles

    history = 10
    closes = np.concatenate([np.full(history, 100.0), np.linspace(100.0, 110.0, 10)])
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(np.round(closes, 4))})
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * history)
    config = yaml.safe_load((ROOT / "configs" / "live" / "fake_exchange.yaml").read_text())
    with FakeBinance(tmp_path / "catalog", ["BTCUSDT"], start=start).start_in_thread() as fake:
        config["endpoints"] = {"http": fake.fake.http_url, "ws": fake.fake.ws_url}
        for actor in config.get(
            "actors", []
        ):  # the exporter and the control API: free ports, not 9464 / 8080
            if "port" in actor.get("config", {}):
                actor["config"]["port"] = 0
        path = tmp_path / "fake_exchange.yaml"
        path.write_text(yaml.safe_dump(config))
        env = os.environ | KEYS | {"PYTHONPATH": str(ROOT)}
        node = subprocess.Popen(
            [sys.executable, "-m", "quantum_trader.cli", "live", str(path), "--duration", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "btcusdt@kline_5m" not in fake.state()["subscriptions"]:
                assert node.poll() is None and time.monotonic() < deadline, "the node never subscribed"
                time.sleep(0.1)
            for _ in range(8):  # EmaCross(2, 4) is ready after 4 bars and goes long on the rise
                fake.step()
                time.sleep(0.3)
            deadline = time.monotonic() + 10
            while not fake.state()["positions"]:
                assert time.monotonic() < deadline, "no position at the fake"
                time.sleep(0.1)
            opened = fake.state()
            node.send_signal(signal.SIGINT)
            output, _ = node.communicate(timeout=30)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
        closed = fake.state()
    assert node.returncode == 0, output[-3000:]
    assert "RUNNING fake_exchange" in output
    assert float(opened["positions"]["BTCUSDT"]["positionAmt"]) > 0  # the order reached the fake and filled
    assert len(closed["fills"]) >= 2 and not closed["positions"], output[-3000:]  # flattened on SIGINT
    assert "SENTINEL" not in output
    assert "[ERROR]" not in output, [line for line in output.splitlines() if "[ERROR]" in line]

"""The live node: a Nautilus `TradingNode` on Binance USDT-M futures, built from a `LiveConfig`.

Order of work in `build_live_node` (each step is a fact of Nautilus 1.231, see /work/shared/NAUTILUS_NOTES.md):

1. Gates: `environment: live` (Binance mainnet) needs `--mainnet` as well, and `--mainnet` needs
   `environment: live`. Keys come only from the environment (HMAC), checked up front so a missing one is a
   one-line error naming the variable; their values are never put in the node config (the Binance factory
   reads the same variables itself), so they cannot reach a log line or Redis through it.
2. `quantum_trader.events.register_bus_types()` before the node exists: the MessageBus copies its set of
   publishable types when it is constructed, so a type registered later never reaches a Redis stream.
3. The strategies and actors are built here, before the node (their models load in their constructors), so
   a node with no usable model refuses to start (EnsembleError) before anything connects. Every strategy
   gets `oms_type="NETTING"` (the Binance client declares HEDGING and would give live positions other ids
   than the backtest's) and `external_order_claims` = its instruments, so positions reconciled from the
   venue are owned by it.
4. Redis: delete this trader's `orders:*`, `positions:*` and `index:*` keys, keep `general:*` (the emergency
   stop's latched state): a warm restart on cached orders and positions double-enters (issue #4736); the
   venue's state is reconciled instead.
5. `TradingNode` with the Binance data client (no keys) and the Binance exec client, or the paper client
   (live/paper.py); `BinanceInstrumentProviderConfig(load_ids=...)` on both (each client has its own provider;
   without load_ids nothing loads); the risk engine is bound to every component with `bind_risk_engine`.
   The exec client is Nautilus' own with one reconciliation bug worked around (live/binance_fixes.py: fills
   counted twice flattened a running node's position after every user-stream reconnect).
6. Every HealthMonitor actor gets its probes (`attach_health_probes`): the exec engine's connection, the Binance
   websockets, the strategies running, and a Redis PING when Redis is enabled.

`run_live` starts the node and checks it: the kernel returns from `start_async` WITHOUT starting the trader
when a client fails to connect or reconciliation fails (the process would keep running and exit 0 with no
strategy running), so `node.trader.is_running` is checked and a CRITICAL line ends the run with exit code
3. SIGINT / SIGTERM stop it gracefully: optionally flatten (each strategy's `market_exit`: cancel its orders,
close its positions, bounded by `timeouts.flatten`), then `stop_async`, then `dispose`.
"""

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import yaml
from nautilus_trader.adapters.binance import (
    BINANCE,
    BinanceAccountType,
    BinanceDataClientConfig,
    BinanceExecClientConfig,
    BinanceInstrumentProviderConfig,
    BinanceLiveDataClientFactory,
)
from nautilus_trader.adapters.binance.common.credentials import is_ed25519_private_key
from nautilus_trader.adapters.binance.common.enums import BinanceEnvironment
from nautilus_trader.adapters.binance.common.symbol import BinanceSymbol
from nautilus_trader.adapters.sandbox.config import SandboxExecutionClientConfig
from nautilus_trader.common.component import flush_logger
from nautilus_trader.config import (
    CacheConfig,
    DatabaseConfig,
    LiveDataEngineConfig,
    LiveExecEngineConfig,
    LiveRiskEngineConfig,
    LoggingConfig,
    MessageBusConfig,
    TradingNodeConfig,
)
from nautilus_trader.live.node import TradingNode
from nautilus_trader.model.data import BarType
from nautilus_trader.model.identifiers import ClientId, InstrumentId

from actors.health_monitor import HealthMonitor
from catalog.instruments import instrument_id
from catalog.store import bar_type_for
from live.binance_fixes import QTBinanceLiveExecClientFactory
from live.bus_watch import BusWatch, BusWatchConfig
from live.config import LiveConfig
from live.paper import PaperExecClientFactory
from live.record import SessionRecorder, SessionRecorderConfig
from quantum_trader.components import bind_risk_engine, bind_strategies, build_components
from quantum_trader.config import ConfigError
from quantum_trader.events import register_bus_types

EXIT_OK = 0
EXIT_CRITICAL = 3
SIGNALS_CLIENT = ClientId("SIGNALS")
ENVIRONMENTS = {
    "testnet": BinanceEnvironment.TESTNET,
    "demo": BinanceEnvironment.DEMO,
    "live": BinanceEnvironment.LIVE,
}
KEY_VARIABLES = {
    "testnet": ("BINANCE_FUTURES_TESTNET_API_KEY", "BINANCE_FUTURES_TESTNET_API_SECRET"),
    "demo": ("BINANCE_DEMO_API_KEY", "BINANCE_DEMO_API_SECRET"),
    "live": ("BINANCE_API_KEY", "BINANCE_API_SECRET"),
}
EXECUTION_STATE_KEYS = ("orders", "positions", "index")  # deleted before start; general:* is kept


class LiveStartError(RuntimeError):
    """A dependency the node needs at start is not there (e.g. Redis down): a CRITICAL health failure."""


# ---- gates ---------------------------------------------------------------------------------------------
def check_mainnet(cfg: LiveConfig, mainnet: bool) -> None:
    """Mainnet only when the config says `environment: live` AND the command line says `--mainnet`."""
    if mainnet and cfg.environment != "live":
        raise ConfigError(
            f"--mainnet needs `environment: live` in the config (it says {cfg.environment!r}); "
            "allowed without --mainnet: testnet, demo"
        )
    if cfg.environment == "live" and not mainnet:
        raise ConfigError(
            "environment: live trades real money on Binance mainnet; pass --mainnet as well to confirm "
            "(or use environment: testnet or demo)"
        )


def check_keys(cfg: LiveConfig, environ=os.environ) -> None:
    """The exec client's HMAC key and secret must be in the environment; paper trading needs none."""
    if cfg.paper:
        return
    for var in KEY_VARIABLES[cfg.environment]:
        if not environ.get(var):
            raise ConfigError(
                f"{var} is not set: the {cfg.environment} exec client reads its API key and secret only from "
                f"the environment ({' and '.join(KEY_VARIABLES[cfg.environment])})"
            )
    secret_var = KEY_VARIABLES[cfg.environment][1]
    secret = environ[secret_var]
    if "-----BEGIN" in secret or is_ed25519_private_key(secret):
        raise ConfigError(
            f"{secret_var} holds a PEM / Ed25519 key; the live node uses HMAC keys only (an HMAC secret is a "
            "plain string)"
        )


# ---- the node config -----------------------------------------------------------------------------------
def bar_types(cfg: LiveConfig) -> list[BarType]:
    return [bar_type_for(instrument_id(sym), cfg.interval) for sym in cfg.symbols]


def instrument_ids(cfg: LiveConfig) -> list[InstrumentId]:
    return [instrument_id(sym) for sym in cfg.symbols]


def _database(cfg: LiveConfig) -> DatabaseConfig:
    r = cfg.redis
    password = None
    if r.password_env:
        password = os.environ.get(r.password_env)
        if password is None:
            raise ConfigError(f"redis.password_env: the environment variable {r.password_env} is not set")
    return DatabaseConfig(
        type="redis",
        host=r.host,
        port=r.port,
        username=r.username,
        password=password,
        ssl=r.ssl,
        connection_timeout=r.timeout_seconds,
        response_timeout=r.timeout_seconds,
    )


def node_config(cfg: LiveConfig) -> TradingNodeConfig:
    environment = ENVIRONMENTS[cfg.environment]
    ids = frozenset(instrument_ids(cfg))
    ep = cfg.endpoints
    data_client = BinanceDataClientConfig(
        account_type=BinanceAccountType.USDT_FUTURES,
        environment=environment,
        base_url_http=ep.http if ep else None,
        base_url_ws=ep.ws if ep else None,
        instrument_provider=BinanceInstrumentProviderConfig(load_ids=ids),
    )
    if cfg.paper:
        exec_client = SandboxExecutionClientConfig(
            venue=BINANCE,
            starting_balances=[f"{cfg.paper_account.starting_balance} USDT"],
            oms_type="NETTING",
            account_type="MARGIN",
            default_leverage=Decimal(cfg.leverage.default),
            leverages={str(instrument_id(s)): float(x) for s, x in cfg.leverage.per_symbol.items()},
        )
    else:
        exec_client = BinanceExecClientConfig(  # no api_key/api_secret: the factory reads the environment
            account_type=BinanceAccountType.USDT_FUTURES,
            environment=environment,
            base_url_http=ep.http if ep else None,
            base_url_ws_stream=(ep.ws_user or ep.ws) if ep else None,
            futures_leverages={
                BinanceSymbol(s): cfg.leverage.per_symbol.get(s, cfg.leverage.default) for s in cfg.symbols
            },
            use_reduce_only=True,  # one-way mode: the client refuses to connect to a hedge-mode account
            # Nautilus retries nothing by default (max_retries=None); see RetriesConfig for what it retries
            max_retries=cfg.retries.max_retries or None,
            retry_delay_initial_ms=cfg.retries.delay_initial_ms,
            retry_delay_max_ms=cfg.retries.delay_max_ms,
            instrument_provider=BinanceInstrumentProviderConfig(load_ids=ids),
        )
    rc, t = cfg.reconciliation, cfg.timeouts
    database = _database(cfg) if cfg.redis.enabled else None
    logging = LoggingConfig(
        log_level=cfg.log_level,
        log_directory=cfg.log_directory,
        log_level_file=cfg.log_level if cfg.log_directory else None,
        log_file_name=f"{cfg.name}" if cfg.log_directory else None,
        log_file_format="JSON" if cfg.log_format == "json" else None,
        log_colors=False,
    )
    return TradingNodeConfig(
        trader_id=cfg.trader_id,
        logging=logging,
        cache=CacheConfig(database=database) if database else None,
        message_bus=(
            MessageBusConfig(
                database=database,
                encoding=cfg.message_bus.encoding,
                stream_per_topic=True,
                heartbeat_interval_secs=cfg.message_bus.heartbeat_seconds,
                autotrim_mins=cfg.message_bus.autotrim_mins,
            )
            if cfg.streams_enabled
            else None
        ),
        data_engine=LiveDataEngineConfig(external_clients=[SIGNALS_CLIENT]),
        risk_engine=LiveRiskEngineConfig(max_order_submit_rate=cfg.max_order_rate),
        exec_engine=LiveExecEngineConfig(
            reconciliation=rc.enabled,
            reconciliation_lookback_mins=rc.lookback_mins,
            reconciliation_startup_delay_secs=rc.startup_delay_secs,
            open_check_interval_secs=rc.open_check_interval_secs,
            position_check_interval_secs=rc.position_check_interval_secs,
        ),
        data_clients={BINANCE: data_client},
        exec_clients={BINANCE: exec_client},
        timeout_connection=t.connection,
        timeout_reconciliation=t.reconciliation,
        timeout_portfolio=t.portfolio,
        timeout_disconnection=t.disconnection,
        timeout_post_stop=t.post_stop,
    )


# ---- components ----------------------------------------------------------------------------------------
def live_injections(cfg: LiveConfig) -> dict:
    """What the node gives every component that has the field, besides its bar types (`qt parity` gives the
    same to the backtest that replays a recorded session)."""
    injected = {
        "warmup_bars": cfg.warmup_bars,
        # Binance liquidates a position itself; the backtest's guard stop stands in for that venue behaviour
        # and has no place on a real exchange (it would only cost orders).
        "liquidation_guard": False,
    } | cfg.profile_injections()
    if cfg.models is not None:
        injected["registry"] = cfg.models
    return injected


def build_live_components(cfg: LiveConfig) -> tuple[list, list]:
    """The configured strategies and actors, as a backtest builds them, plus the live OMS and order claims."""
    injected = {"bar_types": tuple(str(bt) for bt in bar_types(cfg))} | live_injections(cfg)

    claimed: dict[InstrumentId, str] = {}

    def live_oms(config, where: str):
        if config.oms_type not in (None, "NETTING"):
            raise ConfigError(
                f"{where}.config.oms_type: the live node runs every strategy with oms_type NETTING "
                f"(got {config.oms_type!r}); allowed: NETTING, or leave it out"
            )
        own = getattr(config, "bar_types", None) or injected["bar_types"]
        claims = sorted({BarType.from_str(b).instrument_id for b in own}, key=str)
        for iid in claims:
            if iid in claimed:
                raise ConfigError(
                    f"{where}: {iid} is already traded by {claimed[iid]}; on a one-way Binance account a symbol "
                    "has one position, and Nautilus lets one strategy claim it: give each strategy its own "
                    "symbols (config.bar_types)"
                )
            claimed[iid] = where
        return msgspec.structs.replace(config, oms_type="NETTING", external_order_claims=claims)

    return build_components(cfg.strategies, cfg.actors, injected, finish_strategy_config=live_oms)


# ---- Redis ---------------------------------------------------------------------------------------------
def redis_client(cfg: LiveConfig):
    import redis

    r = cfg.redis
    return redis.Redis(
        host=r.host,
        port=r.port,
        username=r.username,
        password=os.environ.get(r.password_env) if r.password_env else None,
        ssl=r.ssl,
        socket_timeout=r.timeout_seconds,
        socket_connect_timeout=r.timeout_seconds,
    )


def clear_execution_state(client, trader_id: str) -> int:
    """Delete `trader-<id>:orders:*`, `:positions:*` and `:index:*`; keep everything else. Returns the count."""
    deleted = 0
    for kind in EXECUTION_STATE_KEYS:
        batch = []
        for key in client.scan_iter(match=f"trader-{trader_id}:{kind}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    return deleted


def prepare_redis(cfg: LiveConfig) -> int:
    import redis

    client = redis_client(cfg)
    try:
        client.ping()
        return clear_execution_state(client, cfg.trader_id) if cfg.redis.clear_execution_state else 0
    except redis.RedisError as err:
        raise LiveStartError(
            f"Redis at {cfg.redis.host}:{cfg.redis.port} is not reachable ({type(err).__name__}: {err}); "
            "start it, or set `redis: {enabled: false}`"
        ) from None
    finally:
        client.close()


# ---- build and run -------------------------------------------------------------------------------------
@dataclass
class LiveNode:
    cfg: LiveConfig
    node: TradingNode
    strategies: list
    actors: list
    bus_watch: BusWatch | None
    cleared_keys: int = 0
    notes: list[str] = field(default_factory=list)
    recorder: SessionRecorder | None = None


def start_recording(cfg: LiveConfig, now: datetime | None = None) -> SessionRecorder:
    """A new run folder under `cfg.record` holding the config (paths made absolute, so `qt parity` can run
    from anywhere) and the recorder that fills it (live/record.py)."""
    now = now or datetime.now(UTC)
    base = Path(cfg.record) / f"{cfg.name}-{now:%Y%m%d-%H%M%S}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    data = cfg.model_dump(mode="json", exclude_defaults=False)
    if cfg.models is not None:
        data["models"] = str(Path(cfg.models).resolve())
    for name in ("exit_profile", "risk_profile"):
        value = data.get(name)
        if value and ("/" in value or value.endswith((".yaml", ".yml"))):
            data[name] = str(Path(value).resolve())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return SessionRecorder(
        SessionRecorderConfig(run_dir=str(run_dir), bar_types=tuple(str(bt) for bt in bar_types(cfg)))
    )


def build_live_node(cfg: LiveConfig, mainnet: bool = False, loop=None, environ=os.environ) -> LiveNode:
    check_mainnet(cfg, mainnet)
    check_keys(cfg, environ)
    register_bus_types()
    strategies, actors = build_live_components(cfg)
    cleared = prepare_redis(cfg) if cfg.redis.enabled else 0
    bus_watch = None
    if cfg.streams_enabled:
        r = cfg.redis
        bus_watch = BusWatch(
            BusWatchConfig(
                trader_id=cfg.trader_id,
                host=r.host,
                port=r.port,
                username=r.username,
                password_env=r.password_env,
                ssl=r.ssl,
                heartbeat_seconds=cfg.message_bus.heartbeat_seconds,
                silent_status=cfg.message_bus.silent_bus_status,
            )
        )
    recorder = start_recording(cfg) if cfg.record else None
    config = node_config(cfg)
    if loop is None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    node = TradingNode(config=config, loop=loop)
    # the recorder first: actors start before strategies, so it listens before any history arrives
    for actor in [*([recorder] if recorder else []), *actors, *([bus_watch] if bus_watch else [])]:
        node.trader.add_actor(actor)
    for strategy in strategies:
        node.trader.add_strategy(strategy)
    node.add_data_client_factory(BINANCE, BinanceLiveDataClientFactory)
    node.add_exec_client_factory(
        BINANCE, PaperExecClientFactory if cfg.paper else QTBinanceLiveExecClientFactory
    )
    node.build()
    bind_risk_engine([*actors, *strategies], node.kernel.risk_engine)
    for monitor in (a for a in actors if isinstance(a, HealthMonitor)):
        attach_health_probes(monitor, cfg, node, strategies)
    bind_strategies(actors, strategies)
    return LiveNode(cfg, node, strategies, actors, bus_watch, cleared, recorder=recorder)


# ---- health probes -------------------------------------------------------------------------------------
def attach_health_probes(
    monitor: HealthMonitor, cfg: LiveConfig, node: TradingNode, strategies: list
) -> None:
    """What an actor cannot see from the bus (actors/health_monitor.py): the exchange connections, the
    strategies' state and Redis. Each probe runs on the node's thread."""
    kernel = node.kernel
    monitor.attach_probe("exchange_rest", kernel.exec_engine.check_connected)
    monitor.attach_probe("exchange_ws", lambda: websockets_up(kernel))
    monitor.attach_probe("trader", lambda: all(s.is_running for s in strategies))
    if cfg.redis.enabled:
        client = redis_client(cfg)  # a PING blocks the node's thread for at most redis.timeout_seconds
        monitor.attach_probe("redis", client.ping)


def websockets_up(kernel) -> bool:
    """The data clients say connected and every websocket of the Binance clients (market data, user data) is
    up. A dropped socket still reads `is_active()` while its client reconnects it (1.231), hence
    `is_reconnecting()` as well."""
    sockets = node_websockets(kernel)
    return kernel.data_engine.check_connected() and all(
        ws.is_active() and not ws.is_reconnecting() for ws in sockets
    )


def node_websockets(kernel) -> list:
    """The Rust websocket clients held by the node's data and exec clients. These are private attributes of the
    1.231 Binance adapter (`_ws_client` / `_ws_public_client`, holding `_clients`, `_client` or
    `_stream_client`); a client
    without them has no websocket to check."""
    sockets = []
    for client in [*kernel.data_engine._clients.values(), *kernel.exec_engine._clients.values()]:
        for attr in ("_ws_client", "_ws_public_client"):
            ws = getattr(client, attr, None)
            inner = getattr(ws, "_clients", None)
            if isinstance(inner, dict):
                sockets += [s for s in inner.values() if s is not None]
            for name in ("_client", "_stream_client"):  # the user stream: WS API, or REST listen-key mode
                single = getattr(ws, name, None)
                if single is not None and hasattr(single, "is_active"):
                    sockets.append(single)
    return sockets


async def run_live(live: LiveNode, duration: float | None = None, report=print) -> int:
    """Start, check, run until SIGINT / SIGTERM or `duration` seconds, stop. Returns the exit code."""
    node, loop = live.node, asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await node.kernel.start_async()
        except (
            Exception
        ) as err:  # a component's on_start raised (e.g. a port taken): Nautilus logged it above
            report(f"CRITICAL: the trader did not start: {type(err).__name__}: {err}")
            await node.stop_async()
            return EXIT_CRITICAL
        if not node.trader.is_running:
            report(
                f"CRITICAL: the trader did not start (a client failed to connect or reconciliation failed: "
                f"exec connected={node.kernel.exec_engine.check_connected()}, "
                f"data connected={node.kernel.data_engine.check_connected()}); see the log above"
            )
            await node.stop_async()
            return EXIT_CRITICAL
        if not await startup_flat_check(live, report):
            await node.stop_async()
            return EXIT_CRITICAL
        if live.recorder is not None:
            report(f"RECORDING to {live.recorder.run_dir} (qt parity {live.recorder.run_dir})")
        report(
            f"RUNNING {live.cfg.name}: trader {live.cfg.trader_id}, {live.cfg.environment}"
            f"{' paper' if live.cfg.paper else ''}, {len(live.strategies)} strategies, "
            f"{len(live.cfg.symbols)} symbols"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
        if live.recorder is not None:
            live.recorder.mark_stopping()
        if live.cfg.flatten_on_stop:
            await flatten(live)
        await node.stop_async()
        return EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def startup_flat_check(live: LiveNode, report=print) -> bool:
    """After reconciliation and the strategies' start: the venue's positions (positionRisk, asked again here)
    against the positions the cache holds, per symbol, and who owns them. Logs what was adopted; a mismatch
    (the cache would trade from a wrong position) is CRITICAL and the node does not run. Paper trading and a
    node without reconciliation have no venue positions to compare."""
    if live.cfg.paper or not live.cfg.reconciliation.enabled:
        return True
    from nautilus_trader.core.uuid import UUID4
    from nautilus_trader.execution.messages import GeneratePositionStatusReports

    kernel = live.node.kernel
    client = kernel.exec_engine._clients.get(ClientId(str(BINANCE)))
    if client is None:
        return True
    command = GeneratePositionStatusReports(
        instrument_id=None, start=None, end=None, command_id=UUID4(), ts_init=kernel.clock.timestamp_ns()
    )
    try:
        reports = await client.generate_position_status_reports(command)
    except Exception as err:  # the venue's positions are unknown: do not trade on the cache's alone
        report(f"CRITICAL: start-up flat check: positionRisk failed ({type(err).__name__}: {err})")
        return False
    venue = {r.instrument_id: r.signed_decimal_qty for r in reports}
    cache, ok = kernel.cache, True
    for iid in instrument_ids(live.cfg):
        held = cache.positions_open(instrument_id=iid)
        cached = sum((p.signed_decimal_qty() for p in held), Decimal(0))
        at_venue = venue.get(iid, Decimal(0))
        if cached == 0 and at_venue == 0:
            continue
        owners = ", ".join(f"{p.strategy_id} {p.side.name} {p.quantity}" for p in held) or "nobody"
        if cached != at_venue:
            ok = False
            report(
                f"CRITICAL: start-up flat check: {iid} is {at_venue} at the venue but {cached} in the cache "
                f"({owners}); the node does not trade on a position it does not know"
            )
        else:
            kernel.logger.info(f"Start-up flat check: {iid} {at_venue} at the venue, adopted by {owners}")
            report(f"ADOPTED {iid} {at_venue} at the venue: {owners}")
    return ok


async def flatten(live: LiveNode) -> bool:
    """Cancel every strategy's orders and close its positions (Nautilus' market exit); True when all done."""
    for strategy in live.strategies:
        if strategy.is_running:
            strategy.market_exit()
    deadline = time.monotonic() + live.cfg.timeouts.flatten
    while any(s.is_exiting() for s in live.strategies):
        if time.monotonic() > deadline:
            live.node.kernel.logger.error(f"Flatten timed out after {live.cfg.timeouts.flatten} s")
            return False
        await asyncio.sleep(0.1)
    return True


def run(cfg: LiveConfig, mainnet: bool = False, duration: float | None = None, report=print) -> int:
    try:
        live = build_live_node(cfg, mainnet)
    except LiveStartError as err:
        report(f"CRITICAL: {err}")
        return EXIT_CRITICAL
    loop = live.node.get_event_loop()
    try:
        return loop.run_until_complete(run_live(live, duration, report))
    finally:
        dispose(live.node)
        flush_logger()  # the log file is written by a Rust thread; without this its tail is lost at exit


def dispose(node: TradingNode) -> None:
    """Cancel the tasks still pending on the node's loop (the executor's workers, the clients' timers), let
    them finish, then dispose the node, which closes the loop: closing it under pending tasks makes them fail
    later with 'Event loop is closed'."""
    loop = node.get_event_loop()
    if loop is not None and not loop.is_closed() and not loop.is_running():
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    node.dispose()

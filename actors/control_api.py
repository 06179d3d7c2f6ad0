"""The control API: an authenticated HTTP API to read a running node and command it (SPEC section 10).

Running it: put the actor in a live config's `actors:` list and the admin token in the environment::

    actors:
      - path: actors.control_api:ControlApi
        config: {port: 8080}            # host 127.0.0.1 by default; port 0 takes a free port

    QT_ADMIN_TOKEN=$(openssl rand -hex 32) qt live configs/live/fake_exchange.yaml

    curl -H "Authorization: Bearer $QT_ADMIN_TOKEN" http://127.0.0.1:8080/api/positions

The routes and their JSON are the contract in actors/control_api_app.py (`/api/health`, `/api/positions`,
`/api/signals`, `/api/risk`, `/api/equity`, `/api/executor`, `/api/models`, `/api/stats/daily|weekly`, and the
POST commands). The API is also what the dashboard reads.

Token: read once, from the variable `token_env` names (QT_ADMIN_TOKEN), when the actor is built; missing or
empty, the actor refuses to be built (ConfigError naming the variable), so `qt live` stops before anything
connects and no node ever runs with an open API. Every `/api/*` request needs `Authorization: Bearer <token>`,
compared in constant time; the token is never logged, answered or put in an event (commands carry operator
"api"). Loopback: it binds 127.0.0.1 unless `host` says otherwise; reach it from elsewhere through an SSH
tunnel or a TLS proxy, not by binding 0.0.0.0 (the bearer token travels in clear over plain HTTP).

Threading model: uvicorn serves on its own daemon thread with its own event loop. That thread never touches the
engine, the cache, the portfolio or the clock: each request hands a callable to the node's event loop (captured
in `on_start`; the live node starts its actors inside that loop) with `call_soon_threadsafe`, and awaits its
answer for at most `answer_timeout_seconds` (503 when the node does not answer). Reads are computed there, on the
node's thread, from the cache, the portfolio and what this actor collected from the bus; commands are published
there as `OperatorCommand` events, and the node's own components act on them: the emergency stop trips and
resets, every QTStrategy closes a symbol (or `*`) and stops or resumes opening positions (strategies/base.py).
Work that would stall trading runs elsewhere: registry promote / demote (they hash the model files) in a worker
thread, a retrain as a `qt train` subprocess.

Promotions: the registry's production alias moves at once, and the OperatorCommand is on the bus, but a running
EnsembleStrategy keeps the models it loaded at start (loading four models, torch among them, inside a bar close
would stall every symbol's decision): a promotion or demotion takes effect at the node's next start.

It sets no timer (a backtest settles its venue at every timer event): the equity curve is sampled on bar closes.
"""

import asyncio
import concurrent.futures
import os
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.enums import OrderType
from nautilus_trader.model.identifiers import ClientId, Venue

from actors.control_api_app import ApiError, ApiServer, build_app, constant_time_equal
from actors.emergency_stop import emergency_state
from actors.equity_recorder import account_equity
from actors.risk_profile import risk_profile_from
from catalog.instruments import symbol_of
from quantum_trader.config import ConfigError
from quantum_trader.events import (
    DIRECTION_CODES,
    MODEL_KINDS,
    SYSTEM_COMPONENT,
    BarCloseSignals,
    HealthEvent,
    OperatorCommand,
    Signal,
)
from strategies.base import LIQUIDATION_TAG

OPERATOR = "api"
PERIODS = {"daily": pd.Timedelta(days=1), "weekly": pd.Timedelta(days=7)}
LIMIT_FIELDS = (
    "daily_drawdown", "weekly_drawdown", "emergency_brake", "max_total_exposure", "max_positions",
    "max_leverage", "risk_per_trade", "entry_confidence", "min_confidence",
)  # fmt: skip


class ControlApiConfig(ActorConfig, frozen=True):
    """`port` 0 takes a free port (see `bound_port`); `registry` (the live node injects its `models:`) is where
    models are listed and promoted; `retrain_config` is the `qt train` config a retrain runs (None: refused)."""

    port: int = 8080
    host: str = "127.0.0.1"
    token_env: str = "QT_ADMIN_TOKEN"
    venue: str = "BINANCE"
    client_id: str = "SIGNALS"
    bar_types: tuple[str, ...] = ()
    signals_kept: int = 500  # signal batches kept for /api/signals
    equity_points: int = 2000  # equity samples kept for /api/equity (one per bar close)
    registry: str | None = None
    retrain_config: str | None = None
    retrain_dir: str = "runs"  # each retrain writes its log under <retrain_dir>/retrain-<time>/
    answer_timeout_seconds: float = 5.0
    risk_profile: str | dict | None = None  # its limits are shown by /api/risk


def _iso(ns: int | None) -> str | None:
    return pd.Timestamp(ns, tz="UTC").isoformat() if ns else None


class ControlApi(Actor):
    def __init__(self, config: ControlApiConfig | None = None):
        config = config or ControlApiConfig()
        super().__init__(config)
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"control API: port must be 0..65535, got {config.port}")
        token = os.environ.get(config.token_env, "")
        if not token.strip():
            raise ConfigError(
                f"{config.token_env} is not set: the control API refuses to start without its admin token "
                f"(set {config.token_env} in the environment, or remove actors.control_api:ControlApi)"
            )
        self.__token = token.strip()
        self.venue = Venue(config.venue)
        self.symbols = {symbol_of(BarType.from_str(b).instrument_id): b for b in config.bar_types}
        profile = risk_profile_from(config.risk_profile, "control_api.risk_profile")
        self.limits = {name: getattr(profile, name) for name in LIMIT_FIELDS} if profile else {}
        self.strategies: list = []
        self._risk_engine = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ApiServer | None = None
        self.bound_port: int | None = None
        self._batches: deque[BarCloseSignals] = deque(maxlen=config.signals_kept)
        self._equity: deque[tuple[int, float]] = deque(maxlen=config.equity_points)
        self._peak_equity: float | None = None
        self._last_close: dict = {}
        self._last_sample_ts = 0
        self._health: dict[str, HealthEvent] = {}
        self.retrains: list[subprocess.Popen] = []
        self.app = build_app(self)

    # ---- wiring by the node ------------------------------------------------------------------------------
    def bind_risk_engine(self, risk_engine) -> None:
        self._risk_engine = risk_engine

    def bind_strategies(self, strategies) -> None:
        """The node's strategies, read (on the node's thread) for the executor status and the exit levels."""
        self.strategies = list(strategies)

    def token_matches(self, presented: str) -> bool:
        return constant_time_equal(presented, self.__token)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def on_start(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # no running loop (a backtest): requests answer 503
        for bar_type in self.config.bar_types:
            self.subscribe_bars(BarType.from_str(bar_type))
        client = ClientId(self.config.client_id)
        for cls in (BarCloseSignals, Signal, HealthEvent):
            self.subscribe_data(DataType(cls), client_id=client)
        if self._server is None:
            try:
                self._server = ApiServer(self.app, self.config.host, self.config.port)
            except OSError as err:
                raise OSError(
                    f"control API: cannot serve on {self.config.host}:{self.config.port}: "
                    f"{err.strerror or err} (the actor's config `port` / `host`)"
                ) from None
            self.bound_port = self._server.bound_port
            self.log.info(
                f"Control API serving on http://{self.config.host}:{self.bound_port}/api "
                f"(bearer token from {self.config.token_env})"
            )

    def on_stop(self) -> None:
        self.close()

    def on_dispose(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ---- from the bus (node thread) ----------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        self._last_close[bar.bar_type.instrument_id] = bar.close.as_double()
        if bar.ts_event > self._last_sample_ts:  # once per bar close, at its first bar
            self._last_sample_ts = bar.ts_event
            equity = account_equity(self.portfolio, self.venue)
            if equity is not None:
                self._equity.append((bar.ts_event, equity))
                self._peak_equity = max(equity, self._peak_equity or equity)

    def on_data(self, data: Data) -> None:
        if isinstance(data, BarCloseSignals):
            self._batches.append(data)
        elif isinstance(data, Signal):
            self._batches.append(BarCloseSignals.of(data))
        elif isinstance(data, HealthEvent):
            self._health[data.component] = data

    # ---- the web thread's way to the node ----------------------------------------------------------------
    async def on_node(self, fn, *args):
        """Run `fn(*args)` on the node's event loop thread; its result, or 503 when it does not answer."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ApiError(503, "the node is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # handed to the waiting request
                    future.set_exception(err)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            raise ApiError(503, "the node is not running") from None
        timeout = self.config.answer_timeout_seconds
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise ApiError(503, f"the node did not answer within {timeout:g} s") from None

    async def read(self, what: str, **args) -> dict:
        return await self.on_node(getattr(self, f"read_{what}"), *args.values())

    async def command(self, action: str, symbol: str = "", target: str = "", reason: str = "") -> dict:
        if action == "close" and symbol != "*" and symbol not in self.symbols:
            allowed = ", ".join(sorted(self.symbols)) or "none"
            raise ApiError(404, f"unknown symbol {symbol!r}; this node trades: {allowed} (or close-all)")
        return await self.on_node(self.publish_command, action, symbol, target, reason)

    # ---- commands (node thread) --------------------------------------------------------------------------
    def publish_command(self, action: str, symbol: str = "", target: str = "", reason: str = "") -> dict:
        if not self.is_running:
            raise ApiError(503, "the node is stopping: no command is accepted")
        now = self.clock.timestamp_ns()
        command = OperatorCommand(
            action=action, symbol=symbol, reason=reason, operator=OPERATOR, target=target, ts_event=now, ts_init=now
        )  # fmt: skip
        self.log.warning(
            f"Operator command from the control API: {action}"
            + (f" {symbol}" if symbol else "")
            + (f" {target}" if target else "")
            + (f" ({reason})" if reason else "")
        )
        self.publish_data(DataType(OperatorCommand), command)
        return {"action": action, "symbol": symbol, "target": target, "reason": reason}

    # ---- reads (node thread) -----------------------------------------------------------------------------
    def read_health(self) -> dict:
        system = self._health.get(SYSTEM_COMPONENT)
        components = {
            name: {"status": e.status, "reason": e.reason, "ts": _iso(e.ts_event)}
            for name, e in sorted(self._health.items())
            if name != SYSTEM_COMPONENT
        }
        return {
            "level": (system.level if system is not None and system.level else "UNKNOWN"),
            "components": components,
        }

    def read_positions(self) -> dict:
        rows = []
        for position in self.cache.positions_open(venue=self.venue):
            iid = position.instrument_id
            last = self._last_close.get(iid)
            if last is None:
                bar = self._newest_bar(iid)
                last = bar.close.as_double() if bar is not None else None
            instrument = self.cache.instrument(iid)
            unrealized = (
                position.unrealized_pnl(instrument.make_price(last)).as_double()
                if last is not None and instrument is not None
                else None
            )
            stop, take_profits = self._exit_levels(position)
            rows.append(
                {
                    "symbol": symbol_of(iid),
                    "instrument_id": str(iid),
                    "side": position.side.name,
                    "quantity": position.quantity.as_double(),
                    "entry_price": position.avg_px_open,
                    "last_price": last,
                    "unrealized_pnl": unrealized,
                    "realized_pnl": position.realized_pnl.as_double() if position.realized_pnl else 0.0,
                    "stop_loss": stop,
                    "take_profits": take_profits,
                    "strategy_id": str(position.strategy_id),
                    "trace_id": self._trace_of(position),
                }
            )
        return {"positions": rows}

    def _trace_of(self, position) -> str | None:
        """The trace id of the decision that opened the position, as its strategy knows it (the entry order's
        tag, else the Exit Brain's record); None when nobody knows it."""
        owner = self._owner(position)
        return (owner.position_trace(position) or None) if hasattr(owner, "position_trace") else None

    def _owner(self, position):
        return next((s for s in self.strategies if s.id == position.strategy_id), None)

    def _newest_bar(self, iid):
        for bar_type in self.config.bar_types:
            bt = BarType.from_str(bar_type)
            if bt.instrument_id == iid:
                return self.cache.bar(bt)
        return None

    def _exit_levels(self, position) -> tuple[float | None, list[float]]:
        """The Exit Brain's stop and take-profit levels; without it, the position's resting reduce-only exits."""
        brain = getattr(self._owner(position), "exit_brain", None)
        managed = brain.positions.get(position.instrument_id) if brain is not None else None
        if managed is not None:
            tps = [o.price.as_double() for o in managed.tp_orders if o is not None and not o.is_closed]
            return (managed.stop_price or None), sorted(tps)
        stop, tps = None, []
        for order in self.cache.orders_open(
            instrument_id=position.instrument_id, strategy_id=position.strategy_id
        ):
            if not order.is_reduce_only or LIQUIDATION_TAG in (order.tags or []):
                continue
            if order.order_type in (OrderType.STOP_MARKET, OrderType.STOP_LIMIT):
                stop = order.trigger_price.as_double()
            elif order.order_type == OrderType.LIMIT:
                tps.append(order.price.as_double())
        return stop, sorted(tps)

    def read_signals(self, limit: int) -> dict:
        rows: list[dict] = []
        for batch in reversed(self._batches):
            for i in range(len(batch)):
                votes = {k: float(v[i]) for k, v in batch.votes.items() if v[i] == v[i]}  # NaN: not voting
                rows.append(
                    {
                        "ts": _iso(batch.ts_event),
                        "symbol": symbol_of(batch.instrument_ids[i]),
                        "direction": DIRECTION_CODES[int(batch.direction[i])],
                        "confidence": float(batch.confidence[i]),
                        "prob_up": float(batch.prob_up[i]),
                        "votes": votes,
                        "model_ids": batch.model_ids,
                    }
                )
                if len(rows) >= limit:
                    return {"signals": rows}
        return {"signals": rows}

    def read_risk(self) -> dict:
        equity = account_equity(self.portfolio, self.venue)
        peak = max(self._peak_equity or equity, equity) if equity is not None else self._peak_equity
        gross = 0.0
        for position in self.cache.positions_open(venue=self.venue):
            price = self._last_close.get(position.instrument_id)
            if price is None:
                exposure = self.portfolio.net_exposure(position.instrument_id)
                gross += abs(exposure.as_double()) if exposure is not None else 0.0
            else:
                gross += position.quantity.as_double() * price * position.multiplier.as_double()
        ess = emergency_state(self.cache)
        state = self._risk_engine.trading_state.name if self._risk_engine is not None else "ACTIVE"
        return {
            "equity": equity,
            "peak_equity": peak,
            "drawdown_pct": 100.0 * (1.0 - equity / peak) if equity is not None and peak else 0.0,
            "exposure_pct": 100.0 * gross / equity if equity else 0.0,
            "trading_state": state,
            "ess": {"tripped": ess.tripped, "code": ess.code, "reason": ess.reason, "since": _iso(ess.ts)},
            "limits": dict(self.limits),
        }

    def read_equity(self) -> dict:
        return {"points": [[_iso(ts), equity] for ts, equity in self._equity]}

    def read_executor(self) -> dict:
        rows = [
            {
                "id": str(s.id),
                "state": s.state.name,
                "entries_enabled": bool(getattr(s, "entries_enabled", True)),
            }
            for s in self.strategies
        ]
        return {"entries_enabled": bool(rows) and all(r["entries_enabled"] for r in rows), "strategies": rows}

    def read_stats(self, period: str) -> dict:
        now = self.clock.timestamp_ns()
        since = now - PERIODS[period].value
        closed = [
            p
            for p in [*self.cache.position_snapshots(), *self.cache.positions_closed()]
            if p.ts_closed and p.ts_closed >= since
        ]
        pnls = [p.realized_pnl.as_double() if p.realized_pnl else 0.0 for p in closed]
        commissions = sum(m.as_double() for p in closed for m in p.commissions() if m.currency == USDT)
        wins = sum(1 for x in pnls if x > 0)
        return {
            "period": period,
            "from": _iso(since),
            "to": _iso(now),
            "trades": len(closed),
            "wins": wins,
            "win_rate": wins / len(closed) if closed else 0.0,
            "pnl": sum(pnls),
            "commissions": commissions,
        }

    def loaded_model_ids(self) -> list[str]:
        latest = self._batches[-1] if self._batches else None
        return [m for m in latest.model_ids.split(",") if m] if latest is not None else []

    # ---- models (a worker thread; the node thread only for what it holds) -------------------------------
    def _registry(self):
        from ml.registry import ModelRegistry

        if self.config.registry is None:
            raise ApiError(409, "no model registry configured (the live config's `models:` or `registry`)")
        return ModelRegistry(self.config.registry)

    async def models(self) -> dict:
        registry = self._registry()
        loaded = set(await self.on_node(self.loaded_model_ids))

        def listing() -> list[dict]:
            return [
                {
                    "kind": r.kind,
                    "id": r.id,
                    "production": r.production,
                    "loaded": r.id in loaded,
                    "verdict": str(registry.status(r)),
                }
                for r in registry.list()
            ]

        return {"loaded": len(loaded), "models": await asyncio.to_thread(self._registry_call, listing)}

    @staticmethod
    def _registry_call(fn, *args):
        from ml.models.base import ModelLoadError
        from ml.registry import RegistryError

        try:
            return fn(*args)
        except (RegistryError, ModelLoadError) as err:
            raise ApiError(422, str(err)) from None

    async def promote(self, id_or_kind: str) -> dict:
        """A model id, `<kind>:<alias>`, or a kind (its newest version)."""
        registry = self._registry()

        def promote():
            target = id_or_kind
            if id_or_kind in MODEL_KINDS:
                versions = registry.list(id_or_kind)
                if not versions:
                    raise ApiError(422, f"no {id_or_kind} model in the registry to promote")
                target = versions[0].id
            return registry.promote(target)

        record = await asyncio.to_thread(self._registry_call, promote)
        return await self.command(
            "promote", target=record.id, reason=f"{record.kind}:production = {record.id}"
        )

    async def demote(self, kind: str) -> dict:
        if kind not in MODEL_KINDS:
            raise ApiError(422, f"unknown model kind {kind!r}; allowed: {', '.join(MODEL_KINDS)}")
        registry = self._registry()
        previous = await asyncio.to_thread(self._registry_call, registry.demote, kind)
        return await self.command("demote", target=kind, reason=f"{kind}:production was {previous}")

    async def retrain(self, kind: str | None) -> dict:
        """`qt train <retrain_config>` as a subprocess (its log in a new folder); the command goes on the bus."""
        if self.config.retrain_config is None:
            raise ApiError(409, "no retrain_config configured for the control API: retraining is off")
        if kind is not None and kind not in MODEL_KINDS:
            raise ApiError(422, f"unknown model kind {kind!r}; allowed: {', '.join(MODEL_KINDS)} or null")
        running = [p for p in self.retrains if p.poll() is None]
        if running:
            raise ApiError(409, f"a retrain is already running (pid {running[0].pid})")
        job = await asyncio.to_thread(self._launch_retrain, kind)
        command = await self.command("retrain", target=kind or "", reason=f"qt train, pid {job['pid']}")
        return {"accepted": True, "command": command, **job}

    def _launch_retrain(self, kind: str | None) -> dict:
        folder = Path(self.config.retrain_dir) / f"retrain-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
        folder.mkdir(parents=True)
        config = Path(self.config.retrain_config)
        if kind is not None:  # the same config with that kind alone
            try:
                data = yaml.safe_load(config.read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise ApiError(422, f"retrain_config {config}: {err}") from None
            data["models"] = {kind: (data.get("models") or {}).get(kind) or {}}
            config = folder / "train.yaml"
            config.write_text(yaml.safe_dump(data))
        argv = [sys.executable, "-m", "quantum_trader.cli", "train", str(config), "--no-progress"]
        argv += ["--out", str(folder / "report")]
        if self.config.registry is not None:
            argv += ["--registry", self.config.registry]
        log = folder / "train.log"
        with log.open("w") as out:  # the child keeps its own handle
            env = {
                k: v for k, v in os.environ.items() if k != self.config.token_env
            }  # training needs no token
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.retrains.append(process)
        return {"pid": process.pid, "log": str(log)}

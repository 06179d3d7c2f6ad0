"""The live config file: one YAML describes a live (or paper) Binance USDT-M node. See configs/live/*.yaml.

Strategies, actors and the exit / risk profiles use the same schema as a backtest config
(quantum_trader/components.py): a component that runs in a backtest runs live with the same entry.
"""

import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from catalog.instruments import check_symbol
from quantum_trader.components import ComponentConfig, ProfileFields
from quantum_trader.config import StrictModel, load_config, parse_config
from strategies.order_budget import OrderRate

# The kline intervals Binance USDT-M streams that the bar types here can name (minutes, hours, days).
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
MAX_SYMBOLS = 200
_TRADER_ID = re.compile(r"^[A-Za-z0-9_]+(-[A-Za-z0-9_]+)+$")  # Binance: 200 streams per websocket connection


class LeverageConfig(StrictModel):
    default: int = Field(5, ge=1, le=125)
    per_symbol: dict[str, int] = Field(default_factory=dict, description="e.g. BTCUSDT: 10")

    @field_validator("per_symbol")
    @classmethod
    def _range(cls, v: dict[str, int]):
        for sym, lev in v.items():
            check_symbol(sym)
            if not 1 <= lev <= 125:
                raise ValueError(f"leverage for {sym} must be an integer within [1, 125], got {lev}")
        return v


class RedisConfig(StrictModel):
    """The cache database (orders, positions, general keys such as the emergency stop's latched state) and
    the message-bus streams. `enabled: false` runs the node with an in-memory cache and no streams."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    username: str | None = None
    password_env: str | None = Field(
        None, description="name of the environment variable that holds the password (never the password)"
    )
    ssl: bool = False
    timeout_seconds: int = Field(2, ge=1, le=60, description="connection and response timeout")
    clear_execution_state: bool = Field(
        True,
        description="delete this trader's orders:*, positions:* and index:* keys before start (keep general:*); "
        "a warm restart on them double-enters in Nautilus 1.231 (issue #4736), the venue is reconciled instead",
    )


class MessageBusConfig(StrictModel):
    """Event streams in Redis (`trader-<id>:stream:<topic>`); only with `redis.enabled`."""

    streams: bool = True
    encoding: Literal["json", "msgpack"] = "json"
    heartbeat_seconds: int = Field(5, ge=1, le=3600)
    autotrim_mins: int | None = Field(1440, ge=1, description="keep about this many minutes per stream")
    silent_bus_status: Literal["degraded", "critical"] = Field(
        "critical",
        description="HealthEvent status published when the heartbeat stream goes silent (critical trips the "
        "emergency stop)",
    )


class ReconciliationConfig(StrictModel):
    enabled: bool = True
    lookback_mins: int | None = Field(None, ge=1, description="None: as far back as the venue allows")
    startup_delay_secs: float = Field(10.0, ge=0)
    open_check_interval_secs: float | None = Field(10.0, gt=0, description="poll open orders; None: never")
    position_check_interval_secs: float | None = Field(60.0, gt=0, description="poll positions; None: never")


class RetriesConfig(StrictModel):
    """The Binance exec client's own retries of submit / cancel / modify requests (Nautilus' RetryManager).

    It retries only errors whose Binance code is in `BINANCE_RETRY_ERRORS` (-1001 disconnected, which is how
    Binance answers a 5xx, -1003 too many requests (HTTP 429), -1007 timeout, -1008 server busy, -1021
    timestamp, -2011 cancel rejected, -5028 recvWindow), with exponential backoff and jitter between
    `delay_initial_ms` and `delay_max_ms`. It does not read a 429's Retry-After header. Nautilus' default is
    no retry at all. `max_retries: 0` turns it off. Keep the sum of the delays (at most about 7 s with the
    defaults) well under the in-flight check (an order SUBMITTED for 5 s is queried, and rejected as unknown
    after 5 more queries 2 s apart), or a retry can place an order the node has already given up on. A submit
    answered -1007 is never retried (live/binance_fixes.py)."""

    max_retries: int = Field(3, ge=0, le=10)
    delay_initial_ms: int = Field(1000, ge=1, description="first backoff; short delays risk a ban on 429s")
    delay_max_ms: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.delay_max_ms < self.delay_initial_ms:
            raise ValueError(
                f"delay_max_ms {self.delay_max_ms} is below delay_initial_ms {self.delay_initial_ms}"
            )
        return self


class TimeoutsConfig(StrictModel):
    """Seconds. `flatten` bounds the market exit of `flatten_on_stop`."""

    connection: float = Field(30.0, gt=0)
    reconciliation: float = Field(30.0, gt=0)
    portfolio: float = Field(10.0, gt=0)
    disconnection: float = Field(5.0, gt=0)
    post_stop: float = Field(2.0, gt=0)
    flatten: float = Field(15.0, gt=0)


class EndpointsConfig(StrictModel):
    """Base URLs in place of Binance's, e.g. a local fake exchange. Only with environment testnet or demo."""

    http: str
    ws: str = Field(description="market-data websocket base (the client appends /stream?streams=...)")
    ws_user: str | None = Field(None, description="user-data websocket base; default: `ws`")

    @field_validator("http")
    @classmethod
    def _http(cls, v: str):
        return _url(v, ("http", "https"))

    @field_validator("ws", "ws_user")
    @classmethod
    def _ws(cls, v: str | None):
        return None if v is None else _url(v, ("ws", "wss"))


def _url(v: str, schemes: tuple[str, ...]) -> str:
    u = urlparse(v)
    if u.scheme not in schemes or not u.netloc:
        raise ValueError(f"expected a {' or '.join(f'{s}://' for s in schemes)} URL with a host, got {v!r}")
    return v.rstrip("/")


class PaperConfig(StrictModel):
    starting_balance: float = Field(10_000.0, gt=0, description="USDT")


class LiveConfig(ProfileFields):
    """`exit_profile` and `risk_profile` (quantum_trader/components.py) are given to every component."""

    name: str = "live"
    trader_id: str = Field("QT-001", description="NAME-TAG; the Redis keys and streams are prefixed with it")
    environment: Literal["testnet", "demo", "live"] = "testnet"
    symbols: list[str] = Field(min_length=1, max_length=MAX_SYMBOLS)
    interval: Literal[INTERVALS] = "5m"
    strategies: list[ComponentConfig] = Field(min_length=1)
    actors: list[ComponentConfig] = Field(default_factory=list)
    leverage: LeverageConfig = LeverageConfig()
    redis: RedisConfig = RedisConfig()
    message_bus: MessageBusConfig = MessageBusConfig()
    paper: bool = Field(False, description="live Binance data, simulated execution (no keys needed)")
    paper_account: PaperConfig = PaperConfig()
    reconciliation: ReconciliationConfig = ReconciliationConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retries: RetriesConfig = RetriesConfig()
    flatten_on_stop: bool = Field(False, description="cancel orders and close positions before stopping")
    warmup_bars: int = Field(
        0,
        ge=0,
        le=1500,
        description="bars of history every strategy requests at start, so its features are ready at the first "
        "live bar (the ensemble needs 300 + its model window, e.g. 500)",
    )
    models: str | None = Field(None, description="model registry folder, given to components as `registry`")
    endpoints: EndpointsConfig | None = None
    max_order_rate: OrderRate = Field(
        "200/00:00:10", description="orders per interval, enforced by the RiskEngine"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_directory: str | None = Field(None, description="also write the node's log to a file there")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="the log file's format: json writes one JSON object a line (<name>.jsonl); "
        "decisions carry `trace_id=<id>` in their message (quantum_trader/trace.py). Stdout stays text",
    )
    record: str | None = Field(
        None,
        description="record the session into a new run folder under this directory (bars, signals, order "
        "intents, instruments, the config) for `qt parity RUN_DIR`",
    )

    @field_validator("trader_id")
    @classmethod
    def _trader_id(cls, v: str):
        # Checked here: Nautilus' TraderId aborts the whole process (a Rust panic) on an invalid value.
        if not _TRADER_ID.match(v):
            raise ValueError(f"expected NAME-TAG (letters, digits, _) with a hyphen, e.g. QT-001, got {v!r}")
        return v

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str]):
        for sym in v:
            check_symbol(sym)
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicated symbols {dupes}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        unknown = sorted(set(self.leverage.per_symbol) - set(self.symbols))
        if unknown:
            raise ValueError(f"leverage.per_symbol: {unknown} not in symbols; allowed: {self.symbols}")
        if self.endpoints is not None and self.environment == "live":
            raise ValueError(
                "endpoints: an endpoint override is only allowed with environment testnet or demo "
                "(a live config always talks to Binance mainnet)"
            )
        return self

    @property
    def streams_enabled(self) -> bool:
        return self.redis.enabled and self.message_bus.streams


def load_live_config(path) -> LiveConfig:
    return load_config(LiveConfig, path)


def parse_live_config(data: dict, source: str = "<dict>") -> LiveConfig:
    return parse_config(LiveConfig, data, source)

"""Detects a silent Redis message bus.

A Nautilus message bus backed by Redis starts even when Redis is down and then publishes nothing, silently
(NOTES section 5). With `heartbeat_interval_secs` set it writes an entry to `trader-<id>:stream:health:heartbeat`
at that interval; this actor reads the newest entry every `check_seconds` and, when it is older than twice
the interval (or missing, or Redis cannot be reached), logs an error and publishes a
`HealthEvent(component="redis_stream", status=...)` (critical by default: the emergency stop trips on it).
When the heartbeat comes back it publishes status "ok". Ages are measured on Redis' own clock (`TIME`
against the entry id), so clock skew between hosts does not matter.
"""

import os
from datetime import timedelta

from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.model.data import DataType

from quantum_trader.events import HealthEvent

COMPONENT = "redis_stream"
TIMER = "qt_bus_watch"


def heartbeat_stream(trader_id: str) -> str:
    return f"trader-{trader_id}:stream:health:heartbeat"


class BusWatchConfig(ActorConfig, frozen=True):
    trader_id: str
    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password_env: str | None = None
    ssl: bool = False
    heartbeat_seconds: int = 5
    check_seconds: float | None = None  # default: twice the heartbeat interval
    silent_status: str = "critical"
    client_id: str = "SIGNALS"


def heartbeat_age_seconds(client, trader_id: str) -> float | None:
    """Seconds since the newest heartbeat on Redis' clock; None when the stream has no entry."""
    newest = client.xrevrange(heartbeat_stream(trader_id), count=1)
    if not newest:
        return None
    entry_id = newest[0][0]
    entry_ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
    seconds, micros = client.time()
    return (seconds * 1000 + micros / 1000 - entry_ms) / 1000


class BusWatch(Actor):
    def __init__(self, config: BusWatchConfig):
        super().__init__(config)
        self.status = "ok"
        self.last_reason = ""
        self._client = None

    def on_start(self) -> None:
        import redis

        c = self.config
        self._client = redis.Redis(
            host=c.host,
            port=c.port,
            username=c.username,
            password=os.environ.get(c.password_env) if c.password_env else None,
            ssl=c.ssl,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        interval = c.check_seconds or 2.0 * c.heartbeat_seconds
        self.clock.set_timer(
            TIMER, interval=timedelta(seconds=interval), callback=lambda _event: self.check()
        )

    def on_stop(self) -> None:
        if TIMER in self.clock.timer_names:
            self.clock.cancel_timer(TIMER)
        if self._client is not None:
            self._client.close()

    def check(self) -> str:
        limit = 2.0 * self.config.heartbeat_seconds
        try:
            age = heartbeat_age_seconds(self._client, self.config.trader_id)
        except Exception as err:  # any Redis failure: the bus cannot be publishing either
            age, reason = None, f"Redis unreachable: {type(err).__name__}: {err}"
        else:
            reason = (
                f"no heartbeat in {heartbeat_stream(self.config.trader_id)}"
                if age is None
                else f"newest heartbeat is {age:.1f} s old (limit {limit:.0f} s)"
            )
        silent = age is None or age > limit
        status = self.config.silent_status if silent else "ok"
        if silent:
            self.log.error(f"Message bus silent: {reason}; events are not reaching Redis")
        if status != self.status:
            self.status, self.last_reason = status, reason if silent else "heartbeat back"
            self.publish_data(
                DataType(HealthEvent),
                HealthEvent(
                    component=COMPONENT,
                    status=status,
                    reason=self.last_reason,
                    ts_event=self.clock.timestamp_ns(),
                    ts_init=self.clock.timestamp_ns(),
                ),
            )
        return status

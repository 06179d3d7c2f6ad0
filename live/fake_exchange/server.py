"""Assembly: one aiohttp app serving the REST API, both websockets and the `/_fake` control API on one port."""

import asyncio
import logging
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path

import pandas as pd
from aiohttp import web

from live.fake_exchange.clock import load_replay
from live.fake_exchange.faults import Faults, RequestLog
from live.fake_exchange.rest import PUBLIC, apply_faults, control_routes, exchange_routes, now_ms
from live.fake_exchange.state import Spec, Venue, VenueError
from live.fake_exchange.streams import MarketStreams, UserStreams

log = logging.getLogger("live.fake_exchange")


class FakeBinance:
    """A loopback Binance USDT-M futures venue replaying catalog bars.

    `speed` > 0 closes one bar every `interval / speed` seconds once started (300 with 5m bars: one a second);
    `speed=0` moves only on `step()`, for deterministic tests. `behind_bars`: start that many bars before the
    wall-clock bar (live/fake_exchange/clock.py `load_replay`).
    """

    def __init__(
        self,
        catalog: str | Path,
        symbols: list[str] | None = None,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
        speed: float = 0,
        interval: str = "5m",
        balance: float | str = 10_000,
        align_to_now: bool = True,
        state_file: str | Path | None = None,
        log_every: int = 12,
        behind_bars: int = 0,
    ):
        self.clock = load_replay(
            str(catalog), symbols, start, end, interval, align_to_now, behind_bars=behind_bars
        )
        specs = {s.symbol: Spec(s.price_precision, s.size_precision) for s in self.clock.series.values()}
        self.venue = Venue(
            specs, balance=Decimal(str(balance)), path=Path(state_file) if state_file else None
        )
        self.venue.load()
        for symbol in self.clock.series:
            self._mark(symbol)
        self.speed = float(speed)
        self.faults = Faults()
        self.requests = RequestLog()
        self.market = MarketStreams()
        self.user = UserStreams()
        self.stalled = False
        self.skip = 0
        self.log_every = log_every
        self.host, self.port = "127.0.0.1", 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task | None = None
        self._step_lock = asyncio.Lock()

    # ---- addresses ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # ---- lifecycle ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(exchange_routes(self))
        app.add_routes(control_routes(self))
        for path in ("/stream", "/market/stream", "/public/stream"):
            app.router.add_get(path, self.market.handle)
        for path in ("/ws", "/ws/{key}", "/private/ws", "/private/ws/{key}"):
            app.router.add_get(path, self.user.handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0 picks a free port) and start the replay ticker if `speed` > 0."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        if self.speed > 0:
            self._ticker = asyncio.create_task(self._tick())
        return self.http_url

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self.drop_websockets()
        if self._runner:
            await self._runner.cleanup()

    async def _tick(self) -> None:
        period = self.clock.interval_ms / 1000 / self.speed
        next_at = time.monotonic() + period
        while not self.clock.finished:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            await self.step()
        log.info("replay finished at %s", _iso(self.clock.now_ms))

    # ---- replay ------------------------------------------------------------------------------------
    async def step(self, bars: int = 1) -> int:
        """Close the next `bars` bars: match them against resting orders, then push klines. Returns bars closed."""
        closed_total = 0
        async with self._step_lock:
            for _ in range(bars):
                if self.clock.finished:
                    break
                closed = self.clock.advance()
                events = []
                for series, i in closed:
                    o, h, low, c, _ = series.bar(i)
                    events += self.venue.on_bar(series.symbol, o, h, low, c, now_ms())
                await self.user.publish(events)
                if self.skip > 0:
                    self.skip -= 1
                elif not self.stalled:
                    await self.market.publish_bars(closed)
                closed_total += len(closed)
                if self.log_every and self.clock.bars_replayed % self.log_every == 0:
                    log.info(
                        "replayed to %s (%d bar closes)", _iso(self.clock.now_ms), self.clock.bars_replayed
                    )
        return closed_total

    def _mark(self, symbol: str) -> None:
        i = self.clock.last_closed(symbol)
        if i is not None:
            self.venue.marks[symbol] = Decimal(repr(self.clock.series[symbol].bar(i)[3]))

    # ---- faults ------------------------------------------------------------------------------------
    def stall(self, on: bool = True) -> None:
        """Stop (or resume) pushing klines; the clock and matching go on."""
        self.stalled = on

    def skip_klines(self, bars: int = 1) -> None:
        """Do not push the klines of the next `bars` bar closes (a gap in the feed)."""
        self.skip += bars

    async def drop_websockets(self) -> int:
        """Close every websocket; clients may reconnect (listen keys stay valid)."""
        return await self.market.drop_all() + await self.user.drop_all()

    async def step_while_down(self, bars: int = 1) -> int:
        """Drop every websocket and close the next `bars` bars before a user stream can connect again (one that
        tries waits for the step to end): every user event of those bars is lost. Returns the sockets dropped."""
        self.user.accepting.clear()
        try:
            dropped = await self.drop_websockets()
            await self.step(bars)
        finally:
            self.user.accepting.set()
        return dropped

    async def expire_listen_key(self, key: str | None = None) -> list[str]:
        return await self.user.expire(key)

    def state(self) -> dict:
        return {
            **self.venue.snapshot(now_ms()),
            "now_ms": self.clock.now_ms,
            "finished": self.clock.finished,
            "subscriptions": sorted(self.market.subscribed()),
            "user_streams": len(self.user.clients),
            "listen_keys": len(self.user.keys),
            "requests": len(self.requests.entries),
        }

    # ---- HTTP plumbing -----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await handler(request)
        has_key = "X-MBX-APIKEY" in request.headers
        response = await self._answer(request, handler, has_key)
        if request.path.startswith("/fapi/"):
            self.requests.record(request.method, request.path, dict(request.query), has_key, response.status)
        return response

    async def _answer(self, request: web.Request, handler, has_key: bool) -> web.StreamResponse:
        if request.path.startswith("/fapi/"):
            injected = await apply_faults(self, request, handler)
            if injected is not None:
                return injected
            if request.path not in PUBLIC and not has_key:
                return _error(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        try:
            return await handler(request)
        except VenueError as err:
            return _error(err.code, err.msg, err.status)
        except web.HTTPNotFound:
            return _error(-1099, f"Not found: {request.method} {request.path} (not in the fake).", 404)
        except web.HTTPMethodNotAllowed:
            return _error(-1099, f"Method not allowed: {request.method} {request.path}.", 405)

    # ---- running in a thread -----------------------------------------------------------------------
    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10) -> "ThreadedFake":
        return ThreadedFake(self, host, port, timeout)


class ThreadedFake:
    """The fake on its own event loop in a daemon thread, for tests and in-process callers."""

    def __init__(self, fake: FakeBinance, host: str, port: int, timeout: float):
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-binance", daemon=True)
        self._thread.start()
        self.call(fake.start(host, port), timeout)

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def step(self, bars: int = 1) -> int:
        return self.call(self.fake.step(bars))

    def state(self) -> dict:
        return self.call(_value(self.fake.state))

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.fake.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        self.loop.close()

    def __enter__(self) -> "ThreadedFake":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def _value(fn):
    return fn()


def _error(code: int, msg: str, status: int) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def serve(fake: FakeBinance, host: str, port: int) -> None:
    """Run the fake until SIGINT/SIGTERM, printing the URLs a node config needs."""

    async def main() -> None:
        import signal

        try:
            await fake.start(host, port)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        symbols = ", ".join(fake.clock.series)
        pace = f"{fake.speed:g}x" if fake.speed else "stepped (POST /_fake/step)"
        print(f"fake Binance USDT-M replaying {symbols} from {_iso(fake.clock.now_ms)} (venue time), {pace}")
        print(f"  base_url_http       {fake.http_url}")
        print(f"  base_url_ws         {fake.ws_url}   (data client)")
        print(f"  base_url_ws_stream  {fake.ws_url}   (exec client; any HMAC api_key/api_secret)")
        print(
            f"  control             {fake.http_url}/_fake/state, /_fake/requests, POST /_fake/step|fail|..."
        )
        print("Ctrl-C stops it.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await fake.stop()

    asyncio.run(main())

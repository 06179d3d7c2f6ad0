"""The two websocket surfaces: the market stream (combined form) and the user data stream (raw events).

Market: `/stream?streams=a/b` subscribes at connect; `{"method": "SUBSCRIBE"|"UNSUBSCRIBE", "params": [...],
"id": N}` later, answered `{"result": null, "id": N}`. Messages are `{"stream": name, "data": {...}}`; only closed
klines are sent. `<symbol>@markPrice` (optionally `@1s`) gets a mark-price update at every bar close.

User: `/ws?listenKey=K`, `/ws/K` and `/private/ws?listenKey=K`. Events go out raw (top-level `"e"`), as Binance
sends them and as the adapter decodes them. A rotated key gets `listenKeyExpired` and its sockets are closed.
"""

import asyncio
import json
import logging
import secrets
import time

from aiohttp import WSMsgType, web

log = logging.getLogger("live.fake_exchange")


class MarketStreams:
    def __init__(self) -> None:
        self.clients: dict[web.WebSocketResponse, set[str]] = {}
        self.messages_sent = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.clients[ws] = {s for s in request.query.get("streams", "").split("/") if s}
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._control(ws, msg.data)
        finally:
            self.clients.pop(ws, None)
        return ws

    async def _control(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            req = json.loads(text)
            method, params, msg_id = req.get("method"), req.get("params") or [], req.get("id")
        except (ValueError, AttributeError):
            await ws.send_json({"error": {"code": 2, "msg": "Invalid request"}})
            return
        streams = self.clients.setdefault(ws, set())
        if method == "SUBSCRIBE":
            streams.update(params)
        elif method == "UNSUBSCRIBE":
            streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            await ws.send_json({"result": sorted(streams), "id": msg_id})
            return
        await ws.send_json({"result": None, "id": msg_id})

    def subscribed(self) -> set[str]:
        return set().union(*self.clients.values()) if self.clients else set()

    async def publish_bars(self, closed: list) -> None:
        """Send each closed bar's kline (and mark price) to the sockets subscribed to its streams."""
        for ws, streams in list(self.clients.items()):
            for series, i in closed:
                prefix = series.symbol.lower()
                for stream in streams:
                    if stream == f"{prefix}@kline_{series.interval}":
                        await self._send(ws, series.kline_message(i))
                    elif stream.startswith(f"{prefix}@markPrice"):
                        await self._send(ws, series.mark_price_message(i, stream))

    async def _send(self, ws: web.WebSocketResponse, message: dict) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(message))
            self.messages_sent += 1

    async def drop_all(self) -> int:
        sockets = list(self.clients)
        for ws in sockets:
            await ws.close(code=1001, message=b"fake: dropped")
        return len(sockets)


class UserStreams:
    """`gap` seconds pass between the events of one burst. The adapter's handlers read the order from the cache,
    which the execution engine updates from a queue: sent back to back, ALGO_UPDATE FINISHED is handled before the
    fill from the ORDER_TRADE_UPDATE is applied, and the adapter adds a synthetic fill that the engine rejects as
    an overfill (an ERROR line). Binance's events are milliseconds apart too."""

    def __init__(self, gap: float = 0.02) -> None:
        self.keys: set[str] = set()
        self.clients: dict[web.WebSocketResponse, str] = {}
        self.events_sent = 0
        self.gap = gap
        # cleared: a connecting user stream waits (FakeBinance.step_while_down)
        self.accepting = asyncio.Event()
        self.accepting.set()

    def new_key(self) -> str:
        key = secrets.token_hex(32)
        self.keys.add(key)
        return key

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("key") or request.query.get("listenKey", "")
        if key not in self.keys:
            return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
        await self.accepting.wait()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.clients[ws] = key
        try:
            async for _ in ws:
                pass  # the user stream takes no requests
        finally:
            self.clients.pop(ws, None)
        return ws

    async def publish(self, events: list[dict]) -> None:
        for n, event in enumerate(events):
            if n and self.gap and self.clients:
                await asyncio.sleep(self.gap)
            text = json.dumps(event)
            for ws in list(self.clients):
                if not ws.closed:
                    await ws.send_str(text)
                    self.events_sent += 1

    async def expire(self, key: str | None = None) -> list[str]:
        """Expire `key` (default: every key): send listenKeyExpired and close its sockets."""
        expired = [key] if key else sorted(self.keys)
        for k in expired:
            self.keys.discard(k)
            for ws, ws_key in list(self.clients.items()):
                if ws_key == k and not ws.closed:
                    await ws.send_json(
                        {"e": "listenKeyExpired", "E": int(time.time() * 1000), "listenKey": k}
                    )
                    await ws.close(code=1000, message=b"listenKey expired")
        return expired

    async def drop_all(self) -> int:
        sockets = list(self.clients)
        for ws in sockets:
            await ws.close(code=1001, message=b"fake: dropped")
        return len(sockets)

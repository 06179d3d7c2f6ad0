"""REST routes: the `/fapi` subset the Nautilus 1.231 Binance USDT-M adapter calls, and the `/_fake` control API.

Binance conventions kept: every parameter is read from the query string (the adapter sends an empty body, POST
included); signed endpoints need the `X-MBX-APIKEY` header (any value; signatures are not checked); errors are
`{"code": int, "msg": str}` with codes that exist in `BinanceErrorCode`. Order, trade and event timestamps are
wall-clock milliseconds, so the node's reconciliation lookback windows see them; only klines run on the replay
clock. `GET /fapi/v1/time` answers the wall clock too (the adapter only logs it).
"""

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

from aiohttp import web

from live.fake_exchange.state import MAX_NOTIONAL, MIN_NOTIONAL, VenueError

if TYPE_CHECKING:
    from live.fake_exchange.server import FakeBinance

PUBLIC = frozenset(
    {"/fapi/v1/ping", "/fapi/v1/time", "/fapi/v1/exchangeInfo", "/fapi/v1/klines", "/fapi/v1/premiumIndex"}
)
ORDER_TYPES = [
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
]
TIME_IN_FORCE = ["GTC", "IOC", "FOK", "GTX", "GTD"]


def now_ms() -> int:
    return int(time.time() * 1000)


def params_of(request: web.Request) -> dict[str, str]:
    return dict(request.query)


def exchange_routes(ex: "FakeBinance") -> list[web.RouteDef]:
    venue = ex.venue

    def ok(body) -> web.Response:
        return web.json_response(body)

    async def trade(result) -> web.Response:
        body, events = result
        await ex.user.publish(events)
        return ok(body)

    def symbol_param(p: dict, required: bool = True) -> str | None:
        symbol = p.get("symbol")
        if symbol is None and not required:
            return None
        if symbol not in venue.specs:
            raise VenueError(-1121, "Invalid symbol.")
        return symbol

    async def ping(request):
        return ok({})

    async def server_time(request):
        return ok({"serverTime": now_ms()})

    async def exchange_info(request):
        symbols = [symbol_info(s) for s in ex.clock.series.values()]
        limits = [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ]
        body = {"timezone": "UTC", "serverTime": now_ms(), "futuresType": "U_MARGINED", "rateLimits": limits}
        assets = [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}]
        return ok({**body, "exchangeFilters": [], "assets": assets, "symbols": symbols})

    def symbol_info(s) -> dict:
        filters = [
            {"filterType": "PRICE_FILTER", "minPrice": s.tick_size, "maxPrice": "10000000", "tickSize": s.tick_size},
            {"filterType": "LOT_SIZE", "minQty": s.step_size, "maxQty": "10000000", "stepSize": s.step_size},
            {"filterType": "MARKET_LOT_SIZE", "minQty": s.step_size, "maxQty": "10000000", "stepSize": s.step_size},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": str(MIN_NOTIONAL)},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"},
        ]  # fmt: skip
        return {
            "symbol": s.symbol, "pair": s.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000", "baseAsset": s.symbol.removesuffix("USDT"), "quoteAsset": "USDT",
            "marginAsset": "USDT", "pricePrecision": s.price_precision, "quantityPrecision": s.size_precision,
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
            "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "maxMoveOrderLimit": 10000, "filters": filters, "orderTypes": ORDER_TYPES, "timeInForce": TIME_IN_FORCE,
        }  # fmt: skip

    async def klines(request):
        p = params_of(request)
        symbol = symbol_param(p)
        series = ex.clock.series[symbol]
        if p.get("interval") != series.interval:
            raise VenueError(-1120, f"Invalid interval (the fake replays {series.interval} bars only).")
        start, end = p.get("startTime"), p.get("endTime")
        rows = series.klines(
            ex.clock.now_ms, int(start) if start else None, int(end) if end else None, p.get("limit")
        )
        return ok(rows)

    async def premium_index(request):
        p = params_of(request)
        symbols = [symbol_param(p)] if "symbol" in p else sorted(venue.specs)
        rows = [
            {"symbol": s, "markPrice": str(venue.marks.get(s, 0)), "indexPrice": str(venue.marks.get(s, 0)),
             "estimatedSettlePrice": str(venue.marks.get(s, 0)), "lastFundingRate": "0.00010000",
             "interestRate": "0.00010000", "nextFundingTime": 0, "time": now_ms()}
            for s in symbols
        ]  # fmt: skip
        return ok(rows[0] if "symbol" in p else rows)

    async def account(request):
        return ok(venue.account(now_ms()))

    async def position_risk(request):
        symbol = symbol_param(params_of(request), required=False)
        return ok([venue.position_row(s, now_ms()) for s in sorted(venue.specs) if symbol in (None, s)])

    async def leverage(request):
        p = params_of(request)
        return ok(venue.set_leverage(symbol_param(p), p.get("leverage")))

    async def margin_type(request):
        symbol_param(params_of(request))
        return ok({"code": 200, "msg": "success"})

    async def symbol_config(request):
        symbol = symbol_param(params_of(request), required=False)
        return ok(
            [
                {
                    "symbol": s,
                    "marginType": "CROSSED",
                    "isAutoAddMargin": False,
                    "leverage": venue.leverage_of(s),
                    "maxNotionalValue": MAX_NOTIONAL,
                }
                for s in sorted(venue.specs)
                if symbol in (None, s)
            ]  # fmt: skip
        )

    async def dual_side(request):
        return ok({"dualSidePosition": False})

    async def commission_rate(request):
        symbol = symbol_param(params_of(request))
        return ok({"symbol": symbol, "makerCommissionRate": "0.0002", "takerCommissionRate": "0.0005"})

    async def listen_key_new(request):
        return ok({"listenKey": ex.user.new_key()})

    async def listen_key_keepalive(request):
        key = params_of(request).get("listenKey")
        if key is not None and key not in ex.user.keys:
            raise VenueError(-1125, "This listenKey does not exist.")
        return ok({"listenKey": key or next(iter(ex.user.keys), "")})

    async def listen_key_close(request):
        key = params_of(request).get("listenKey")
        ex.user.keys.discard(key)
        return ok({})

    async def order_new(request):
        return await trade(venue.new_order(params_of(request), now_ms()))

    async def order_get(request):
        return ok(venue.get_order(params_of(request)))

    async def order_cancel(request):
        return await trade(venue.cancel_order(params_of(request), now_ms()))

    async def algo_new(request):
        p = params_of(request)
        symbol_param(p)
        return await trade(venue.new_algo_order(p, now_ms()))

    async def algo_get(request):
        return ok(venue.get_algo(params_of(request)))

    async def algo_cancel(request):
        return await trade(venue.cancel_algo_order(params_of(request), now_ms()))

    async def open_orders(request):
        return ok(venue.open_orders(symbol_param(params_of(request), required=False)))

    async def open_algo_orders(request):
        return ok(venue.open_algo_orders(symbol_param(params_of(request), required=False)))

    async def all_orders(request):
        p = params_of(request)
        return ok(venue.all_orders(symbol_param(p), p))

    async def all_algo_orders(request):
        p = params_of(request)
        return ok(venue.all_algo_orders(symbol_param(p), p))

    async def user_trades(request):
        p = params_of(request)
        return ok(venue.user_trades(symbol_param(p), p))

    async def cancel_all(request):
        await ex.user.publish(venue.cancel_all(symbol_param(params_of(request)), now_ms(), algo=False))
        return ok({"code": 200, "msg": "The operation of cancel all open order is done."})

    async def cancel_all_algo(request):
        await ex.user.publish(venue.cancel_all(symbol_param(params_of(request)), now_ms(), algo=True))
        return ok({"code": 200, "msg": "The operation of cancel all open order is done."})

    async def batch_cancel(request):
        p = params_of(request)
        symbol = symbol_param(p)
        ids = json.loads(p.get("orderIdList") or "[]")
        client_ids = json.loads(p.get("origClientOrderIdList") or "[]")
        targets = [{"symbol": symbol, "orderId": str(i)} for i in ids]
        targets += [{"symbol": symbol, "origClientOrderId": c} for c in client_ids]
        results = []
        for target in targets:
            try:
                body, events = venue.cancel_order(target, now_ms())
                await ex.user.publish(events)
                results.append(body)
            except VenueError as err:
                results.append({"code": err.code, "msg": err.msg})
        return ok(results)

    v1 = "/fapi/v1/"
    return [
        web.get(v1 + "ping", ping),
        web.get(v1 + "time", server_time),
        web.get(v1 + "exchangeInfo", exchange_info),
        web.get(v1 + "klines", klines),
        web.get(v1 + "premiumIndex", premium_index),
        web.get("/fapi/v2/account", account),
        web.get("/fapi/v3/account", account),
        web.get("/fapi/v2/positionRisk", position_risk),
        web.get("/fapi/v3/positionRisk", position_risk),
        web.post(v1 + "leverage", leverage),
        web.post(v1 + "marginType", margin_type),
        web.get(v1 + "symbolConfig", symbol_config),
        web.get(v1 + "positionSide/dual", dual_side),
        web.get(v1 + "commissionRate", commission_rate),
        web.post(v1 + "listenKey", listen_key_new),
        web.put(v1 + "listenKey", listen_key_keepalive),
        web.delete(v1 + "listenKey", listen_key_close),
        web.post(v1 + "order", order_new),
        web.get(v1 + "order", order_get),
        web.delete(v1 + "order", order_cancel),
        web.post(v1 + "algoOrder", algo_new),
        web.get(v1 + "algoOrder", algo_get),
        web.delete(v1 + "algoOrder", algo_cancel),
        web.get(v1 + "openOrders", open_orders),
        web.get(v1 + "openAlgoOrders", open_algo_orders),
        web.get(v1 + "allOrders", all_orders),
        web.get(v1 + "allAlgoOrders", all_algo_orders),
        web.get(v1 + "userTrades", user_trades),
        web.delete(v1 + "allOpenOrders", cancel_all),
        web.delete(v1 + "algoOpenOrders", cancel_all_algo),
        web.delete(v1 + "batchOrders", batch_cancel),
    ]


def control_routes(ex: "FakeBinance") -> list[web.RouteDef]:
    """`/_fake/...`: drive the fake from another process. Arguments come as JSON body or query parameters."""

    async def args(request: web.Request) -> dict:
        body = await request.json() if request.can_read_body else {}
        return {**request.query, **(body or {})}

    async def state(request):
        return web.json_response(ex.state())

    async def requests(request):
        since = int(request.query.get("since", 0))
        return web.json_response(ex.requests.entries[since:])

    async def step(request):
        a = await args(request)
        closed = await ex.step(int(a.get("bars", 1)))
        return web.json_response({"closed": closed, "now_ms": ex.clock.now_ms})

    async def fail(request):
        a = await args(request)
        code = a.get("code")
        try:
            ex.faults.fail(
                a["endpoint"], _times(a, 1), _int(a.get("status")), int(code) if code is not None else None,
                a.get("msg"), int(a.get("retry_after", 1)), a.get("params"), bool(a.get("after", False)),
            )  # fmt: skip
        except (KeyError, ValueError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"ok": True})

    async def delay(request):
        a = await args(request)
        ex.faults.delay(a["endpoint"], float(a["seconds"]), _times(a, None), a.get("params"))
        return web.json_response({"ok": True})

    async def clear(request):
        ex.faults.clear()
        ex.stall(False)
        return web.json_response({"ok": True})

    async def drop(request):
        return web.json_response({"dropped": await ex.drop_websockets()})

    async def stall(request):
        a = await args(request)
        ex.stall(str(a.get("on", "true")).lower() == "true")
        return web.json_response({"stalled": ex.stalled})

    async def skip(request):
        a = await args(request)
        ex.skip_klines(int(a.get("bars", 1)))
        return web.json_response({"skip": ex.skip})

    async def expire(request):
        a = await args(request)
        return web.json_response({"expired": await ex.user.expire(a.get("listenKey"))})

    return [
        web.get("/_fake/state", state),
        web.get("/_fake/requests", requests),
        web.post("/_fake/step", step),
        web.post("/_fake/fail", fail),
        web.post("/_fake/delay", delay),
        web.post("/_fake/clear", clear),
        web.post("/_fake/drop_websockets", drop),
        web.post("/_fake/stall", stall),
        web.post("/_fake/skip", skip),
        web.post("/_fake/expire_listen_key", expire),
    ]


def _int(value) -> int | None:
    return int(value) if value is not None else None


def _times(a: dict, default):
    value = a.get("times", default)
    return None if value in (None, "null", "none") else int(value)


async def apply_faults(ex: "FakeBinance", request: web.Request, handler=None) -> web.Response | None:
    """The injected answer for this request, after any injected delay; None to answer normally. A rule with
    `after` has `handler` carry the request out first (its answer is dropped)."""
    query = dict(request.query)
    seconds = ex.faults.delay_for(request.method, request.path, query)
    if seconds:
        await asyncio.sleep(seconds)
    rule = ex.faults.failure_for(request.method, request.path, query)
    if rule is None:
        return None
    if rule.after and handler is not None:
        with contextlib.suppress(VenueError, web.HTTPException):  # it failed anyway: the error is the answer
            await handler(request)
    headers = {"Retry-After": str(rule.retry_after)} if rule.status == 429 else None
    return web.json_response({"code": rule.code, "msg": rule.msg}, status=rule.status, headers=headers)

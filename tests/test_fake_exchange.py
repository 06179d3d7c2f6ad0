"""Specification of the local fake Binance USDT-M exchange (`live/fake_exchange`).

The fake stands in for Binance so the real Nautilus Binance adapter can be exercised offline. These tests say what
it promises: the REST contract the 1.231 adapter decodes, bar-based matching, fault injection, and, most
important, that an unchanged `TradingNode` trades against it end to end.

Run as a script (`python tests/test_fake_exchange.py HTTP_URL WS_URL OUT.json`), this module runs the probe node;
the end-to-end test starts it that way, because a TradingNode installs signal handlers and wants a main thread.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

IID = "BTCUSDT-PERP.BINANCE"
HISTORY = 60  # bars before the replay start
INTERVAL_MS = 300_000


# ---- the probe node (runs in a subprocess) --------------------------------------------------------------
def run_probe_node(
    http_url: str, ws_url: str, out_path: str, mode: str = "trade", max_seconds: float = 45
) -> None:
    """Build a TradingNode with the Binance USDT-M clients pointed at the fake and run the probe strategy.

    `mode="reconcile"`: trade nothing; record what the node reconciled at start and wait for a position to close.
    """
    from nautilus_trader.adapters.binance import (
        BINANCE,
        BinanceAccountType,
        BinanceDataClientConfig,
        BinanceExecClientConfig,
        BinanceLiveDataClientFactory,
        BinanceLiveExecClientFactory,
    )
    from nautilus_trader.config import (
        InstrumentProviderConfig,
        LiveExecEngineConfig,
        LoggingConfig,
        StrategyConfig,
        TradingNodeConfig,
    )
    from nautilus_trader.live.node import TradingNode
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.model.identifiers import InstrumentId, Venue
    from nautilus_trader.model.objects import Currency
    from nautilus_trader.trading.strategy import Strategy

    class ProbeConfig(StrategyConfig, frozen=True):
        instrument_id: str
        bar_type: str
        trade_size: str = "0.100"
        stop_distance: float = 0.02
        trade: bool = True

    class Probe(Strategy):
        """Warm up, buy at market on the first live bar, protect with a reduce-only stop, wait for it."""

        def __init__(self, config: ProbeConfig):
            super().__init__(config)
            self.iid = InstrumentId.from_str(config.instrument_id)
            self.bar_type = BarType.from_str(config.bar_type)
            self.history = 0
            self.live_bars: list[int] = []
            self.events: list[dict] = []
            self.entry = None
            self.done = False
            self.at_start: dict = {}

        def on_start(self):
            self.instrument = self.cache.instrument(self.iid)
            self.at_start = {
                "positions": [(p.side.name, str(p.quantity)) for p in self.cache.positions_open()],
                "orders": [
                    (o.type_string(), o.status_string(), o.is_reduce_only) for o in self.cache.orders_open()
                ],
            }
            self.request_bars(self.bar_type, start=self.clock.utc_now() - timedelta(hours=3))
            self.subscribe_bars(self.bar_type)

        def on_historical_data(self, data):
            if isinstance(data, Bar):
                self.history += 1

        def on_bar(self, bar: Bar):
            self.live_bars.append(bar.ts_event)
            if self.config.trade and self.entry is None:
                self.entry = self.order_factory.market(
                    self.iid, OrderSide.BUY, self.instrument.make_qty(self.config.trade_size)
                )
                self.submit_order(self.entry)

        def on_order_event(self, event):
            self.events.append(
                {"order": str(event.client_order_id), "event": type(event).__name__,
                 "venue_order_id": str(getattr(event, "venue_order_id", None))}
            )  # fmt: skip

        def on_order_filled(self, event):
            if self.entry is not None and event.client_order_id == self.entry.client_order_id:
                trigger = float(event.last_px) * (1 - self.config.stop_distance)
                stop = self.order_factory.stop_market(
                    self.iid,
                    OrderSide.SELL,
                    event.last_qty,
                    self.instrument.make_price(trigger),
                    reduce_only=True,
                )
                self.submit_order(stop)

        def on_position_closed(self, event):
            self.done = True

        def on_stop(self):
            pass

    provider = InstrumentProviderConfig(load_ids=frozenset([IID]))
    config = TradingNodeConfig(
        trader_id="FAKE-001",
        logging=LoggingConfig(log_level="INFO"),
        exec_engine=LiveExecEngineConfig(reconciliation=True, reconciliation_lookback_mins=60),
        data_clients={
            BINANCE: BinanceDataClientConfig(
                account_type=BinanceAccountType.USDT_FUTURES, base_url_http=http_url, base_url_ws=ws_url,
                instrument_provider=provider,
            )
        },
        exec_clients={
            BINANCE: BinanceExecClientConfig(
                account_type=BinanceAccountType.USDT_FUTURES, api_key="fakekey", api_secret="fakesecret",
                base_url_http=http_url, base_url_ws_stream=ws_url, futures_leverages={"BTCUSDT": 5},
                instrument_provider=provider,
            )
        },
        timeout_connection=15.0, timeout_reconciliation=10.0, timeout_portfolio=5.0,
        timeout_disconnection=2.0, timeout_post_stop=1.0,
    )  # fmt: skip
    node = TradingNode(config=config)
    bar_type = f"{IID}-5-MINUTE-LAST-EXTERNAL"
    probe = Probe(ProbeConfig(instrument_id=IID, bar_type=bar_type, trade=mode == "trade"))
    node.trader.add_strategy(probe)
    node.add_data_client_factory(BINANCE, BinanceLiveDataClientFactory)
    node.add_exec_client_factory(BINANCE, BinanceLiveExecClientFactory)
    node.build()

    async def watch():
        deadline = time.monotonic() + max_seconds
        cache = node.kernel.cache
        while not (probe.done or cache.positions_closed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # let trailing events (ALGO_UPDATE FINISHED) land
        account = node.portfolio.account(Venue("BINANCE"))
        result = {
            "trader_running": node.trader.is_running,
            "done": probe.done,
            "at_start": probe.at_start,
            "history": probe.history,
            "live_bars": probe.live_bars,
            "events": probe.events,
            "orders": [
                {
                    "client_order_id": str(o.client_order_id),
                    "type": o.type_string(),
                    "status": o.status_string(),
                    "venue_order_id": str(o.venue_order_id),
                    "filled_qty": str(o.filled_qty),
                    "avg_px": o.avg_px,
                    "reduce_only": o.is_reduce_only,
                }
                for o in cache.orders()
            ],  # fmt: skip
            "positions": [
                {"id": str(p.id), "closed": p.is_closed, "realized_pnl": str(p.realized_pnl)}
                for p in cache.positions()
            ],
            "balance": str(account.balance_total(Currency.from_str("USDT"))) if account else None,
        }
        Path(out_path).write_text(json.dumps(result, default=str))
        node.stop()

    node.get_event_loop().create_task(watch())
    try:
        node.run()
    finally:
        node.dispose()


if __name__ == "__main__":
    run_probe_node(*sys.argv[1:5])
    sys.exit(0)


# ---- fixtures ------------------------------------------------------------------------------------------
from live.fake_exchange import FakeBinance  # noqa: E402
from live.fake_exchange.state import Spec, VenueError  # noqa: E402
from live.fake_exchange.state import Venue as FakeVenue  # noqa: E402
from tests.conftest import build_catalog, candles, random_walk  # noqa: E402

# After HISTORY bars near 100: bar 0 closes at 100, bar 1 falls to 95 (through a 2% stop at 98), then recovers.
LIVE_CLOSES = [100.0, 95.0, 96.0, 97.0, 98.0, 99.0, 100.0, 101.0, 102.0, 103.0]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "catalog"
    history = np.round(100 + np.sin(np.arange(HISTORY) / 5), 4)
    btc = candles(np.concatenate([history, LIVE_CLOSES]))
    eth = candles(random_walk(HISTORY + len(LIVE_CLOSES), seed=3, start_price=2000.0))
    build_catalog(path, {"BTCUSDT": btc, "ETHUSDT": eth})
    return path


def replay_start() -> pd.Timestamp:
    return pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * HISTORY)


@pytest.fixture
def fake(catalog):
    """A stepped fake in a background thread; stopped after the test."""
    with FakeBinance(catalog, ["BTCUSDT", "ETHUSDT"], start=replay_start()).start_in_thread() as threaded:
        yield threaded


def call(base: str, path: str, method: str = "GET", key: bool = True, **params) -> tuple[int, dict, dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    headers = {"X-MBX-APIKEY": "fakekey"} if key else {}
    req = urllib.request.Request(f"{base}{path}?{query}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def decode(body, schema):
    import msgspec

    return msgspec.json.decode(json.dumps(body), type=schema)


def post_json(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(
        base + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited (rc {proc.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_probe(fake, tmp_path: Path, name: str, mode: str = "trade") -> tuple[subprocess.Popen, Path, Path]:
    """Start the probe node in a subprocess and wait until its strategy has subscribed to the 5m klines."""
    out, log_file = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, fake.fake.http_url, fake.fake.ws_url, str(out), mode],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    subscribed = lambda: "btcusdt@kline_5m" in fake.state()["subscriptions"]  # noqa: E731
    try:
        wait_for(subscribed, 40, f"{name}: the kline subscription", proc)
    except AssertionError:
        stop_probe(proc)
        raise AssertionError(log_file.read_text()[-3000:]) from None
    return proc, out, log_file


def stop_probe(proc: subprocess.Popen, timeout: float = 30) -> None:
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- (c) a real TradingNode trades against the fake ----------------------------------------------------
def test_a_real_trading_node_warms_up_buys_and_is_stopped_out(fake, tmp_path):
    proc, out, log_file = start_probe(fake, tmp_path, "probe")
    try:
        fake.step()  # bar closes at 100: the probe buys at market
        wait_for(lambda: fake.state()["open_algo_orders"], 10, "the protective stop", proc)
        entry = fake.state()
        fake.step()  # bar falls to 95 through the 98 stop
        wait_for(lambda: not fake.state()["positions"], 10, "the stop to close the position", proc)
    finally:
        stop_probe(proc)
    node_log = log_file.read_text()
    assert out.exists(), node_log[-3000:]
    result = json.loads(out.read_text())
    venue = fake.state()

    assert result["trader_running"] and result["done"], node_log[-3000:]
    assert "[ERROR]" not in node_log, [line for line in node_log.splitlines() if "[ERROR]" in line]
    assert result["history"] >= 30  # warm-up bars from GET klines, delivered to on_historical_data
    assert len(result["live_bars"]) >= 1
    # The entry filled at the closing bar's close; the stop was accepted, triggered and filled at its trigger.
    assert entry["positions"]["BTCUSDT"]["positionAmt"] == "0.1"
    assert entry["positions"]["BTCUSDT"]["entryPrice"] == "100"
    entry_order, stop_order = sorted(result["orders"], key=lambda o: o["type"])
    assert (entry_order["type"], entry_order["status"], entry_order["avg_px"]) == ("MARKET", "FILLED", 100.0)
    assert (stop_order["type"], stop_order["status"], stop_order["avg_px"]) == ("STOP_MARKET", "FILLED", 98.0)
    stop_events = [e["event"] for e in result["events"] if e["order"] == stop_order["client_order_id"]]
    assert stop_events[:3] == ["OrderInitialized", "OrderSubmitted", "OrderAccepted"]  # ALGO_UPDATE NEW
    assert "OrderUpdated" in stop_events  # ALGO_UPDATE TRIGGERED: venue order id -> the matching-engine id
    assert stop_events[-1] == "OrderFilled"
    # The fake and the node's cache agree: flat, two fills, same balance.
    assert [p["closed"] for p in result["positions"]] == [True]
    assert len(venue["fills"]) == 2 and not venue["open_algo_orders"] and not venue["open_orders"]
    assert stop_order["venue_order_id"] == str(venue["algo_orders"][0]["actualOrderId"])
    assert Decimal(result["balance"].split()[0]) == Decimal(venue["balance"])


# ---- (a) the REST and websocket contract the adapter decodes ------------------------------------------
def test_exchange_info_decodes_and_its_filters_carry_the_catalog_instruments_precision(fake, catalog):
    from nautilus_trader.adapters.binance.futures.schemas.market import BinanceFuturesExchangeInfo

    from catalog.instruments import instrument_id
    from catalog.store import CatalogStore

    status, body, _ = call(fake.fake.http_url, "/fapi/v1/exchangeInfo", key=False)
    info = decode(body, BinanceFuturesExchangeInfo)
    assert status == 200 and {s.symbol for s in info.symbols} == {"BTCUSDT", "ETHUSDT"}
    store = CatalogStore(catalog)
    for symbol in info.symbols:
        inst = store.instrument(instrument_id(symbol.symbol))
        filters = {f.filterType.value: f for f in symbol.filters}
        # The adapter derives precision from the exponents of tickSize and stepSize.
        assert -Decimal(filters["PRICE_FILTER"].tickSize).as_tuple().exponent == inst.price_precision
        assert -Decimal(filters["LOT_SIZE"].stepSize).as_tuple().exponent == inst.size_precision
        assert Decimal(filters["MIN_NOTIONAL"].notional) == 5
        assert (symbol.contractType, symbol.marginAsset) == ("PERPETUAL", "USDT")
    assert info.rateLimits


def test_account_positions_and_algo_answers_decode_with_the_adapters_schemas(fake):
    from nautilus_trader.adapters.binance.futures.schemas import account as s

    base = fake.fake.http_url
    decode(call(base, "/fapi/v2/account")[1], s.BinanceFuturesAccountInfo)
    decode(call(base, "/fapi/v3/positionRisk")[1], list[s.BinanceFuturesPositionRisk])
    decode(call(base, "/fapi/v1/symbolConfig")[1], list[s.BinanceFuturesSymbolConfig])
    decode(call(base, "/fapi/v1/leverage", "POST", symbol="BTCUSDT", leverage=5)[1], s.BinanceFuturesLeverage)
    assert call(base, "/fapi/v1/positionSide/dual")[1] == {"dualSidePosition": False}
    algo = call(base, "/fapi/v1/algoOrder", "POST", **STOP, triggerPrice="90.0000", clientAlgoId="A1")[1]
    decode(algo, s.BinanceFuturesAlgoOrder)
    decode(call(base, "/fapi/v1/openAlgoOrders")[1], list[s.BinanceFuturesAlgoOrder])
    cancel = call(base, "/fapi/v1/algoOrder", "DELETE", algoId=algo["algoId"])[1]
    assert decode(cancel, s.BinanceFuturesAlgoOrderCancelResponse).code == "200"  # a string, not an int


STOP = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "STOP_MARKET",
    "algoType": "CONDITIONAL",
    "quantity": "0.100",
}


def test_klines_start_time_is_inclusive_on_open_time_and_the_adapters_pager_terminates(fake):
    from nautilus_trader.adapters.binance.common.enums import BinanceAccountType, BinanceKlineInterval
    from nautilus_trader.adapters.binance.futures.http.market import BinanceFuturesMarketHttpAPI
    from nautilus_trader.adapters.binance.http.client import BinanceHttpClient
    from nautilus_trader.common.component import LiveClock
    from nautilus_trader.model.data import BarType

    base = fake.fake.http_url
    rows = call(base, "/fapi/v1/klines", key=False, symbol="BTCUSDT", interval="5m", limit=1000)[1]
    assert len(rows) == HISTORY  # only bars closed at the replay clock
    opens = [r[0] for r in rows]
    assert all(r[6] == r[0] + INTERVAL_MS - 1 for r in rows)  # Binance close time
    t = opens[10]
    assert call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m", startTime=t)[1][0][0] == t
    assert (
        call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m", startTime=t + 1)[1][0][0] == opens[11]
    )
    bounded = call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m", startTime=t, endTime=opens[12])[
        1
    ]
    assert [r[0] for r in bounded] == opens[10:13]
    fake.step()
    assert len(call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")[1]) == HISTORY + 1

    async def page():  # the adapter's own pager: stops on an empty or short page
        client = BinanceHttpClient(clock=LiveClock(), api_key=None, api_secret=None, base_url=base)
        api = BinanceFuturesMarketHttpAPI(client, BinanceAccountType.USDT_FUTURES)
        bar_type = BarType.from_str(f"{IID}-5-MINUTE-LAST-EXTERNAL")
        return await api.request_binance_bars(
            bar_type, BinanceKlineInterval.MINUTE_5, limit=25, start_time=opens[0]
        )

    before = len(fake.fake.requests.calls("/fapi/v1/klines"))
    bars = asyncio.run(page())
    assert len(bars) == HISTORY + 1 and len({b.ts_event for b in bars}) == HISTORY + 1
    assert len(fake.fake.requests.calls("/fapi/v1/klines")) - before == 3  # 25 + 25 + 11 (short page ends it)


def test_errors_are_binance_shaped_with_codes_the_adapter_knows(fake):
    from nautilus_trader.adapters.binance.common.enums import BinanceErrorCode

    base = fake.fake.http_url
    cases = {
        -1121: call(base, "/fapi/v1/klines", symbol="NOPEUSDT", interval="5m"),
        -1120: call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="1h"),
        -2015: call(base, "/fapi/v2/account", key=False),
        -4120: call(base, "/fapi/v1/order", "POST", **{**STOP, "stopPrice": "90.0000"}),
        -2011: call(base, "/fapi/v1/order", "DELETE", symbol="BTCUSDT", orderId=42),
        -2013: call(base, "/fapi/v1/order", symbol="BTCUSDT", orderId=42),
        -1111: call(base, "/fapi/v1/order", "POST", **{**MARKET_BUY, "quantity": "0.1234"}),
        -4164: call(base, "/fapi/v1/order", "POST", **{**MARKET_BUY, "quantity": "0.010"}),
        -2021: call(base, "/fapi/v1/algoOrder", "POST", **STOP, triggerPrice="150.0000"),
        -1099: call(base, "/fapi/v1/nothingHere"),
    }
    for code, (status, body, _) in cases.items():
        assert status >= 400 and body["code"] == code and body["msg"], (code, status, body)
        assert BinanceErrorCode(body["code"])


MARKET_BUY = {
    "symbol": "BTCUSDT",
    "side": "BUY",
    "type": "MARKET",
    "quantity": "0.100",
    "positionSide": "BOTH",
}


def test_market_stream_subscribes_and_pushes_only_closed_klines_at_bar_close(fake):
    import aiohttp
    import msgspec
    from nautilus_trader.adapters.binance.common.schemas.market import BinanceCandlestickMsg

    async def listen():
        async with aiohttp.ClientSession() as session:
            url = f"{fake.fake.ws_url}/stream?streams=btcusdt@kline_5m"
            async with session.ws_connect(url) as ws:
                await ws.send_json({"method": "SUBSCRIBE", "params": ["ethusdt@kline_5m"], "id": 7})
                assert await ws.receive_json(timeout=5) == {"result": None, "id": 7}
                await asyncio.get_running_loop().run_in_executor(None, fake.step)
                return [await ws.receive_str(timeout=5) for _ in range(2)]

    messages = [msgspec.json.decode(m, type=BinanceCandlestickMsg) for m in asyncio.run(listen())]
    assert {m.stream for m in messages} == {"btcusdt@kline_5m", "ethusdt@kline_5m"}
    btc = next(m.data.k for m in messages if m.data.s == "BTCUSDT")
    assert btc.x and btc.c == "100.0000" and btc.v == "100.000"
    assert (btc.T - btc.t, btc.T + 1) == (INTERVAL_MS - 1, fake.fake.clock.now_ms)


# ---- (b) matching ------------------------------------------------------------------------------------
def venue(mark: str = "100") -> "FakeVenue":
    v = FakeVenue({"BTCUSDT": Spec(4, 3)})
    v.marks["BTCUSDT"] = Decimal(mark)
    return v


def order(side: str, qty: str, **extra) -> dict:
    return {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": qty, **extra}


def stop(side: str, qty: str, trigger: str, kind: str = "STOP_MARKET", **extra) -> dict:
    p = {"symbol": "BTCUSDT", "side": side, "type": kind, "algoType": "CONDITIONAL", "quantity": qty}
    return {**p, "triggerPrice": trigger, **extra}


def events_of(events: list[dict]) -> list[str]:
    return [f"{e['e']}:{e['o'].get('x', e['o'].get('X'))}" if "o" in e else e["e"] for e in events]


def test_market_orders_fill_at_the_mark_with_taker_fees_and_realized_pnl_moves_the_balance():
    v = venue("100")
    _, events = v.new_order(order("BUY", "1.000"), now=1)
    assert events_of(events) == ["ORDER_TRADE_UPDATE:NEW", "ORDER_TRADE_UPDATE:TRADE", "ACCOUNT_UPDATE"]
    assert events[1]["o"]["L"] == "100.0000" and events[1]["o"]["n"] == "0.05"  # 100 x 0.0005
    v.on_bar("BTCUSDT", 100, 111, 99, 110, now=2)
    assert v.account(3)["assets"][0]["unrealizedProfit"] == "10"
    v.new_order(order("SELL", "1.000"), now=4)
    assert v.balance == Decimal("10000") + 10 - Decimal("0.05") - Decimal("0.055")
    assert v.position("BTCUSDT").amount == 0
    assert [t["realizedPnl"] for t in v.user_trades("BTCUSDT", {})] == ["0", "10"]


def test_a_stop_market_triggers_when_a_bar_crosses_it_and_fills_at_the_trigger():
    v = venue("100")
    v.new_order(order("BUY", "0.500"), now=1)
    v.new_algo_order(stop("SELL", "0.500", "98.0000", reduceOnly="True"), now=2)
    assert v.on_bar("BTCUSDT", 100, 101, 98.5, 99, now=3) == []  # low 98.5 does not reach 98
    events = v.on_bar("BTCUSDT", 99, 99.5, 96, 97, now=4)
    assert events_of(events) == [
        "ALGO_UPDATE:TRIGGERING", "ALGO_UPDATE:TRIGGERED", "ORDER_TRADE_UPDATE:NEW",
        "ORDER_TRADE_UPDATE:TRADE", "ACCOUNT_UPDATE", "ALGO_UPDATE:FINISHED",
    ]  # fmt: skip
    triggered, fill, finished = events[1]["o"], events[3]["o"], events[5]["o"]
    assert fill["L"] == "98.0000" and fill["c"] == triggered["caid"] and fill["ot"] == "STOP_MARKET"
    assert int(triggered["ai"]) == fill["i"] and (finished["aq"], finished["ap"]) == ("0.500", "98.0000")
    assert v.position("BTCUSDT").amount == 0 and not v.open_algo_orders(None)
    assert v.all_orders("BTCUSDT", {})[-1]["clientOrderId"] == triggered["caid"]  # reconciliation sees it


def test_a_stop_fills_at_the_open_when_the_bar_gaps_through_it():
    v = venue("100")
    v.new_order(order("BUY", "0.500"), now=1)
    v.new_algo_order(stop("SELL", "0.500", "98.0000", reduceOnly="True"), now=2)
    v.new_algo_order(stop("SELL", "0.500", "104.0000", kind="TAKE_PROFIT_MARKET", reduceOnly="True"), now=2)
    events = v.on_bar("BTCUSDT", 95, 96, 94, 95.5, now=3)
    assert [e["o"]["L"] for e in events if e.get("o", {}).get("x") == "TRADE"] == ["95.0000"]
    # The take-profit then finds no position to reduce and expires instead of opening one.
    events = v.on_bar("BTCUSDT", 95.5, 105, 95, 104.5, now=4)
    assert "ORDER_TRADE_UPDATE:EXPIRED" in events_of(events) and v.position("BTCUSDT").amount == 0


def test_reduce_only_never_opens_and_is_cut_to_the_position():
    v = venue("100")
    with pytest.raises(VenueError) as err:
        v.new_order(order("SELL", "0.100", reduceOnly="True"), now=1)
    assert err.value.code == -2022
    v.new_order(order("BUY", "0.300"), now=2)
    body, events = v.new_order(order("SELL", "1.000", reduceOnly="true"), now=3)
    assert body["origQty"] == "0.300" and events[1]["o"]["q"] == "0.300"  # the adapter emits OrderUpdated
    assert v.position("BTCUSDT").amount == 0


def test_orders_beyond_the_margin_are_refused_with_2019_and_leverage_is_per_symbol():
    v = venue("100")
    with pytest.raises(VenueError) as err:
        v.new_order(order("BUY", "2100.000"), now=1)  # 210k notional / 20x = 10.5k > 10k
    assert err.value.code == -2019
    v.set_leverage("BTCUSDT", "50")
    v.new_order(order("BUY", "2100.000"), now=2)
    assert v.position_row("BTCUSDT", 3)["leverage"] == "50"


def test_state_survives_in_a_json_file_for_a_restarted_fake(tmp_path):
    v = venue("100")
    v.path = tmp_path / "venue.json"
    v.new_order(order("BUY", "0.300"), now=1)
    v.new_algo_order(stop("SELL", "0.300", "90.0000", reduceOnly="True"), now=2)
    again = FakeVenue({"BTCUSDT": Spec(4, 3)}, path=v.path)
    again.load()
    assert again.snapshot(3) == v.snapshot(3)


# ---- (d) faults --------------------------------------------------------------------------------------
def test_an_injected_429_carries_retry_after_and_the_next_request_succeeds(fake):
    base = fake.fake.http_url
    post_json(base, "/_fake/fail", {"endpoint": "GET /fapi/v1/klines", "status": 429, "retry_after": 3})
    status, body, headers = call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")
    assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "3")
    assert call(base, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")[0] == 200
    assert [e["status"] for e in fake.fake.requests.calls("/fapi/v1/klines")] == [429, 200]


def test_injected_binance_codes_server_errors_and_delays(fake):
    base, faults = fake.fake.http_url, fake.fake.faults
    faults.fail("POST /fapi/v1/order", code=-2019)
    faults.fail("DELETE /fapi/v1/algoOrder", code=-2011, times=2)
    faults.fail("/fapi/v2/account", status=503)
    faults.delay("/fapi/v1/time", 0.3, times=1)
    assert call(base, "/fapi/v1/order", "POST", **MARKET_BUY)[:2] == (400, {"code": -2019, "msg": "Margin is insufficient."})  # fmt: skip
    assert call(base, "/fapi/v1/algoOrder", "DELETE", algoId=1)[1]["code"] == -2011
    assert call(base, "/fapi/v2/account")[:2][0] == 503 and call(base, "/fapi/v2/account")[0] == 200
    started = time.monotonic()
    assert call(base, "/fapi/v1/time")[0] == 200 and time.monotonic() - started >= 0.3
    with pytest.raises(ValueError, match="not a BinanceErrorCode"):
        faults.fail("/fapi/v1/order", code=-4116)  # real Binance code, unknown to the adapter


def test_a_fault_can_match_parameters_and_can_lose_the_answer_of_a_request_it_carried_out(fake):
    base, faults = fake.fake.http_url, fake.fake.faults
    fake.step()  # a mark to fill at
    faults.fail("POST /fapi/v1/order", status=503, params={"reduceOnly": "True"})  # a close, not an entry
    faults.fail("POST /fapi/v1/order", status=503, code=-1007, after=True)
    status, body, _ = call(base, "/fapi/v1/order", "POST", **MARKET_BUY, newClientOrderId="lost-1")
    assert (status, body["code"]) == (503, -1007)
    assert fake.state()["positions"]["BTCUSDT"]["positionAmt"] == "0.1"  # carried out all the same
    assert call(base, "/fapi/v1/order", "POST", **MARKET_BUY)[0] == 200  # the rule is spent
    close = {**MARKET_BUY, "side": "SELL", "reduceOnly": "True"}
    assert call(base, "/fapi/v1/order", "POST", **close)[:2] == (503, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."})  # fmt: skip
    assert call(base, "/fapi/v1/order", "POST", **close)[0] == 200


def test_the_request_log_redacts_signatures_and_keys(fake):
    base = fake.fake.http_url
    call(base, "/fapi/v2/account", timestamp=1, signature="deadbeef")
    entry = fake.fake.requests.calls("/fapi/v2/account")[-1]
    assert entry["params"] == {"timestamp": "1", "signature": "REDACTED"} and entry["apikey"] == "REDACTED"
    assert (
        json.loads(urllib.request.urlopen(base + "/_fake/requests").read())[-1]["path"] == "/fapi/v2/account"
    )


def test_skipped_and_stalled_klines_leave_gaps_while_the_clock_and_matching_go_on(fake):
    import aiohttp

    async def listen():
        url = f"{fake.fake.ws_url}/stream?streams=btcusdt@kline_5m"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            run = asyncio.get_running_loop().run_in_executor
            fake.fake.skip_klines(1)
            await run(None, fake.step, 2)  # the first of the two is skipped
            fake.fake.stall(True)
            await run(None, fake.step, 1)
            fake.fake.stall(False)
            await run(None, fake.step, 1)
            return [json.loads(await ws.receive_str(timeout=5)) for _ in range(2)]

    opens = [m["data"]["k"]["t"] for m in asyncio.run(listen())]
    first_live = fake.fake.clock.now_ms - 4 * INTERVAL_MS
    assert opens == [first_live + INTERVAL_MS, first_live + 3 * INTERVAL_MS]
    assert fake.fake.clock.bars_replayed == 4


# ---- the command line ----------------------------------------------------------------------------------
def test_qt_fake_exchange_refuses_bad_input_with_an_error_line_and_exit_2(catalog, tmp_path, capsys):
    from quantum_trader.cli import main

    assert main(["fake-exchange", "--catalog", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: no catalog at")
    assert main(["fake-exchange", "--catalog", str(catalog), "--symbols", "DOGEUSDT"]) == 2
    assert "unknown instrument DOGEUSDT-PERP.BINANCE" in capsys.readouterr().err
    assert main(["fake-exchange", "--catalog", str(catalog), "--start", "2030-01-01"]) == 2
    assert "after the last bar" in capsys.readouterr().err


def test_qt_fake_exchange_serves_and_prints_the_urls_to_use(catalog):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "quantum_trader.cli", "fake-exchange", "--catalog", str(catalog)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--speed", "0", "--symbols", "BTCUSDT"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        base = lines[1].split()[1]
        assert lines[1].startswith("  base_url_http") and lines[2].split()[1] == base.replace("http", "ws")
        assert call(base, "/fapi/v1/exchangeInfo", key=False)[1]["symbols"][0]["symbol"] == "BTCUSDT"
        assert post_json(base, "/_fake/step", {"bars": 2})["closed"] == 2
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_a_killed_node_restarts_and_reconciles_the_venues_position_and_stop(fake, tmp_path):
    first, _, _ = start_probe(fake, tmp_path, "first")
    try:
        fake.step()
        wait_for(lambda: fake.state()["open_algo_orders"], 10, "the protective stop", first)
    finally:
        first.kill()  # kill -9: no orderly stop, the listen key is never deleted
        first.wait()
    wait_for(
        lambda: not fake.state()["subscriptions"] and not fake.state()["user_streams"], 10, "the sockets"
    )
    second, out, log_file = start_probe(fake, tmp_path, "second", mode="reconcile")
    try:
        fake.step()  # the stop the first node left at the venue fires for the second
        wait_for(lambda: not fake.state()["positions"], 10, "the stop to close the position", second)
    finally:
        stop_probe(second)
    result = json.loads(out.read_text())
    # Cold start (no cache database): the venue's position and resting stop were adopted at start.
    assert result["at_start"] == {
        "positions": [["LONG", "0.100"]],
        "orders": [["STOP_MARKET", "ACCEPTED", True]],
    }
    assert [p["closed"] for p in result["positions"]] == [True], log_file.read_text()[-3000:]
    assert [o["status"] for o in result["orders"] if o["type"] == "STOP_MARKET"] == ["FILLED"]
    assert "[ERROR]" not in log_file.read_text()

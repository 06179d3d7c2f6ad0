"""A fake Binance USDT-M futures venue on loopback, for tests and demos of the real Nautilus Binance adapter.

It is test infrastructure standing in for Binance: the unchanged `TradingNode` with `BinanceLiveDataClientFactory`
and `BinanceLiveExecClientFactory` talks to it over HTTP and websockets. It replays a catalog's bars as live
klines on an accelerated or stepped clock and matches the account's orders against those bars.

Modules: `clock` (catalog bars -> klines, the replay clock), `state` (account, orders, positions, matching),
`rest` (the /fapi routes and the /_fake control API), `streams` (market and user websockets), `faults`
(injected errors, delays, the request log), `server` (assembly, replay ticker, a threaded runner).

Adapter facts found while building it (Nautilus 1.231, beyond /work/shared/NAUTILUS_NOTES.md):
- `BinanceFuturesAlgoOrderCancelResponse.code` is a *string* ("200"); an int fails to decode. The
  cancel-all answers (`BinanceStatusCode`) and marginType answer carry an int code.
- Reconciliation reads `createTime` of every algo row (`_parse_algo_order_report` compares it to the lookback
  start), so it must never be null. Algo rows with a non-empty `actualOrderId` are skipped there in favour of the
  triggered regular order, which therefore must be in `allOrders` with `clientOrderId == clientAlgoId`.
- After `ALGO_UPDATE TRIGGERED` the order's venue id becomes the new matching-engine order id (OrderUpdated,
  seen twice when ORDER_TRADE_UPDATE NEW follows at once). That NEW also yields a second OrderAccepted: the
  engine logs the invalid transition at debug, yet the strategy still receives the event (seen in the probe).
  The fill comes from ORDER_TRADE_UPDATE TRADE; FINISHED only back-fills a missed fill (commission 0).
- The adapter's handlers read order state from the cache, which the engine updates from a queue. Sent in one
  burst, FINISHED was handled before the TRADE's fill was applied: the adapter emitted a synthetic fill and the
  engine logged "Order overfill rejected" (ERROR; no double fill). The fake spaces user events by 20 ms.
- `request_bars` history is filtered by the node's wall clock (`ts_event < now`), so klines stamped in the
  node's future vanish from warm-up. Hence the replay is aligned to wall-clock time by default (see `clock`).
- Order and trade timestamps must be near the node's wall clock: reconciliation filters allOrders by
  `reconciliation_lookback_mins` on the client side. The fake stamps them with wall-clock time.
- Binance's duplicate-clientOrderId code -4116 is not in `BinanceErrorCode`; the fake answers -2010 instead.
- `TradingNode` installs signal handlers on its loop, so it must run in a main thread: tests run it in a
  subprocess and the fake in a thread of the test process.
"""

from live.fake_exchange.server import FakeBinance, ThreadedFake
from live.fake_exchange.state import VenueError

__all__ = ["FakeBinance", "ThreadedFake", "VenueError"]

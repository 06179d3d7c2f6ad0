"""A workaround for a Nautilus 1.231 Binance USDT-M exec client bug that flattens a running node's position.

Found by tests/test_live_faults.py (websocket drop), against the local fake exchange:

The exec client builds its set of "active symbols" for reconciliation from two sources with two spellings:
the cache's open orders and positions give Nautilus symbols (`BTCUSDT-PERP`, `_get_cache_active_symbols`),
`positionRisk` gives Binance symbols (`BTCUSDT`). With a position open at the venue and in the cache, the set
holds both, and `generate_fill_reports` asks `userTrades` once for each; both answer the same trades, so every
fill is reported twice. The execution engine's `adjust_fills_for_partial_window` then sees fills for twice the
venue position and inserts a synthetic opposite fill (venue order id `S-...`), which closes the strategy's
position in the cache while the venue still holds it. The Exit Brain sees the position closed and cancels its
stop: the venue position is left open without a stop.

When it happens: every reconciliation of a node that holds a position, i.e. after every user-stream reconnect
(the client rotates its listen key and runs a full mass-status reconciliation, `_reconcile_after_resubscribe`)
and at a warm restart with the cache in Redis (probably the root of issue #4736, which live/node.py works
around by clearing the cached orders and positions; unverified whether this fix alone would do).

The fix here: `_get_cache_active_symbols` returns Binance symbols, and fill reports are de-duplicated by
(instrument, venue order id, trade id) with a WARNING if any were dropped. Nothing else in the client changes.
"""

from nautilus_trader.adapters.binance import BinanceLiveExecClientFactory
from nautilus_trader.adapters.binance.common.symbol import BinanceSymbol


class QTBinanceLiveExecClientFactory(BinanceLiveExecClientFactory):
    """Nautilus' Binance exec client factory, with `patch_exec_client` applied to what it builds."""

    @staticmethod
    def create(loop, name, config, msgbus, cache, clock):  # type: ignore[override]
        client = BinanceLiveExecClientFactory.create(loop, name, config, msgbus, cache, clock)
        patch_exec_client(client)
        return client


def patch_exec_client(client) -> None:
    cache_symbols = client._get_cache_active_symbols
    generate_fill_reports = client.generate_fill_reports

    def active_symbols() -> set[str]:
        return {str(BinanceSymbol(symbol)) for symbol in cache_symbols()}

    async def fill_reports(command):
        reports = await generate_fill_reports(command)
        seen, unique = set(), []
        for report in reports:
            key = (report.instrument_id, report.venue_order_id, report.trade_id)
            if key not in seen:
                seen.add(key)
                unique.append(report)
        if len(unique) < len(reports):
            client._log.warning(
                f"Dropped {len(reports) - len(unique)} duplicated FillReport(s) (same trade id) before "
                "reconciliation: counted twice they would flatten the cached position (live/binance_fixes.py)"
            )
        return unique

    client._get_cache_active_symbols = active_symbols
    client.generate_fill_reports = fill_reports

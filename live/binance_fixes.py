"""Workarounds for three Nautilus 1.231 Binance USDT-M exec client hazards.

All found by tests/test_live_faults.py, against the local fake exchange.

1. Fills counted twice flatten a running node's position.

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
(instrument, venue order id, trade id) with a WARNING if any were dropped.

2. A stop that triggered while the user stream was down is never reconciled.

An algo order (STOP_MARKET, ...) has its algoId as venue order id until ALGO_UPDATE TRIGGERED tells the client
the id of the regular order it became (an OrderUpdated). If that event is lost (the stream was down, or the
listen key was being rotated), the reconciliation reports the triggered regular order (its client order id is
the algo order's) under the new id; the engine refuses to apply its fill to an order with another venue order id
("Error on applying OrderFilled ... was not equal to 'event.venue_order_id'"), and the node keeps the position
and the stop open while the venue is flat.

The fix here: in the mass status, the report of such an order, and its fills, are filed under the venue order
id the cache holds for it (a WARNING names both ids), so the engine applies the fill and closes the position.

3. A submit answered -1007 ("execution status unknown") is sent again.

-1007 is in the client's retry set (`BINANCE_RETRY_ERRORS`), so with `max_retries` (live/config.py `retries`)
a submit whose answer was lost is re-sent with the same client order id. If the first one reached the matching
engine and is no longer open (a market order that filled), Binance takes the second as a new order: the entry
is doubled (seen with the fake: 4 held where 2 were ordered).

The fix here: a submit that ends in -1007 is neither retried nor rejected. A WARNING says so, and the order
stays SUBMITTED: its user-stream events settle it if it reached the venue, otherwise Nautilus' in-flight check
queries it (after 5 s, every 2 s, 5 times) and resolves it from the venue's answer. Cancels are still retried
on -1007 (cancelling twice is harmless).

Nothing else in the client changes.
"""

from nautilus_trader.adapters.binance import BinanceLiveExecClientFactory
from nautilus_trader.adapters.binance.common.constants import BINANCE_FUTURES_ALGO_ORDER_TYPES
from nautilus_trader.adapters.binance.common.enums import BinanceErrorCode
from nautilus_trader.adapters.binance.common.symbol import BinanceSymbol
from nautilus_trader.adapters.binance.http.error import BinanceError, get_binance_error_code


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

    generate_mass_status = client.generate_mass_status

    async def mass_status(lookback_mins=None):
        status = await generate_mass_status(lookback_mins)
        if status is not None:
            refile_triggered_algo_orders(client, status)
        return status

    def status_unknown_is_not_resent(submit):
        async def submit_once(order, *args, **kwargs):
            try:
                return await submit(order, *args, **kwargs)
            except BinanceError as err:
                if get_binance_error_code(err) != BinanceErrorCode.TIMEOUT:
                    raise
                client._log.warning(
                    f"Submit of {order.client_order_id!r}: execution status unknown ({err.message}); not sent "
                    "again (it may be at the venue): left SUBMITTED for the user stream or the in-flight check "
                    "to settle (live/binance_fixes.py)"
                )
                return None

        return submit_once

    client._get_cache_active_symbols = active_symbols
    client.generate_fill_reports = fill_reports
    client.generate_mass_status = mass_status
    client._submit_order_method = {
        kind: status_unknown_is_not_resent(submit) for kind, submit in client._submit_order_method.items()
    }


def refile_triggered_algo_orders(client, status) -> int:
    """File the reports of triggered algo orders under the venue order id the cache knows (bug 2 above)."""
    refiled = 0
    for venue_order_id, report in list(status._order_reports.items()):
        order = client._cache.order(report.client_order_id) if report.client_order_id else None
        if order is None or order.venue_order_id is None or order.venue_order_id == venue_order_id:
            continue
        if order.order_type not in BINANCE_FUTURES_ALGO_ORDER_TYPES:
            continue
        known = order.venue_order_id
        del status._order_reports[venue_order_id]
        report.venue_order_id = known
        status._order_reports[known] = report
        fills = status._fill_reports.pop(venue_order_id, [])
        for fill in fills:
            fill.venue_order_id = known
        if fills:
            status._fill_reports.setdefault(known, []).extend(fills)
        refiled += 1
        client._log.warning(
            f"{order.client_order_id!r} ({order.type_string()}) triggered at the venue as order {venue_order_id} "
            f"while its ALGO_UPDATE was missed: reconciling it under {known} (live/binance_fixes.py)"
        )
    return refiled

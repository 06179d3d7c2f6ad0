"""Makes Nautilus' per-trade records linear in the number of trades.

Nautilus 1.231's `PortfolioAnalyzer` appends every closed position's PnL with `pd.concat` onto the
series so far, and every position return by enlarging a series with `.loc`, so a run with n trades spends
O(n^2) in pandas: with 100 symbols and tens of thousands of trades that was 30x the whole engine's time
(benchmarks/bench_backtest.py). Here the PnL appends are buffered in lists and turned into the same
series, in the same order, the first time anything reads them (`realized_pnls`, which
`calculate_statistics` and the tearsheet go through); position returns are summed in a dict, in the same
order of additions, and become a series once per `add_positions`.
"""

import pandas as pd
from numpy import float64


def buffer_trade_records(analyzer) -> None:
    pending: list[tuple[dict, dict, object, str, float, int | None]] = []

    def append(pnls, timestamps, position_id, realized_pnl, ts_event) -> None:
        pending.append(
            (pnls, timestamps, realized_pnl.currency, position_id.value, realized_pnl.as_double(), ts_event)
        )

    def flush() -> None:
        groups: dict[tuple[int, int, object], list] = {}
        for pnls, timestamps, currency, pid, value, ts in pending:
            groups.setdefault((id(pnls), id(timestamps), currency), [pnls, timestamps, currency, []])[
                3
            ].append((pid, value, ts))
        pending.clear()
        for pnls, timestamps, currency, rows in groups.values():
            ids = [r[0] for r in rows]
            new_pnls = pd.Series([r[1] for r in rows], index=ids, dtype=float64)
            new_ts = pd.Series(
                [int(r[2]) if r[2] is not None else None for r in rows], index=ids, dtype=object
            )
            pnls[currency] = _extend(pnls.get(currency), new_pnls)
            timestamps[currency] = _extend(timestamps.get(currency), new_ts)

    original_realized_pnls = analyzer.realized_pnls

    def realized_pnls(*args, **kwargs):
        flush()
        return original_realized_pnls(*args, **kwargs)

    analyzer._append_pnl_record = append
    analyzer.realized_pnls = realized_pnls
    analyzer.add_positions = lambda positions: _add_positions(analyzer, positions)


def _add_positions(analyzer, positions: list) -> None:
    """`PortfolioAnalyzer.add_positions` with the position returns gathered in one pass."""
    from nautilus_trader.core.datetime import unix_nanos_to_dt

    analyzer._positions += positions
    returns = dict(analyzer._position_returns.items())
    for position in positions:
        if position.realized_pnl is None:
            continue  # empty shell positions, as Nautilus skips them
        analyzer.add_trade(position.id, position.realized_pnl, position.ts_last)
        if position.ts_closed > 0:
            ts = unix_nanos_to_dt(position.ts_closed)
            returns[ts] = returns.get(ts, 0.0) + float(position.realized_return)
    if returns:
        analyzer._position_returns = pd.Series(list(returns.values()), index=list(returns), dtype=float64)
    analyzer._sync_returns_alias()


def _extend(existing: pd.Series | None, new: pd.Series) -> pd.Series:
    return new if existing is None else pd.concat([existing, new])

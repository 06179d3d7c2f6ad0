"""The linear-time trade records give exactly what Nautilus' own PortfolioAnalyzer gives."""

import pandas as pd
from nautilus_trader.analysis.analyzer import PortfolioAnalyzer
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.identifiers import PositionId
from nautilus_trader.model.objects import Money

from backtests.analyzer_fix import buffer_trade_records
from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from catalog.instruments import VENUE


def test_patched_analyzer_reports_the_same_pnls_and_returns_as_nautilus(walk_catalog):
    cfg = parse_backtest_config(
        {
            "catalog": str(walk_catalog),
            "universe": {"select": "all"},
            "strategies": [
                {"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": 5, "slow_period": 20}}
            ],
            "report": {"tearsheet": False},
        }
    )
    engine = run_backtest(cfg, progress=False).engine
    positions = engine.cache.positions()
    account = engine.cache.account_for_venue(VENUE)
    assert len(positions) == 3  # NETTING: one position per symbol, reopened many times
    closes = [(PositionId(f"P-{i % 40}"), Money(float(i % 7) - 3.0, USDT), 1_000 * i) for i in range(500)]

    results = []
    for patched in (False, True):
        analyzer = PortfolioAnalyzer()
        if patched:
            buffer_trade_records(analyzer)
        for position_id, pnl, ts in closes:  # what the portfolio records at every close during a run
            analyzer.record_trade(position_id, pnl, ts)
        analyzer.calculate_statistics(account, positions)
        results.append(
            (analyzer.realized_pnls(USDT), analyzer.returns(), analyzer.get_performance_stats_pnls())
        )
    pd.testing.assert_series_equal(results[0][0], results[1][0])
    pd.testing.assert_series_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]

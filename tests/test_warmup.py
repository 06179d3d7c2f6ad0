"""Warm-up: a strategy with `warmup_bars` requests history at start and is ready at its first bar.

Live, the history comes from the exchange (Nautilus' request_bars -> on_historical_data); in a backtest the same
request is answered from the catalog, so these tests drive the code path the node runs.
"""

import pandas as pd

from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from tests.conftest import build_catalog, candles, random_walk

SYMBOLS = ["AAAUSDT", "BBBUSDT"]
START = pd.Timestamp("2025-01-01", tz="UTC")
FIRST_TRADED_CLOSE = START + pd.Timedelta(minutes=5 * 200)  # period.start: 200 bars of history before it


def ema_config(catalog, **strategy) -> dict:
    return {
        "catalog": str(catalog),
        "universe": {"select": "all"},
        "period": {
            "start": FIRST_TRADED_CLOSE.isoformat(),
            "end": (START + pd.Timedelta(days=2)).isoformat(),
        },
        "strategies": [
            {
                "path": "strategies.ema_cross:EmaCross",
                "config": {"fast_period": 12, "slow_period": 26, **strategy},
            }
        ],
        "report": {"tearsheet": False},
    }


def first_entry_times(catalog, **strategy) -> list[pd.Timestamp]:
    artifacts = run_backtest(parse_backtest_config(ema_config(catalog, **strategy)), progress=False)
    orders = artifacts.engine.kernel.cache.orders()
    return sorted({pd.Timestamp(o.ts_init, tz="UTC") for o in orders})[:1]


def test_with_warmup_the_indicators_are_ready_at_the_first_bar_and_it_trades_there(tmp_path):
    frames = {s: candles(random_walk(600, seed=i)) for i, s in enumerate(SYMBOLS)}
    build_catalog(tmp_path / "catalog", frames)

    cold = first_entry_times(tmp_path / "catalog")
    warm = first_entry_times(tmp_path / "catalog", warmup_bars=60)

    first_bar = FIRST_TRADED_CLOSE
    # without history the slow EMA needs 26 bars of the period; with 60 bars of history it is ready at once
    assert cold[0] >= first_bar + pd.Timedelta(minutes=5 * 25)
    assert first_bar <= warm[0] <= first_bar + pd.Timedelta(minutes=5)


def test_warmup_history_is_never_traded_and_the_first_live_bar_is_not_seen_twice(tmp_path):
    frames = {s: candles(random_walk(600, seed=i)) for i, s in enumerate(SYMBOLS)}
    build_catalog(tmp_path / "catalog", frames)
    artifacts = run_backtest(
        parse_backtest_config(ema_config(tmp_path / "catalog", warmup_bars=60)), progress=False
    )
    strategy = artifacts.strategies[0]
    fills = [o for o in artifacts.engine.kernel.cache.orders() if o.is_closed and o.filled_qty.as_double()]
    assert fills, "the warmed-up strategy traded"
    assert min(o.ts_last for o in fills) >= FIRST_TRADED_CLOSE.value  # nothing filled on history
    assert not strategy.warming_up
    # each symbol's slow EMA saw the 60 history bars and each bar of the run exactly once
    bars_in_run = artifacts.bars // len(SYMBOLS)
    for _, slow in strategy._emas.values():
        assert slow.count == 60 + bars_in_run

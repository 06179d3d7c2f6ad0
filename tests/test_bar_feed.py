"""Bars are streamed into the engine a slice at a time: the same bars, in the same order, and the same trades."""

import numpy as np
import pandas as pd
import pytest

from backtests.bar_feed import BarFeed
from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import resolve_period, run_backtest, select_universe
from quantum_trader.config import ConfigError
from tests.conftest import build_catalog, candles, random_walk


def uneven_frames() -> dict[str, pd.DataFrame]:
    """A full symbol, one listed later, and one with a hole of 50 bars that reopens with a gap."""
    holed = candles(random_walk(1200, seed=3))
    holed = holed.drop(index=range(600, 650)).reset_index(drop=True)
    return {
        "FULLUSDT": candles(random_walk(1200, seed=1)),
        "LATEUSDT": candles(random_walk(900, seed=2), start="2025-01-02 01:00"),
        "HOLEUSDT": holed,
    }


def backtest_config(catalog, **extra):
    return parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "strategies": [
                {"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": 5, "slow_period": 20}}
            ],
            "actors": [{"path": "actors.emergency_stop:EmergencyStop"}],  # timers that cross slices
            "report": {"tearsheet": False},
            **extra,
        }
    )


def test_streamed_bars_equal_the_catalogs_bars_in_engine_order(tmp_path):
    store = build_catalog(tmp_path / "catalog", uneven_frames())
    cfg = backtest_config(store.path, period={"start": "2025-01-01 12:00", "end": "2025-01-04 12:00"})
    universe = select_universe(store, cfg)
    start, end = resolve_period(store, cfg, universe)
    feed = BarFeed.load(store, universe.bar_types, universe.instruments, start, end)

    streamed = [bar for chunk in feed.slices(chunk_days=0.3) for bar in chunk]

    expected = [bar for bt in universe.bar_types for bar in store.read_bars(bt, start=start, end=end)]
    expected.sort(key=lambda bar: bar.ts_init)  # what add_data + sort_data do: stable, universe order on ties
    assert len(streamed) == len(feed) == len(expected) > 2000
    assert [repr(b) for b in streamed] == [repr(b) for b in expected]


def test_a_bar_that_opens_away_from_the_last_close_is_a_gap(tmp_path):
    store = build_catalog(tmp_path / "catalog", uneven_frames())
    cfg = backtest_config(store.path)
    universe = select_universe(store, cfg)
    start, end = resolve_period(store, cfg, universe)

    gaps = BarFeed.load(store, universe.bar_types, universe.instruments, start, end).gaps()

    frame = uneven_frames()["HOLEUSDT"]
    reopened = frame.iloc[600]  # the first bar after the hole; its open is the close of bar 649
    (key,) = gaps
    assert str(key[0]) == "HOLEUSDT-PERP.BINANCE"
    assert key[1] == (reopened["date"] + pd.Timedelta(minutes=5)).value
    assert gaps[key] == reopened["open"] != frame.iloc[599]["close"]


def test_the_slice_length_does_not_change_a_single_trade(tmp_path):
    store = build_catalog(tmp_path / "catalog", uneven_frames())
    stats = {}
    for days in (0.05, 1.0, 1000.0):  # 14 bars a slice, a day, everything at once
        result = run_backtest(backtest_config(store.path, stream_days=days), progress=False)
        stats[days] = write_report(result, tmp_path / f"run-{days}")
    assert stats[1000.0]["trades"] > 20
    assert np.isfinite(stats[1000.0]["final_equity"])
    for days in (0.05, 1.0):
        assert stats[days]["fingerprint"] == stats[1000.0]["fingerprint"]
        assert stats[days]["final_equity"] == stats[1000.0]["final_equity"]
        assert stats[days]["risk_events"] == stats[1000.0]["risk_events"]


def test_a_slice_length_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="stream_days"):
        backtest_config(tmp_path, stream_days=0)

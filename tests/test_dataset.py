"""The training dataset: pooled anchors, labels from the future only, time splits with purge and embargo."""

import numpy as np
import pandas as pd
import pytest

from ml.dataset import SplitConfig, SymbolBars, full_windows, pool, split_by_time, subsample
from ml.features import N_FEATURES, WARMUP_BARS
from ml.metrics import LeakageSuspected, baselines, check_leakage, regression_metrics
from quantum_trader.config import ConfigError, parse_config
from tests.conftest import candles, random_walk

FIVE_MIN = 300 * 10**9


def symbol_bars(n: int, seed: int, start: str = "2025-01-01") -> SymbolBars:
    df = candles(random_walk(n, seed=seed), start=start)
    close_time = (df["date"] + pd.Timedelta("5min")).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return SymbolBars(f"S{seed}USDT", df, close_time)


@pytest.fixture(scope="module")
def pooled():
    return pool(
        [symbol_bars(2500, 1), symbol_bars(2500, 2), symbol_bars(1800, 3, start="2025-01-03")], 12, 64
    )


def test_label_is_the_forward_log_return_over_the_horizon(pooled):
    closes = np.exp(pooled.log_close)
    t = pooled.rows[:50]
    np.testing.assert_allclose(pooled.labels[:50], np.log(closes[t + 12] / closes[t]), atol=1e-12)
    np.testing.assert_array_equal(pooled.paths(slice(0, 50))[:, -1], pooled.labels[:50])


def test_every_anchor_has_a_full_finite_window_and_no_anchor_lacks_its_label(pooled):
    assert pooled.rows.min() >= WARMUP_BARS - 1 + 63
    windows = pooled.windows(np.arange(len(pooled)), 64)
    assert windows.shape == (len(pooled), 64, N_FEATURES)
    assert np.isfinite(windows).all()
    # the last 12 bars of each symbol have no label yet and are not anchors
    ends = np.cumsum([2500, 2500, 1800]) - 1
    assert not np.isin(pooled.rows, np.concatenate([np.arange(e - 11, e + 1) for e in ends])).any()


def test_windows_never_cross_from_one_symbol_into_the_next(pooled):
    first_rows_of_symbol_2 = pooled.rows[pooled.symbol_idx == 1]
    assert first_rows_of_symbol_2.min() - 63 >= 2500


def test_full_windows_needs_lookback_finite_rows_in_a_row():
    f = np.ones((10, 2))
    f[4, 1] = np.nan
    assert full_windows(f, 3).tolist() == [False, False, True, True, False, False, False, True, True, True]


@pytest.mark.parametrize("embargo", [0, 12, 40])
def test_no_training_label_reaches_into_validation_or_test(pooled, embargo):
    splits = split_by_time(pooled, SplitConfig(embargo_bars=embargo), FIVE_MIN)
    label_end = splits.train.times.max() + 12 * FIVE_MIN
    assert label_end < splits.validation.times.min()
    assert splits.validation.times.max() + 12 * FIVE_MIN < splits.test.times.min()
    # the gap between consecutive splits is purge (= horizon) + embargo bars, at least
    assert splits.validation.times.min() - splits.train.times.max() >= (12 + embargo) * FIVE_MIN
    assert splits.test.times.min() - splits.validation.times.max() >= (12 + embargo) * FIVE_MIN


def test_splits_are_time_ordered_and_the_same_for_every_symbol(pooled):
    splits = split_by_time(pooled, SplitConfig(), FIVE_MIN)
    assert splits.train.times.max() < splits.validation.times.min() < splits.test.times.min()
    for part in (splits.train, splits.validation, splits.test):
        assert set(np.unique(part.symbol_idx)) == {0, 1, 2}


def test_a_purge_shorter_than_the_horizon_is_refused(pooled):
    with pytest.raises(ConfigError, match="purge_bars: must be at least the label horizon"):
        split_by_time(pooled, SplitConfig(purge_bars=5), FIVE_MIN)


def test_split_fractions_must_add_up_to_one():
    with pytest.raises(ConfigError, match="must be 1"):
        parse_config(SplitConfig, {"train": 0.8, "validation": 0.3, "test": 0.1})


def test_subsample_is_seeded_and_keeps_time_order(pooled):
    a, b = subsample(pooled, 500, seed=3), subsample(pooled, 500, seed=3)
    assert len(a) == 500
    np.testing.assert_array_equal(a.rows, b.rows)
    assert (np.diff(a.rows) > 0).all()


def test_metrics_beside_the_naive_baselines():
    rng = np.random.default_rng(0)
    actual = rng.normal(0, 0.01, 5000)
    zero = baselines(np.zeros(5000), actual)["zero"]
    assert zero["directional_accuracy"] == 0.5
    assert zero["rmse"] == pytest.approx(np.sqrt((actual**2).mean()))
    perfect = regression_metrics(actual, actual)
    assert (
        perfect["rmse"] == 0
        and perfect["directional_accuracy"] == 1
        and perfect["rank_ic"] == pytest.approx(1)
    )


def test_a_forecast_that_knows_the_label_is_refused_as_leakage():
    rng = np.random.default_rng(0)
    actual = rng.normal(0, 0.01, 5000)
    leaked = regression_metrics(actual + rng.normal(0, 0.001, 5000), actual)
    with pytest.raises(LeakageSuspected, match="not skill"):
        check_leakage("xgboost", "validation", leaked, len(actual))
    honest = regression_metrics(0.05 * actual + rng.normal(0, 0.01, 5000), actual)
    check_leakage("xgboost", "validation", honest, len(actual))  # a small edge passes

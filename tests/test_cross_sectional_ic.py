"""Per-timestamp cross-sectional rank IC: ranking symbols against each other, not timing the market."""

import numpy as np
import pytest

from ml.metrics import cross_sectional_ic, spearman


def test_a_perfect_ranking_at_every_timestamp_scores_one():
    t = np.repeat([0, 1, 2], 4)
    actual = np.array([1, 2, 3, 4, 4, 3, 2, 1, 0.1, 0.3, 0.2, 0.4])
    ic = cross_sectional_ic(actual * 10, actual, t)
    assert ic["mean"] == pytest.approx(1.0)
    assert ic["n_timestamps"] == 3


def test_market_timing_alone_has_no_cross_sectional_ic_though_the_pooled_ic_is_high():
    rng = np.random.default_rng(1)
    t = np.repeat(np.arange(300), 8)
    market = np.repeat(rng.normal(size=300), 8)
    actual = 5 * market + rng.normal(size=t.size)
    forecast = market + rng.normal(size=t.size) * 1e-6  # the market's move, with no view across symbols
    assert spearman(forecast, actual) > 0.8
    ic = cross_sectional_ic(forecast, actual, t)
    assert abs(ic["mean"]) < 0.05
    assert abs(ic["t_stat"]) < 3


def test_t_stat_is_the_mean_over_its_standard_error():
    rng = np.random.default_rng(2)
    t = np.repeat(np.arange(100), 6)
    actual = rng.normal(size=t.size)
    ic = cross_sectional_ic(actual + rng.normal(size=t.size), actual, t)
    assert ic["t_stat"] == pytest.approx(ic["mean"] / (ic["std"] / np.sqrt(ic["n_timestamps"])))
    assert ic["t_stat"] > 5


def test_timestamps_with_too_few_names_or_no_dispersion_are_left_out():
    t = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([1, 2, 5, 5, 5, 1, 2, 3], dtype=float)  # t=0: 2 names; t=1: constant forecast
    actual = np.array([1, 2, 1, 2, 3, 3, 2, 1], dtype=float)
    ic = cross_sectional_ic(pred, actual, t)
    assert ic["n_timestamps"] == 1
    assert ic["mean"] == pytest.approx(-1.0)


def test_nan_rows_are_dropped_not_propagated():
    t = np.repeat([0, 1], 4)
    actual = np.array([1, 2, 3, 4, 1, 2, 3, np.nan])
    ic = cross_sectional_ic(actual.copy(), actual, t)
    assert ic["mean"] == pytest.approx(1.0)
    assert ic["n_timestamps"] == 2

"""Training targets (raw, vol-scaled, demeaned) and the cross-sectional IC beside the pooled one in the reports."""

import json

import numpy as np
import pandas as pd
import pytest

from ml.dataset import SymbolBars, make_target, pool, subsample_timestamps
from ml.ensemble import Ensemble, Member
from ml.metrics import CROSS_SECTIONAL
from ml.train import TrainConfig, format_metrics, train
from quantum_trader.config import ConfigError, parse_config
from tests.conftest import build_catalog, candles, random_walk, reverting_walk

H = 12


def bars_of(closes, seed: int, start: str = "2025-01-01") -> SymbolBars:
    df = candles(closes, start=start)
    close_time = (df["date"] + pd.Timedelta("5min")).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return SymbolBars(f"S{seed}USDT", df, close_time)


def three(n_last: int = 1800) -> list[SymbolBars]:
    # the third symbol ends early: after it, two symbols remain; the first runs on alone at the very end
    return [
        bars_of(random_walk(2500, 1), 1),
        bars_of(random_walk(2450, 2), 2),
        bars_of(random_walk(n_last, 3), 3),
    ]


@pytest.fixture(scope="module")
def pooled():
    return pool(three(), H, 64)


def test_raw_is_the_pool_itself(pooled):
    assert make_target(pooled, "raw") is pooled
    np.testing.assert_array_equal(pooled.forward_returns, pooled.labels)


def test_vol_scaled_is_the_forward_return_over_the_trailing_volatility_known_at_t(pooled):
    ws = make_target(pooled, "vol_scaled", vol_window=288)
    np.testing.assert_array_equal(ws.forward_returns, pooled.labels)  # same anchors, raw kept beside
    i = 700
    t = ws.rows[i]
    past = np.diff(pooled.log_close[t - 288 : t + 1])  # the 288 one-bar returns ending at t's close
    expected = ws.forward_returns[i] / (max(past.std(ddof=1), 1e-4) * np.sqrt(H))
    assert ws.labels[i] == pytest.approx(expected, rel=1e-9)
    assert 0.5 < ws.labels.std() < 2  # roughly in units of its own spread


def test_vol_scaling_never_reads_a_price_after_t():
    base = three()
    changed = [SymbolBars(b.symbol, b.frame.copy(), b.close_time) for b in base]
    k = 1500  # every close of the first symbol from bar k on is different
    changed[0].frame.loc[k:, "close"] *= np.exp(np.random.default_rng(7).normal(0, 0.02, 2500 - k))
    a = make_target(pool(base, H, 64), "vol_scaled")
    b = make_target(pool(changed, H, 64), "vol_scaled")
    before = (a.symbol_idx == 0) & (a.rows < k)
    np.testing.assert_array_equal(a.scale[before], b.scale[before])  # the scale known at t is the same
    after = (a.symbol_idx == 0) & (a.rows >= k + 1)
    assert not np.allclose(a.scale[after], b.scale[after])  # (the change is seen once it is in the past)


def test_the_volatility_window_never_reaches_into_the_previous_symbols_bars(pooled):
    ws = make_target(pooled, "vol_scaled", vol_window=600)  # longer than the features' warm-up
    starts = pooled.symbol_starts[ws.symbol_idx]
    assert (ws.rows - starts >= 600).all()  # earlier anchors have no scale yet and are left out
    assert set(np.unique(ws.symbol_idx)) == {0, 1, 2}


def test_the_volatility_floor_bounds_the_scale(pooled):
    ws = make_target(pooled, "vol_scaled", vol_floor=0.5)
    np.testing.assert_allclose(ws.scale, 0.5 * np.sqrt(H))


@pytest.mark.parametrize("target", ["demeaned", "vol_scaled_demeaned"])
def test_demeaned_labels_have_zero_mean_across_the_symbols_at_each_timestamp(pooled, target):
    ws = make_target(pooled, target)
    means = pd.Series(ws.labels).groupby(ws.times).mean()
    assert np.abs(means.to_numpy()).max() < 1e-12
    # the momentum baseline is put in the same units: it too has no cross-sectional mean
    assert np.abs(pd.Series(ws.last).groupby(ws.times).mean().to_numpy()).max() < 1e-12
    np.testing.assert_allclose(ws.paths()[:, -1], ws.labels, atol=1e-15)  # the nets' paths end on the label


def test_demeaned_is_the_forward_return_minus_the_mean_of_the_symbols_with_a_label_at_t(pooled):
    ws = make_target(pooled, "demeaned")
    counts = pd.Series(pooled.times).value_counts()
    t3 = counts.index[counts == 3][100]
    t2 = counts.index[counts == 2][0]  # the third symbol has no label there: not part of the mean
    for t in (t3, t2):
        raw = pooled.labels[pooled.times == t]
        np.testing.assert_allclose(ws.labels[ws.times == t], raw - raw.mean(), atol=1e-15)
    alone = counts.index[counts == 1]
    assert len(alone) and not np.isin(ws.times, alone).any()  # one symbol alone has no cross-section


def test_an_unknown_target_is_a_config_error_listing_the_allowed_ones(pooled):
    with pytest.raises(ConfigError, match=r"dataset\.target.*'raw'.*'vol_scaled'.*'demeaned'"):
        parse_config(TrainConfig, {"dataset": {"target": "zscore"}})
    with pytest.raises(ConfigError, match=r"dataset.target: unknown target 'zscore'; allowed: \['raw'"):
        make_target(pooled, "zscore")


def test_timestamp_subsampling_keeps_whole_cross_sections(pooled):
    part = subsample_timestamps(pooled, 900, seed=3)
    assert 800 <= len(part) <= 900
    counts = pd.Series(pooled.times).value_counts()
    kept = pd.Series(part.times).value_counts()
    assert (kept == counts[kept.index]).all()
    assert (np.diff(part.rows) > 0).all()  # in the pool's order, as subsample keeps it


def test_votes_do_not_depend_on_the_target_scale():
    """Votes are in units of each model's validation spread: a forecast 100x larger (a vol-scaled target)
    with a spread and centre 100x larger votes exactly alike."""
    skill = {"mse": 1.0, "zero_mse": 2.0, "pred_std": 1.0}
    f = np.random.default_rng(0).normal(0, 0.002, (50, 1))
    small = Ensemble([Member("xgboost", "a", None, 1.0, 0.002, 0.0001, skill)]).combine(f)
    big = Ensemble([Member("xgboost", "a", None, 1.0, 0.2, 0.01, skill)]).combine(f * 100)
    np.testing.assert_allclose(big.votes, small.votes, rtol=1e-12)
    np.testing.assert_array_equal(big.direction, small.direction)


@pytest.fixture(scope="module")
def demeaned_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    frames = {
        s: candles(reverting_walk(1400, seed=20 + i)) for i, s in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT"])
    }
    build_catalog(root / "catalog", frames)
    cfg = TrainConfig.model_validate(
        {
            "catalog": str(root / "catalog"),
            "universe": {"select": "all"},
            "dataset": {
                "target": "demeaned",
                "max_train_rows": 2000,
                "max_eval_rows": 450,
                "eval_sample": "timestamps",
            },
            "models": {
                "xgboost": {"params": {"n_estimators": 30}},
                "lightgbm": {"params": {"n_estimators": 30}},
            },
            "registry": str(root / "models"),
            "promote": False,
        }
    )
    return root, train(cfg, root / "train", progress=False)


def test_the_report_has_the_cross_sectional_ic_beside_the_pooled_one_for_models_and_baselines(demeaned_run):
    root, result = demeaned_run
    table = pd.read_csv(root / "train" / "metrics.csv", index_col=[0, 1])
    assert {"rank_ic", *CROSS_SECTIONAL} <= set(table.columns)
    for model in ("xgboost", "lightgbm", "zero", "last"):
        for split in ("validation", "test"):
            assert (model, split) in table.index
    # a model and the momentum baseline rank whole cross-sections; the zero forecast ranks nothing
    assert table.loc[("xgboost", "validation"), "cs_ic_n"] > 100
    assert table.loc[("last", "test"), "cs_ic_n"] > 100
    assert table.loc[("zero", "validation"), "cs_ic_n"] == 0 and np.isnan(
        table.loc[("zero", "validation"), "cs_ic"]
    )
    saved = json.loads((root / "train" / "metrics.json").read_text())
    assert set(CROSS_SECTIONAL) <= set(saved["metrics"]["lightgbm"]["test"])
    assert "cs_ic" in format_metrics(result)


def test_the_target_is_stored_with_each_model(demeaned_run):
    root, result = demeaned_run
    for model_id in result.model_ids.values():
        meta = json.loads(next((root / "models").rglob(f"{model_id}/meta.json")).read_text())
        assert meta["label"]["target"] == "demeaned"
        assert meta["label"]["horizon"] == H
    # the validation rule of ml.skill is scored on the target: zero = no symbol beats the average
    val = result.splits.validation
    assert result.skill["xgboost"]["zero_mse"] == pytest.approx(float(np.mean(val.labels**2)))


def test_walkforward_forecast_metrics_add_the_cross_sectional_ic():
    from backtests.walkforward import forecast_metrics

    rng = np.random.default_rng(5)
    ts = pd.date_range("2025-01-01", periods=200, freq="5min", tz="UTC").repeat(4)
    realised = rng.normal(0, 0.01, len(ts))
    frame = pd.DataFrame(
        {"ts_event": ts, "forecast": realised + rng.normal(0, 0.01, len(ts)), "realised": realised}
    )
    m = forecast_metrics(frame)
    assert m["cs_ic_n"] == 200
    assert 0.3 < m["cs_ic"] < 0.9 and m["cs_ic_t"] > 5

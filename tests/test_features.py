"""Specification of the 49-feature set: shape, warm-up, scale invariance, and online == batch parity."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.features import FEATURE_NAMES, FEATURE_SET_HASH, WARMUP_BARS, OnlineFeatures, compute_features
from ml.features.definition import FEATURE_VERSION, feature_set_hash

OHLCV = ["open", "high", "low", "close", "volume"]
RTOL, ATOL = 1e-9, 1e-12
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FUTURES = SHARED_DATA / "binance" / "futures"


def synthetic_bars(n: int, seed: int, price: float = 100.0, tick: float = 0.01) -> pd.DataFrame:
    """Tick-rounded random walk (so many bars are unchanged), zero-volume bars and a long flat halt."""
    rng = np.random.default_rng(seed)
    close = np.round(price * np.exp(np.cumsum(rng.normal(0.0, 0.002, n))) / tick) * tick
    halt = slice(n // 2, n // 2 + 120)  # longer than every window: ranges, σ and volume all vanish
    close[halt] = close[n // 2 - 1]
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.round(np.abs(rng.normal(0.0, 0.001, (2, n))) * close / tick) * tick
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    volume = rng.lognormal(3.0, 1.0, n)
    volume[rng.random(n) < 0.05] = 0.0
    high[halt], low[halt], volume[halt] = close[halt], close[halt], 0.0
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


def assert_same_features(online: np.ndarray, batch: np.ndarray) -> None:
    assert online.shape == batch.shape
    np.testing.assert_array_equal(np.isnan(online), np.isnan(batch), err_msg="NaN in different places")
    np.testing.assert_allclose(online, batch, rtol=RTOL, atol=ATOL)


def feed_together(frames: list[pd.DataFrame], starts: list[int], slots: list[int], seed: int = 0):
    """Replays several symbols through one OnlineFeatures, as the strategy does: one update per timestamp
    with every symbol whose bar closed (in shuffled order); symbol i lists at timestamp starts[i]."""
    rng = np.random.default_rng(seed)
    online = OnlineFeatures(n_slots=max(slots) + 1)
    out = [np.full((len(f), len(FEATURE_NAMES)), np.nan) for f in frames]
    bars = [f[OHLCV].to_numpy() for f in frames]
    end = max(s + len(f) for s, f in zip(starts, frames, strict=True))
    for t in range(end):
        active = [i for i, (s, f) in enumerate(zip(starts, frames, strict=True)) if s <= t < s + len(f)]
        active = list(rng.permutation(active))
        if not active:
            continue
        rows = np.array([bars[i][t - starts[i]] for i in active])
        result = online.update(np.array([slots[i] for i in active]), *rows.T)
        for i, row in zip(active, result, strict=True):
            out[i][t - starts[i]] = row
    return out


# --- the feature set -------------------------------------------------------------------------


def test_exactly_49_unique_names():
    assert len(FEATURE_NAMES) == 49
    assert len(set(FEATURE_NAMES)) == 49
    assert isinstance(FEATURE_NAMES, tuple)


def test_hash_identifies_names_and_version():
    canonical = f"quantum-trader-features|v{FEATURE_VERSION}|" + ",".join(FEATURE_NAMES)
    assert hashlib.sha256(canonical.encode()).hexdigest() == FEATURE_SET_HASH
    assert feature_set_hash(version=FEATURE_VERSION + 1) != FEATURE_SET_HASH
    assert feature_set_hash(FEATURE_NAMES[::-1]) != FEATURE_SET_HASH


def test_output_columns_dtype_and_index():
    df = synthetic_bars(400, seed=1)
    df.index = pd.date_range("2025-01-01", periods=len(df), freq="5min", tz="UTC")
    out = compute_features(df)
    assert list(out.columns) == list(FEATURE_NAMES)
    assert out.index.equals(df.index)
    assert (out.dtypes == np.float64).all()
    assert compute_features(df.iloc[:0]).shape == (0, 49)
    assert compute_features(df.iloc[:5]).isna().all().all()


def test_warmup_rows_nan_then_all_finite():
    out = compute_features(synthetic_bars(1200, seed=2)).to_numpy()
    assert np.isnan(out[: WARMUP_BARS - 1]).all()
    assert np.isfinite(out[WARMUP_BARS - 1 :]).all()


def test_flat_market_gives_neutral_finite_values():
    n = WARMUP_BARS + 50
    flat = pd.DataFrame({c: np.full(n, 5.0) for c in OHLCV[:4]} | {"volume": np.zeros(n)})
    last = compute_features(flat).iloc[-1]
    neutral = {"close_pos": 0.5, "rsi_7": 50, "rsi_14": 50, "bb_pctb": 0.5, "stoch_k": 50, "stoch_d": 50}
    neutral |= {"vol_ratio_20": 1, "vol_ma_ratio": 1}
    for name in FEATURE_NAMES:
        assert last[name] == neutral.get(name, 0.0), name


def test_chunked_batch_equals_whole_history():
    df = synthetic_bars(1000, seed=4)
    whole = compute_features(df, chunk_rows=len(df)).to_numpy()
    for chunk_rows in (1, 97, 333):  # chunk edges inside the warm-up, the flat halt and everywhere
        assert_same_features(compute_features(df, chunk_rows=chunk_rows).to_numpy(), whole)


def test_scale_invariant_in_price_and_volume():
    df = synthetic_bars(900, seed=3)
    scaled = df.assign(**{c: df[c] * 1000.0 for c in OHLCV[:4]}, volume=df["volume"] * 1000.0)
    tiny = df.assign(**{c: df[c] * 1e-5 for c in OHLCV[:4]})
    base = compute_features(df).to_numpy()
    for other in (scaled, tiny):
        np.testing.assert_allclose(compute_features(other).to_numpy(), base, rtol=1e-7, atol=1e-10)


# --- online == batch ---------------------------------------------------------------------------


def test_online_equals_batch_for_symbols_listing_at_different_times():
    frames = [synthetic_bars(n, seed=10 + i, price=p) for i, (n, p) in enumerate([(900, 100.0), (700, 0.5)])]
    frames += [synthetic_bars(500, seed=12, price=30000.0), synthetic_bars(320, seed=13, price=2.0)]
    online = feed_together(frames, starts=[0, 60, 250, 580], slots=[5, 0, 3, 2])
    for frame, rows in zip(frames, online, strict=True):
        assert_same_features(rows, compute_features(frame).to_numpy())


def test_update_one_equals_batch_and_reset_reuses_a_slot():
    first, second = synthetic_bars(350, seed=20), synthetic_bars(400, seed=21, price=7.0)
    online = OnlineFeatures(n_slots=2)
    for frame in (first, second):
        rows = np.array([online.update_one(1, *bar) for bar in frame[OHLCV].to_numpy()])
        assert_same_features(rows, compute_features(frame).to_numpy())
        assert online.bars_seen[1] == len(frame)
        online.reset([1])
    assert online.bars_seen[0] == 0


@pytest.mark.parametrize("features", [("atr_14",), ("stoch_d", "macd_hist", "atr_14"), ("body",)])
def test_a_subset_of_features_equals_the_full_evaluators_columns_bit_for_bit(features):
    frames = [synthetic_bars(700, seed=30), synthetic_bars(500, seed=31, price=0.3)]
    full = OnlineFeatures(n_slots=2)
    subset = OnlineFeatures(n_slots=2, features=features)
    columns = [FEATURE_NAMES.index(name) for name in features]
    for t in range(500):
        bars = np.array([f[OHLCV].to_numpy()[t] for f in frames])
        expected = full.update(np.array([0, 1]), *bars.T)[:, columns]
        np.testing.assert_array_equal(subset.update(np.array([0, 1]), *bars.T), expected)


def test_a_subset_keeps_only_the_steps_and_history_it_needs():
    atr = OnlineFeatures(n_slots=1, features=("atr_14",))
    assert [getattr(op, "name", None) or op.names for op in atr._plan] == ["tr", ["atr"]]
    assert atr._hist.shape == (1, 1 + 2)  # close: this bar and the one before, plus the spare bar
    with pytest.raises(ValueError, match="unknown features \\['atr'\\]"):
        OnlineFeatures(n_slots=1, features=("atr",))


def test_online_rejects_bad_slots():
    online = OnlineFeatures(n_slots=3)
    assert online.update(np.array([], dtype=np.int64), *[np.array([])] * 5).shape == (0, 49)
    bar = [np.ones(2)] * 5
    with pytest.raises(ValueError, match="at most once"):
        online.update(np.array([1, 1]), *bar)
    with pytest.raises(IndexError):
        online.update(np.array([0, 3]), *bar)
    with pytest.raises(IndexError):
        online.update(np.array([-1, 0]), *bar)


def real_frames(symbols: tuple[str, ...], rows: int) -> list[pd.DataFrame]:
    files = [FUTURES / f"{s}_USDT_USDT-5m-futures.feather" for s in symbols]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"real Binance data not found at {FUTURES}: missing {', '.join(missing)}")
    cols = ["date", *OHLCV]
    return [pd.read_feather(f, columns=cols).tail(rows).set_index("date") for f in files]


def test_online_equals_batch_on_real_futures_data():
    frames = real_frames(("BTC", "ETH", "DOGE"), rows=3000)
    frames[2] = frames[2].iloc[400:]  # lists later: slots advance at different bar counts
    online = feed_together(frames, starts=[0, 0, 400], slots=[0, 1, 2])
    for frame, rows in zip(frames, online, strict=True):
        batch = compute_features(frame)
        assert np.isfinite(batch.to_numpy()[WARMUP_BARS - 1 :]).all()
        assert_same_features(rows, batch.to_numpy())

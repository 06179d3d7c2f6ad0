"""Specification of the lookahead check: the real features read only bars <= t; planted leaks are caught."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.features import WARMUP_BARS, compute_features
from ml.lookahead import find_lookahead

FUTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance" / "futures"


def walk(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.003, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.002, n)) * close
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.lognormal(2.0, 1.0, n),
        }
    )


def with_planted_leaks(df: pd.DataFrame) -> pd.DataFrame:
    close = df["close"]
    out = compute_features(df)
    out["honest_mean_5"] = close.rolling(5).mean() / close
    out["next_return"] = close.shift(-1) / close - 1.0
    out["centred_mean_5"] = close.rolling(5, center=True).mean() / close
    out["full_sample_zscore"] = (close - close.mean()) / close.std()
    return out


CHECKPOINTS = [WARMUP_BARS - 1, WARMUP_BARS + 37, 520, 698]


def test_real_features_have_no_lookahead():
    assert find_lookahead(compute_features, walk(700, seed=1), CHECKPOINTS) == []


def test_planted_lookahead_is_caught_by_the_same_check():
    found = find_lookahead(with_planted_leaks, walk(700, seed=2), CHECKPOINTS)
    assert found == ["next_return", "centred_mean_5", "full_sample_zscore"]


def test_leak_visible_only_at_the_last_checkpoint_is_caught():
    # shift(-1) is NaN at the end of a truncated frame but finite in the full one
    found = find_lookahead(with_planted_leaks, walk(400, seed=3), [398])
    assert "next_return" in found


def test_checkpoint_outside_frame_is_an_error():
    with pytest.raises(IndexError):
        find_lookahead(compute_features, walk(50, seed=4), [50])


def test_real_features_have_no_lookahead_on_real_data():
    path = FUTURES / "ETH_USDT_USDT-5m-futures.feather"
    if not path.is_file():
        pytest.skip(f"real Binance data not found at {FUTURES}: missing {path.name}")
    df = pd.read_feather(path).tail(1500).reset_index(drop=True)
    assert find_lookahead(compute_features, df, [WARMUP_BARS - 1, 700, 1100, 1498]) == []

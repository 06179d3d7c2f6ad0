"""Specification of the synthetic market: layout, exchange rules and stylised facts.

Thresholds leave room for sampling noise on 8 symbols x 20 days (5,760 bars each) so
the tests pin the model's behaviour, not one lucky seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from catalog.generator import REGIMES, GeneratedMarket, generate_market, symbol_names

N_SYMBOLS = 8
DAYS = 20
BARS_PER_YEAR = 365 * 288


@pytest.fixture(scope="module")
def market() -> GeneratedMarket:
    return generate_market(N_SYMBOLS, DAYS, seed=7)


@pytest.fixture(scope="module")
def returns(market: GeneratedMarket) -> pd.DataFrame:
    closes = pd.DataFrame({s: f["close"] for s, f in market.candles.items()})
    return np.log(closes).diff().iloc[1:]


def _acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def _mean_acf(returns: pd.DataFrame, lag: int, transform=lambda x: x) -> float:
    return float(np.mean([_acf(transform(returns[s].to_numpy()), lag) for s in returns]))


# --- layout and exchange rules ------------------------------------------------------


def test_symbols_and_specs(market: GeneratedMarket) -> None:
    assert list(market.candles) == symbol_names(N_SYMBOLS) == list(market.funding) == list(market.specs)
    assert symbol_names(3) == ["SYN00USDT", "SYN01USDT", "SYN02USDT"]
    for price_dp, size_dp in market.specs.values():
        assert isinstance(price_dp, int) and isinstance(size_dp, int)
        assert 0 <= price_dp <= 10 and 0 <= size_dp <= 8


def test_candle_layout_is_a_regular_utc_grid(market: GeneratedMarket) -> None:
    for frame in market.candles.values():
        assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume"]
        assert str(frame["date"].dtype) == "datetime64[ns, UTC]"
        assert frame["date"].iloc[0] == pd.Timestamp("2025-01-01", tz="UTC")
        assert len(frame) == DAYS * 288
        assert (frame["date"].diff().iloc[1:] == pd.Timedelta(minutes=5)).all()
        assert all(frame[c].dtype == np.float64 for c in ["open", "high", "low", "close", "volume"])
        assert not frame.isna().any().any()


def test_prices_on_tick_grid_with_realistic_relative_tick(market: GeneratedMarket) -> None:
    first_prices = []
    for symbol, frame in market.candles.items():
        price_dp, size_dp = market.specs[symbol]
        prices = frame[["open", "high", "low", "close"]].to_numpy()
        np.testing.assert_allclose(prices, np.round(prices, price_dp), rtol=0, atol=1e-9 * prices.max())
        volume = frame["volume"].to_numpy()
        np.testing.assert_allclose(volume, np.round(volume, size_dp), rtol=1e-12)
        relative_tick = 10.0**-price_dp / frame["close"].iloc[0]
        assert 1e-6 <= relative_tick <= 2e-4
        first_prices.append(frame["close"].iloc[0])
    # Several orders of magnitude, as across a real futures universe.
    assert max(first_prices) / min(first_prices) > 100


def test_ohlc_consistency(market: GeneratedMarket) -> None:
    for frame in market.candles.values():
        o, h, lo, c, v = (frame[k].to_numpy() for k in ["open", "high", "low", "close", "volume"])
        assert (h >= np.maximum(o, c)).all()
        assert (lo <= np.minimum(o, c)).all()
        assert (lo > 0).all() and (v > 0).all()
        assert (o[1:] == c[:-1]).all()  # continuous 24/7 market: no gaps between bars
        assert (h > lo).mean() > 0.95  # wicks exist, not just open/close


def test_deterministic_per_seed() -> None:
    a, b = generate_market(3, 2, seed=11), generate_market(3, 2, seed=11)
    c = generate_market(3, 2, seed=12)
    for symbol in a.candles:
        pd.testing.assert_frame_equal(a.candles[symbol], b.candles[symbol])
        pd.testing.assert_frame_equal(a.funding[symbol], b.funding[symbol])
        assert not a.candles[symbol]["close"].equals(c.candles[symbol]["close"])
    pd.testing.assert_series_equal(a.regimes, b.regimes)
    assert a.specs == b.specs


def test_start_and_interval_are_honoured() -> None:
    m = generate_market(2, 1, seed=0, start="2024-06-01 12:00", interval_minutes=15)
    frame = m.candles["SYN00USDT"]
    assert len(frame) == 96
    assert frame["date"].iloc[0] == pd.Timestamp("2024-06-01 12:00", tz="UTC")
    assert (frame["date"].diff().iloc[1:] == pd.Timedelta(minutes=15)).all()


@pytest.mark.parametrize("kwargs", [{"n_symbols": 0}, {"days": 0}, {"interval_minutes": 0}])
def test_rejects_degenerate_requests(kwargs: dict) -> None:
    args = {"n_symbols": 2, "days": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        generate_market(**args)


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    generate_market(2, 1, seed=0, progress=True)
    assert "candles" in capsys.readouterr().err


# --- stylised facts -----------------------------------------------------------------


def test_volatility_clusters_while_returns_stay_unpredictable(returns: pd.DataFrame) -> None:
    for lag in range(1, 11):
        assert _mean_acf(returns, lag, np.abs) > 0.05, lag
        assert abs(_mean_acf(returns, lag)) < 0.05, lag


def test_fat_tails(returns: pd.DataFrame) -> None:
    kurtosis = returns.kurt()  # excess kurtosis; 0 for a Gaussian
    assert (kurtosis > 1).all()
    assert kurtosis.median() > 2


def test_annualised_volatility_in_crypto_range(returns: pd.DataFrame) -> None:
    annual = returns.std() * np.sqrt(BARS_PER_YEAR)
    assert ((annual > 0.3) & (annual < 1.5)).all(), annual


def test_symbols_move_together_but_not_in_lockstep(returns: pd.DataFrame) -> None:
    corr = returns.corr().to_numpy()
    pairwise = corr[np.triu_indices_from(corr, k=1)]
    assert 0.2 < pairwise.mean() < 0.8
    assert pairwise.max() < 0.95


def test_regimes_switch_and_shift_volatility(market: GeneratedMarket, returns: pd.DataFrame) -> None:
    labels = market.regimes
    assert labels.index.equals(pd.DatetimeIndex(market.candles["SYN00USDT"]["date"]))
    assert set(labels.unique()) <= set(REGIMES) and labels.nunique() >= 3
    assert (labels.to_numpy()[1:] != labels.to_numpy()[:-1]).sum() >= 5
    aligned = labels.iloc[1:].to_numpy()
    vol = {r: returns.to_numpy()[aligned == r].std() for r in ("calm", "turbulent")}
    assert vol["turbulent"] > 1.3 * vol["calm"]


def test_trend_regimes_carry_drift() -> None:
    # Drift is small against 5m noise, so measure it over a longer sample of the market average.
    m = generate_market(4, 120, seed=3)
    closes = pd.DataFrame({s: f["close"] for s, f in m.candles.items()})
    market_return = np.log(closes).diff().mean(axis=1).iloc[1:].to_numpy()
    labels = m.regimes.iloc[1:].to_numpy()
    assert market_return[labels == "trend_up"].mean() > 0 > market_return[labels == "trend_down"].mean()


def test_volume_follows_volatility(market: GeneratedMarket, returns: pd.DataFrame) -> None:
    for symbol in returns:
        volume = market.candles[symbol]["volume"].iloc[1:].to_numpy()
        assert np.corrcoef(volume, returns[symbol].abs())[0, 1] > 0.2, symbol


def test_volume_has_intraday_seasonality(market: GeneratedMarket) -> None:
    normalised = pd.DataFrame({s: f["volume"] / f["volume"].mean() for s, f in market.candles.items()})
    hour = market.candles["SYN00USDT"]["date"].dt.hour
    profile = normalised.mean(axis=1).groupby(hour.to_numpy()).mean()
    us_session, asia_late = profile.loc[13:16].mean(), profile.loc[5:8].mean()
    assert us_session > 1.3 * asia_late


# --- funding ------------------------------------------------------------------------


def test_funding_schedule_and_level(market: GeneratedMarket) -> None:
    for frame in market.funding.values():
        assert list(frame.columns) == ["date", "rate"]
        assert str(frame["date"].dtype) == "datetime64[ns, UTC]"
        assert set(frame["date"].dt.hour) == {0, 8, 16}
        assert (frame["date"].dt.minute == 0).all()
        assert len(frame) == DAYS * 3
        assert frame["rate"].abs().max() <= 0.0075
    rates = pd.concat(f["rate"] for f in market.funding.values())
    assert rates.median() == pytest.approx(0.0001)
    assert abs(rates.mean() - 0.0001) < 3e-4  # a 20-day bear market can run negative
    assert rates.std() > 1e-5  # not a constant


def test_funding_follows_recent_trend(market: GeneratedMarket) -> None:
    pairs = []
    for symbol, frame in market.funding.items():
        close = market.candles[symbol].set_index("date")["close"]
        # Close of the bar ending at each funding time, vs 24 h earlier.
        known = close.reindex(frame["date"] - pd.Timedelta(minutes=5))
        trend = np.log(known.to_numpy() / close.reindex(known.index - pd.Timedelta(days=1)).to_numpy())
        pairs.append(pd.DataFrame({"rate": frame["rate"].to_numpy(), "trend": trend}).dropna())
    pooled = pd.concat(pairs)
    assert pooled["rate"].corr(pooled["trend"]) > 0.3

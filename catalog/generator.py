"""Synthetic multi-symbol market for Binance USDT-M futures.

The embedded default data source for demos and tests when no real data is present.
It reproduces the stylised facts strategies are sensitive to, so a pipeline that works
here has a fair chance of behaving sensibly on real candles:

* a hidden Markov chain of market regimes (calm / trending up / trending down /
  turbulent) shared by all symbols, shifting drift and volatility together;
* a one-factor model: every symbol loads on a common market return plus its own
  idiosyncratic noise, so returns are cross-correlated;
* GARCH(1,1) conditional variance on Student-t innovations, times a slow stochastic
  volatility factor, for volatility clustering and fat tails;
* intraday and weekend seasonality of activity;
* volume driven by the same activity, so it co-moves with volatility;
* intrabar high/low from the Brownian-bridge range distribution;
* 8-hourly funding following Binance's premium + clamped interest formula.

Everything is vectorised across symbols; the only time loop is the variance
recursion, which cannot be expressed as a cumulative numpy operation without
over/underflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

MINUTES_PER_YEAR = 365 * 24 * 60
FUNDING_HOURS = 8
FUNDING_INTEREST = 0.0001  # Binance's fixed 0.01% per 8h interest component
FUNDING_CLAMP = 0.0005  # premium within +-0.05% of interest pays exactly the interest rate
FUNDING_CAP = 0.0075

# GARCH(1,1) on unit-variance innovations: omega = 1 - a - b keeps E[h] = 1, so the
# symbol's target volatility is set elsewhere. a + b = 0.98 gives a half-life of ~3 h
# on 5m bars; (a+b)^2 + a^2 (kurt_z - 1) < 1 keeps the fourth moment finite for df > 5.
GARCH_ALPHA = 0.05
GARCH_BETA = 0.93
# Slow log-volatility AR(1) (half-life ~2 days on 5m bars): GARCH alone forgets too fast
# compared with the day-scale memory of real crypto volatility.
SLOW_VOL_PHI = 0.9998
SLOW_VOL_SD = 0.25  # stationary sd of log sigma

PRICE_RANGE = (0.01, 50_000.0)
TICK_RELATIVE_DIGITS = 4  # tick = 10^(floor(log10 price) - 4): 1e-4..1e-5 of price
DAILY_NOTIONAL_RANGE = (5e6, 5e8)  # USDT traded per day, log-uniform
ANNUAL_VOL_RANGE = (0.5, 1.0)  # target annualised volatility, log-uniform
MARKET_LOADING_RANGE = (0.55, 0.85)  # correlation of each symbol with the market factor
TAIL_DF_RANGE = (4.5, 7.0)  # Student-t degrees of freedom of idiosyncratic shocks
MARKET_TAIL_DF = 5.0
VOLUME_NOISE_SD = 0.5  # log-normal scatter of volume around what activity explains

REGIMES = ("calm", "trend_up", "trend_down", "turbulent")


@dataclass(frozen=True)
class _Regime:
    hours: float  # mean duration
    drift: float  # market drift per bar, in units of the bar's market volatility
    market_vol: float  # multiplier of market-factor volatility (normalised later)
    idio_vol: float  # multiplier of idiosyncratic volatility (normalised later)
    exits: tuple[float, ...]  # probabilities of the next regime, indexed like REGIMES


# Turbulence raises market volatility more than idiosyncratic volatility, which is why
# correlations rise in sell-offs; trends down are faster and more volatile than trends up.
_REGIME_TABLE = (
    _Regime(hours=48, drift=0.0, market_vol=0.75, idio_vol=0.85, exits=(0.0, 0.40, 0.35, 0.25)),
    _Regime(hours=24, drift=0.05, market_vol=1.0, idio_vol=1.0, exits=(0.60, 0.0, 0.15, 0.25)),
    _Regime(hours=18, drift=-0.06, market_vol=1.2, idio_vol=1.05, exits=(0.50, 0.20, 0.0, 0.30)),
    _Regime(hours=6, drift=-0.01, market_vol=2.2, idio_vol=1.5, exits=(0.40, 0.20, 0.40, 0.0)),
)


@dataclass(frozen=True)
class GeneratedMarket:
    candles: dict[str, pd.DataFrame]  # symbol -> date, open, high, low, close, volume
    funding: dict[str, pd.DataFrame]  # symbol -> date, rate (8-hourly at 00/08/16 UTC)
    regimes: pd.Series  # shared regime label per candle open time, for diagnostics
    specs: dict[str, tuple[int, int]]  # symbol -> (price decimals, size decimals)


@dataclass(frozen=True)
class _SymbolParams:
    price0: np.ndarray
    annual_vol: np.ndarray
    loading: np.ndarray
    tail_df: np.ndarray
    daily_notional: np.ndarray
    funding_beta: np.ndarray
    price_decimals: np.ndarray
    size_decimals: np.ndarray


@dataclass(frozen=True)
class _Paths:
    log_close: np.ndarray  # (T + 1, N): log price at each bar boundary, row 0 = first open
    log_high: np.ndarray  # (T, N)
    log_low: np.ndarray  # (T, N)
    cond_vol: np.ndarray  # (T, N): conditional sd of each bar's log return
    step_vol: np.ndarray  # (N,): unconditional sd of a bar's log return


def symbol_names(n_symbols: int) -> list[str]:
    width = max(2, len(str(n_symbols - 1)))
    return [f"SYN{i:0{width}d}USDT" for i in range(n_symbols)]


def generate_market(
    n_symbols: int,
    days: float,
    seed: int,
    start: str = "2025-01-01",
    interval_minutes: int = 5,
    progress: bool = False,
) -> GeneratedMarket:
    """Simulate `n_symbols` perpetuals on a regular grid of `interval_minutes` candles.

    `start` is read as UTC when it carries no timezone. The same arguments always give
    identical frames; draws are shared across symbols, so changing `n_symbols` changes
    every symbol's path, not just the added ones.
    """
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    dates = _time_grid(start, days, interval_minutes)
    n_bars = len(dates)
    rng = np.random.default_rng(seed)
    params = _draw_symbol_params(rng, n_symbols)
    regime_idx = _simulate_regimes(rng, n_bars, interval_minutes)
    season = _activity_seasonality(dates)
    paths = _simulate_paths(rng, params, regime_idx, season, interval_minutes, progress)
    volume = _simulate_volume(rng, params, paths, interval_minutes)
    symbols = symbol_names(n_symbols)
    candles = _candle_frames(symbols, dates, params, paths, volume, progress)
    funding = _funding_frames(rng, symbols, dates, params, paths, interval_minutes)
    regimes = pd.Series(
        pd.Categorical.from_codes(regime_idx, categories=list(REGIMES)), index=dates, name="regime"
    )
    specs = {
        s: (int(p), int(q))
        for s, p, q in zip(symbols, params.price_decimals, params.size_decimals, strict=True)
    }
    return GeneratedMarket(candles=candles, funding=funding, regimes=regimes, specs=specs)


def _time_grid(start: str, days: float, interval_minutes: int) -> pd.DatetimeIndex:
    if interval_minutes < 1:
        raise ValueError(f"interval_minutes must be >= 1, got {interval_minutes}")
    n_bars = int(round(days * 24 * 60 / interval_minutes))
    if n_bars < 2:
        raise ValueError(f"days={days} gives fewer than 2 candles of {interval_minutes} min")
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    grid = pd.date_range(t0, periods=n_bars, freq=pd.Timedelta(minutes=interval_minutes))
    return grid.as_unit("ns").rename("date")


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n))


def _draw_symbol_params(rng: np.random.Generator, n: int) -> _SymbolParams:
    price0 = _log_uniform(rng, PRICE_RANGE, n)
    magnitude = np.floor(np.log10(price0)).astype(int)
    return _SymbolParams(
        price0=price0,
        annual_vol=_log_uniform(rng, ANNUAL_VOL_RANGE, n),
        loading=rng.uniform(*MARKET_LOADING_RANGE, n),
        tail_df=rng.uniform(*TAIL_DF_RANGE, n),
        daily_notional=_log_uniform(rng, DAILY_NOTIONAL_RANGE, n),
        # Thin alts overshoot on funding: the premium reacts more to the same trend.
        funding_beta=_log_uniform(rng, (0.005, 0.03), n),
        price_decimals=np.clip(TICK_RELATIVE_DIGITS - magnitude, 0, 10),
        # Lot worth roughly 5..50 USDT for expensive coins, 1 coin for cheap ones (Binance-like).
        size_decimals=np.clip(magnitude - 1, 0, 8),
    )


def _simulate_regimes(rng: np.random.Generator, n_bars: int, interval_minutes: int) -> np.ndarray:
    """Markov chain as alternating geometric holding times and jumps: ~one draw per regime spell."""
    stay = np.array([r.hours * 60 / interval_minutes for r in _REGIME_TABLE])
    jumps = np.array([r.exits for r in _REGIME_TABLE])
    out = np.empty(n_bars, dtype=np.int8)
    state = rng.choice(len(REGIMES), p=_stationary_distribution())
    filled = 0
    while filled < n_bars:
        length = rng.geometric(1.0 / max(stay[state], 1.0))
        out[filled : filled + length] = state
        filled += length
        state = rng.choice(len(REGIMES), p=jumps[state])
    return out


def _stationary_distribution() -> np.ndarray:
    """Time share of each regime: jump-chain stationary law weighted by mean holding time."""
    jumps = np.array([r.exits for r in _REGIME_TABLE])
    eigvals, eigvecs = np.linalg.eig(jumps.T)
    visits = np.real(eigvecs[:, np.argmin(np.abs(eigvals - 1.0))])
    share = visits / visits.sum() * np.array([r.hours for r in _REGIME_TABLE])
    return share / share.sum()


def _regime_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drift and vol multipliers with the long-run variance normalised to 1, so a symbol's
    target volatility is its realised volatility on average over regimes."""
    weights = _stationary_distribution()
    drift = np.array([r.drift for r in _REGIME_TABLE])
    market = np.array([r.market_vol for r in _REGIME_TABLE])
    idio = np.array([r.idio_vol for r in _REGIME_TABLE])
    market /= np.sqrt(weights @ market**2)
    idio /= np.sqrt(weights @ idio**2)
    return drift, market, idio


def _activity_seasonality(dates: pd.DatetimeIndex) -> np.ndarray:
    """Volatility multiplier by time of day and weekday, mean square 1 over the sample.

    Crypto activity peaks around the US equity open (13:30-16:00 UTC) with a smaller bump
    at the Asian open / 00:00 funding, troughs in the late Asian session and US evening,
    and is thinner at weekends.
    """
    hour = dates.hour.to_numpy() + dates.minute.to_numpy() / 60.0
    level = 1.0 + 0.8 * _circular_bump(hour, 14.5, 2.0) + 0.3 * _circular_bump(hour, 0.5, 1.5)
    level *= np.where(dates.day_of_week.to_numpy() >= 5, 0.8, 1.0)
    return level / np.sqrt(np.mean(level**2))


def _circular_bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    distance = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (distance / width) ** 2)


def _student_t(rng: np.random.Generator, df: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance Student-t draws (raw t has variance df / (df - 2))."""
    return rng.standard_t(df, size=shape) * np.sqrt((df - 2.0) / df)


def _variance_paths(rng: np.random.Generator, shocks: np.ndarray, progress: bool) -> np.ndarray:
    """GARCH(1,1) variance times a slow log-normal volatility factor, per column; mean ~1."""
    n_bars, n_cols = shocks.shape
    growth = GARCH_ALPHA * shocks**2 + GARCH_BETA  # h_t = omega + h_{t-1} (a z_{t-1}^2 + b)
    omega = 1.0 - GARCH_ALPHA - GARCH_BETA
    slow_noise = rng.standard_normal((n_bars, n_cols)) * SLOW_VOL_SD * np.sqrt(1 - SLOW_VOL_PHI**2)
    garch = np.empty((n_bars, n_cols))
    slow = np.empty((n_bars, n_cols))
    garch[0] = 1.0
    slow[0] = rng.standard_normal(n_cols) * SLOW_VOL_SD
    chunk = 2048
    for lo in tqdm(range(1, n_bars, chunk), desc="volatility", unit="chunk", disable=not progress):
        for t in range(lo, min(lo + chunk, n_bars)):
            garch[t] = omega + garch[t - 1] * growth[t - 1]
            slow[t] = SLOW_VOL_PHI * slow[t - 1] + slow_noise[t]
    # exp(2 x - 2 sd^2) has mean 1 for x ~ N(0, sd^2), keeping the variance budget intact.
    return garch * np.exp(2 * slow - 2 * SLOW_VOL_SD**2)


def _simulate_paths(
    rng: np.random.Generator,
    params: _SymbolParams,
    regime_idx: np.ndarray,
    season: np.ndarray,
    interval_minutes: int,
    progress: bool,
) -> _Paths:
    n_bars, n_sym = len(regime_idx), len(params.price0)
    df = np.concatenate([[MARKET_TAIL_DF], params.tail_df])
    shocks = _student_t(rng, df, (n_bars, n_sym + 1))
    sd = np.sqrt(_variance_paths(rng, shocks, progress)) * season[:, None]
    drift, market_mult, idio_mult = _regime_arrays()
    market_sd = sd[:, :1] * market_mult[regime_idx, None]
    idio_sd = sd[:, 1:] * idio_mult[regime_idx, None]

    step_vol = params.annual_vol * np.sqrt(interval_minutes / MINUTES_PER_YEAR)
    beta = params.loading * step_vol
    resid = np.sqrt(1.0 - params.loading**2) * step_vol
    returns = beta * (drift[regime_idx, None] + market_sd * shocks[:, :1]) + resid * idio_sd * shocks[:, 1:]
    cond_vol = np.sqrt((beta * market_sd) ** 2 + (resid * idio_sd) ** 2)
    del shocks, sd, idio_sd  # free ~4 (T, N) arrays before the next ones are allocated

    log_close = np.empty((n_bars + 1, n_sym))
    log_close[0] = np.log(params.price0)
    np.cumsum(returns, axis=0, out=log_close[1:])
    log_close[1:] += log_close[0]
    up, down = _bridge_extremes(rng, returns, cond_vol)
    return _Paths(
        log_close=log_close,
        log_high=log_close[:-1] + up,
        log_low=log_close[:-1] + down,
        cond_vol=cond_vol,
        step_vol=step_vol,
    )


def _bridge_extremes(
    rng: np.random.Generator, returns: np.ndarray, cond_vol: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Max and min of a Brownian bridge from 0 to the bar's return, by inverse CDF.

    P(max > m) = exp(-2 m (m - x) / s^2) for m >= max(0, x); the min mirrors it. Drawing
    them independently ignores their (weak) dependence, a deliberate shortcut.
    """
    var2 = 2.0 * cond_vol**2
    x2 = returns**2
    # 1 - U lies in (0, 1], so the log never hits -inf.
    up = 0.5 * (returns + np.sqrt(x2 - var2 * np.log1p(-rng.random(returns.shape))))
    down = 0.5 * (returns - np.sqrt(x2 - var2 * np.log1p(-rng.random(returns.shape))))
    return up, down


def _simulate_volume(
    rng: np.random.Generator, params: _SymbolParams, paths: _Paths, interval_minutes: int
) -> np.ndarray:
    """Base-asset volume: activity (conditional vol) x surprise (|return| / vol) x noise."""
    returns = np.diff(paths.log_close, axis=0)
    activity = paths.cond_vol / paths.step_vol
    surprise = 0.6 + 0.4 * np.abs(returns) / paths.cond_vol
    noise = np.exp(VOLUME_NOISE_SD * rng.standard_normal(returns.shape) - 0.5 * VOLUME_NOISE_SD**2)
    per_bar = params.daily_notional * interval_minutes / (24 * 60)
    mid_price = np.exp(0.5 * (paths.log_close[:-1] + paths.log_close[1:]))
    return per_bar * activity**1.2 * surprise * noise / mid_price


def _round_to(values: np.ndarray, decimals: np.ndarray, how=np.rint) -> np.ndarray:
    scale = 10.0 ** decimals.astype(float)
    return how(values * scale) / scale


def _candle_frames(
    symbols: list[str],
    dates: pd.DatetimeIndex,
    params: _SymbolParams,
    paths: _Paths,
    volume: np.ndarray,
    progress: bool,
) -> dict[str, pd.DataFrame]:
    prices = _round_to(np.exp(paths.log_close), params.price_decimals)
    open_, close = prices[:-1], prices[1:]
    tick = 10.0 ** -params.price_decimals.astype(float)
    # Round wicks outwards and re-clamp so rounding can never break OHLC consistency.
    high = np.maximum(
        _round_to(np.exp(paths.log_high), params.price_decimals, np.ceil), np.maximum(open_, close)
    )
    low = np.minimum(
        _round_to(np.exp(paths.log_low), params.price_decimals, np.floor), np.minimum(open_, close)
    )
    low = np.maximum(low, tick)
    lot = 10.0 ** -params.size_decimals.astype(float)
    volume = np.maximum(_round_to(volume, params.size_decimals), lot)
    date = pd.Series(dates, name="date").reset_index(drop=True)
    frames = {}
    for i, symbol in enumerate(tqdm(symbols, desc="candles", unit="sym", disable=not progress)):
        frames[symbol] = pd.DataFrame(
            {
                "date": date,
                "open": open_[:, i],
                "high": high[:, i],
                "low": low[:, i],
                "close": close[:, i],
                "volume": volume[:, i],
            }
        )
    return frames


def _funding_frames(
    rng: np.random.Generator,
    symbols: list[str],
    dates: pd.DatetimeIndex,
    params: _SymbolParams,
    paths: _Paths,
    interval_minutes: int,
) -> dict[str, pd.DataFrame]:
    """Binance formula: rate = premium + clamp(interest - premium, +-0.05%), capped at +-0.75%.

    The premium (perp over index) follows the trailing 24 h trend because longs crowd in
    during rallies, plus persistent noise. The clamp makes most rates exactly 0.01%, as on
    the exchange in quiet markets.
    """
    period = pd.Timedelta(hours=FUNDING_HOURS)
    times = pd.date_range(dates[0].ceil(period), dates[-1], freq=period).as_unit("ns")
    if len(times) == 0:
        empty = pd.DataFrame({"date": times, "rate": np.empty(0)})
        return {s: empty.copy() for s in symbols}
    # Row j of log_close is the price at dates[0] + j bars: the last close known at that time.
    boundary = ((times - dates[0]) // pd.Timedelta(minutes=interval_minutes)).to_numpy()
    lookback = 24 * 60 // interval_minutes
    trend = paths.log_close[boundary] - paths.log_close[np.maximum(boundary - lookback, 0)]
    noise = _ar1(rng, len(times), len(symbols), phi=0.6, sd=1.5e-4)
    premium = 0.00005 + params.funding_beta * trend + noise
    rate = premium + np.clip(FUNDING_INTEREST - premium, -FUNDING_CLAMP, FUNDING_CLAMP)
    rate = np.round(np.clip(rate, -FUNDING_CAP, FUNDING_CAP), 8)
    date = pd.Series(times, name="date")
    return {s: pd.DataFrame({"date": date, "rate": rate[:, i]}) for i, s in enumerate(symbols)}


def _ar1(rng: np.random.Generator, n: int, cols: int, phi: float, sd: float) -> np.ndarray:
    out = np.empty((n, cols))
    out[0] = rng.standard_normal(cols) * sd
    innovations = rng.standard_normal((n, cols)) * sd * np.sqrt(1 - phi**2)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + innovations[t]
    return out

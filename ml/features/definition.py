"""The one definition of the 49 model features, shared by the batch and the online evaluator.

Every feature is scale-free (a ratio to price, a return, an oscillator or a volume ratio), so one model
can serve symbols at any price level and any volume level. Notation: c/o/h/l/v = close/open/high/low/
volume of the bar, x₋ₖ = the value k bars earlier, SMAₙ/EMAₙ/WMAₙ over the last n bars including the
current one, Wilderₙ = EMA with a = 1/n, EMAₙ = EMA with a = 2/(n+1). Every EMA is pandas
``ewm(com=..., adjust=False)``: seeded with the first value, then y = (1-a)·y + a·x.

======================  ===================================================================
name                    formula
======================  ===================================================================
ret_1                   c/c₋₁ − 1
logret_1                ln(c/c₋₁)
logret_5                ln(c/c₋₅)
body                    c/o − 1
range_hl                h/l − 1
close_pos               (c − l)/(h − l); 0.5 when h = l
rsi_7, rsi_14           100·U/(U + D), U/D = Wilderₙ of up/down close moves; 50 when U + D = 0
macd                    (EMA₁₂ − EMA₂₆)/c
macd_signal             EMA₉(macd)
macd_hist               macd − macd_signal
bb_middle               SMA₂₀/c − 1
bb_upper, bb_lower      (SMA₂₀ ± 2σ₂₀)/c − 1, σ = population std of close over 20 bars
bb_width                4σ₂₀/SMA₂₀
bb_pctb                 (c − lower)/(upper − lower); 0.5 when σ = 0
stoch_k                 100·(c − LL₁₄)/(HH₁₄ − LL₁₄), HH/LL = max high/min low; 50 when HH = LL
stoch_d                 SMA₃(stoch_k)
atr_14                  ATR/c, ATR = Wilder₁₄(TR), TR = max(h, c₋₁) − min(l, c₋₁)
adx_14                  Wilder₁₄(DX), DX = 100·|DI⁺ − DI⁻|/(DI⁺ + DI⁻); 0 when both are 0
plus_di_14, minus_di_14 100·Wilder₁₄(±DM)/ATR (Wilder's ±DM; a tie within 1e-9·c is no move); 0 if ATR = 0
sma_n (5,10,30,50,100)  SMAₙ(c)/c − 1 (SMA₂₀ is bb_middle)
ema_n (5,10,20,50,100)  EMAₙ(c)/c − 1
wma_n (10,20,50)        WMAₙ(c)/c − 1, linear weights 1..n, newest heaviest
vol_ratio_20            v/VMA₂₀ (VMA = SMA of volume); 1 when VMA₂₀ = 0
vol_ma_ratio            VMA₂₀/VMA₁₀₀; 1 when VMA₁₀₀ = 0
obv_flow_20             Σ₂₀ sign(c − c₋₁)·v / Σ₂₀ v = 20-bar OBV change over volume traded; 0 if none
vpt_flow_20             Σ₂₀ ret_1·v / Σ₂₀ v = 20-bar VPT change over volume traded; 0 if none
hv_20, hv_50            sample std (ddof 1) of logret_1 over n bars (per bar, not annualised)
trend_slope_20          OLS slope of ln c against bar number over 20 bars (direction, per bar)
trend_r2_20             R² of that fit (strength, 0..1); 0 when the window is flat
res_dist_n (20,100)     max(h over n bars)/c − 1 (distance to resistance, ≥ 0)
sup_dist_n (20,100)     min(l over n bars)/c − 1 (distance to support, ≤ 0)
roc_10                  c/c₋₁₀ − 1
mom_10_atr              (c − c₋₁₀)/ATR; 0 when ATR = 0
======================  ===================================================================

Warm-up: the rows of the first WARMUP_BARS − 1 bars are all NaN; from the WARMUP_BARS-th bar on every
feature is finite, given finite positive prices and finite non-negative volume (bars with NaN are
outside the contract: the two evaluators may then disagree).

Formulas are written once (STEPS, then FEATURES), against a :class:`Ctx` that serves current values,
lags and windows; each evaluator only supplies its own Ctx and its own EMA recursion. Changing any
formula, period or name means bumping FEATURE_VERSION, which changes FEATURE_SET_HASH.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

FEATURE_VERSION = 1
# Three times the longest lookback (100): EMA₁₀₀'s seed then weighs (1 − 2/101)³⁰⁰ ≈ 0.25%.
WARMUP_BARS = 300
INPUTS = ("open", "high", "low", "close", "volume")


class Ctx(Protocol):
    """What a formula can read. A series is a 1-D array with one entry per row: the bars of one symbol
    in batch, the updated symbols online. Windows are time-major, so that reductions over the window
    (axis 0) are a few long vector operations in batch rather than one short loop per bar."""

    def __getitem__(self, name: str) -> np.ndarray: ...

    def lag(self, name: str, k: int) -> np.ndarray:
        """The value k bars ago, NaN where there is no such bar."""
        ...

    def win(self, name: str, n: int) -> np.ndarray:
        """Shape (n, rows): the last n values, oldest first, current last, NaN before the first bar."""
        ...


Formula = Callable[[Ctx], np.ndarray]


@dataclass(frozen=True)
class Point:
    """A value per row computed from what the steps before it produced (1-D, or 2-D time-major)."""

    name: str
    fn: Formula


@dataclass(frozen=True)
class Ema:
    """pandas ``Series(source).ewm(com=com, adjust=False).mean()``; evaluators must match it bit for bit."""

    name: str
    source: str
    com: float


def span(n: int) -> float:
    return (n - 1) / 2.0


def wilder(n: int) -> float:
    return n - 1.0


def div(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    """num/den, `default` where den == 0 (NaN stays NaN) so flat markets give finite features.

    Evaluators run formulas under np.errstate(divide="ignore", invalid="ignore").
    """
    return np.where(den == 0, default, num / den)


def wsum(w: np.ndarray) -> np.ndarray:
    """Σ over the window axis (0), always adding the window's bars one after another, in row order.

    A fixed order lets both evaluators round identically (they agree bit for bit on numpy 2.5; the
    contract is 1e-9): numpy adds the rows of a C-contiguous 2-D array in order, but may sum a lone
    column or a strided view (the batch's windows) pairwise, so those take an explicit loop, which is
    as fast there.
    """
    if w.shape[1] == 1:
        return w[:, 0].cumsum()[-1:]
    if w.flags.c_contiguous:
        return w.sum(axis=0)
    total = w[0].copy()
    for row in w[1:]:
        total += row
    return total


def mean(w: np.ndarray) -> np.ndarray:
    return wsum(w) / w.shape[0]


def std(w: np.ndarray, ddof: int = 0, mu: np.ndarray | None = None) -> np.ndarray:
    """Two-pass standard deviation over the window; pass `mu` = mean(w) when it is at hand."""
    dev = w - (mean(w) if mu is None else mu)
    return np.sqrt(wsum(dev * dev) / (w.shape[0] - ddof))


def _anchored(x: Ctx, name: str, n: int) -> np.ndarray:
    """Window minus its newest value: exact for nearby prices, and exactly zero for a flat window."""
    w = x.win(name, n)
    return w - w[-1]


def _sma_rel(x: Ctx, n: int) -> np.ndarray:
    return mean(x["close_dev"][-n:]) / x["close"]


def _wma_weights(n: int) -> np.ndarray:
    return (np.arange(1, n + 1) / (n * (n + 1) / 2.0))[:, None]  # oldest first, newest heaviest


_WMA_PERIODS = (10, 20, 50)
_WMA_WEIGHTS = {n: _wma_weights(n) for n in _WMA_PERIODS}


def _wma_rel(x: Ctx, n: int) -> np.ndarray:
    return wsum(x["close_dev"][-n:] * _WMA_WEIGHTS[n]) / x["close"]


def _true_range(x: Ctx) -> np.ndarray:
    prev = x.lag("close", 1)
    return np.maximum(x["high"], prev) - np.minimum(x["low"], prev)


_TIE_MARGIN = 1e-9  # relative to price; far below any exchange tick


def _directional_move(x: Ctx, plus: bool) -> np.ndarray:
    up = x["high"] - x.lag("high", 1)
    down = x.lag("low", 1) - x["low"]
    move, other = (up, down) if plus else (down, up)
    # Equal up and down moves are common with tick prices and count for neither side; the margin keeps
    # such ties ties whatever rounding the prices went through (e.g. scaling), so DI stays scale-free.
    dm = np.where((move > other + _TIE_MARGIN * x["close"]) & (move > 0), move, 0.0)
    return np.where(np.isnan(move), np.nan, dm)  # first bar: undefined, so the Wilder average seeds later


def _rsi(x: Ctx, n: int) -> np.ndarray:
    up, down = x[f"up_{n}"], x[f"down_{n}"]
    return 100.0 * div(up, up + down, 0.5)


def _stoch_k(x: Ctx) -> np.ndarray:
    hh, ll = x.win("high", 14).max(axis=0), x.win("low", 14).min(axis=0)
    return 100.0 * div(x["close"] - ll, hh - ll, 0.5)


def _resistance(x: Ctx, n: int) -> np.ndarray:
    return x.win("high", n).max(axis=0) / x["close"] - 1.0  # max/min are exact: any order will do


def _support(x: Ctx, n: int) -> np.ndarray:
    return x.win("low", n).min(axis=0) / x["close"] - 1.0


_LONG = 100  # longest window
_TREND_N = 20
_TREND_X = np.arange(_TREND_N) - (_TREND_N - 1) / 2.0  # bar number, centred
_TREND_SXX = float(_TREND_X @ _TREND_X)
_TREND_W = (_TREND_X / _TREND_SXX)[:, None]


def _trend_slope(x: Ctx) -> np.ndarray:
    """OLS slope of ln c on bar number; anchoring leaves it unchanged because Σ(i − ī) = 0."""
    return wsum(x["logc_dev"] * _TREND_W)


def _trend_r2(x: Ctx) -> np.ndarray:
    dy = x["logc_dev"]
    dev = dy - mean(dy)
    explained = x["trend_slope"] ** 2 * _TREND_SXX
    return np.minimum(div(explained, wsum(dev * dev), 0.0), 1.0)


def _vol_mean(x: Ctx, n: int) -> np.ndarray:
    return mean(x.win("volume", n))


_EMA_PERIODS = (5, 10, 20, 50, 100)
# SMA₂₀ is bb_middle already, hence 30 here.
_SMA_PERIODS = (5, 10, 30, 50, 100)

# Intermediate series in dependency order; features below read them by name.
STEPS: tuple[Point | Ema, ...] = (
    Point("ret", lambda x: x["close"] / x.lag("close", 1) - 1.0),
    Point("logret", lambda x: np.log(x["close"] / x.lag("close", 1))),
    Point("logc", lambda x: np.log(x["close"])),
    Point("up", lambda x: np.maximum(x["close"] - x.lag("close", 1), 0.0)),
    Point("down", lambda x: np.maximum(x.lag("close", 1) - x["close"], 0.0)),
    Point("signed_vol", lambda x: np.sign(x["close"] - x.lag("close", 1)) * x["volume"]),
    Point("ret_vol", lambda x: x["ret"] * x["volume"]),
    Point("tr", _true_range),
    Point("plus_dm", lambda x: _directional_move(x, plus=True)),
    Point("minus_dm", lambda x: _directional_move(x, plus=False)),
    *(Ema(f"ema_{n}", "close", span(n)) for n in (*_EMA_PERIODS, 12, 26)),
    *(Ema(f"{side}_{n}", side, wilder(n)) for n in (7, 14) for side in ("up", "down")),
    Ema("atr", "tr", wilder(14)),
    Ema("plus_dm_s", "plus_dm", wilder(14)),
    Ema("minus_dm_s", "minus_dm", wilder(14)),
    Point("macd", lambda x: (x["ema_12"] - x["ema_26"]) / x["close"]),
    Point("plus_di", lambda x: 100.0 * div(x["plus_dm_s"], x["atr"], 0.0)),
    Point("minus_di", lambda x: 100.0 * div(x["minus_dm_s"], x["atr"], 0.0)),
    Point(
        "dx",
        lambda x: 100.0 * div(np.abs(x["plus_di"] - x["minus_di"]), x["plus_di"] + x["minus_di"], 0.0),
    ),
    Ema("macd_signal", "macd", span(9)),
    Ema("adx", "dx", wilder(14)),
    # 2-D steps (window, rows): anchored windows shared by several features
    Point("close_dev", lambda x: _anchored(x, "close", _LONG)),
    Point("logc_dev", lambda x: _anchored(x, "logc", _TREND_N)),
    # 1-D steps read by several features
    Point("stoch_k", _stoch_k),
    Point("bb_dev", lambda x: mean(x["close_dev"][-20:])),  # SMA₂₀ − c
    Point("bb_sigma", lambda x: std(x["close_dev"][-20:], mu=x["bb_dev"])),
    Point("trend_slope", _trend_slope),
    Point("vma_20", lambda x: _vol_mean(x, 20)),
)


def _bb_band(x: Ctx, sigmas: float) -> np.ndarray:
    return (x["bb_dev"] + sigmas * x["bb_sigma"]) / x["close"]


def _bb_pctb(x: Ctx) -> np.ndarray:
    # (c − lower)/(upper − lower) with lower = c + dev − 2σ, upper − lower = 4σ
    return div(2.0 * x["bb_sigma"] - x["bb_dev"], 4.0 * x["bb_sigma"], 0.5)


FEATURES: tuple[tuple[str, Formula], ...] = (
    ("ret_1", lambda x: x["ret"]),
    ("logret_1", lambda x: x["logret"]),
    ("logret_5", lambda x: np.log(x["close"] / x.lag("close", 5))),
    ("body", lambda x: x["close"] / x["open"] - 1.0),
    ("range_hl", lambda x: x["high"] / x["low"] - 1.0),
    ("close_pos", lambda x: div(x["close"] - x["low"], x["high"] - x["low"], 0.5)),
    ("rsi_7", lambda x: _rsi(x, 7)),
    ("rsi_14", lambda x: _rsi(x, 14)),
    ("macd", lambda x: x["macd"]),
    ("macd_signal", lambda x: x["macd_signal"]),
    ("macd_hist", lambda x: x["macd"] - x["macd_signal"]),
    ("bb_upper", lambda x: _bb_band(x, 2.0)),
    ("bb_middle", lambda x: _bb_band(x, 0.0)),
    ("bb_lower", lambda x: _bb_band(x, -2.0)),
    ("bb_width", lambda x: 4.0 * x["bb_sigma"] / (x["close"] + x["bb_dev"])),
    ("bb_pctb", _bb_pctb),
    ("stoch_k", lambda x: x["stoch_k"]),
    ("stoch_d", lambda x: mean(x.win("stoch_k", 3))),
    ("atr_14", lambda x: x["atr"] / x["close"]),
    ("adx_14", lambda x: x["adx"]),
    ("plus_di_14", lambda x: x["plus_di"]),
    ("minus_di_14", lambda x: x["minus_di"]),
    *((f"sma_{n}", lambda x, n=n: _sma_rel(x, n)) for n in _SMA_PERIODS),
    *((f"ema_{n}", lambda x, n=n: x[f"ema_{n}"] / x["close"] - 1.0) for n in _EMA_PERIODS),
    *((f"wma_{n}", lambda x, n=n: _wma_rel(x, n)) for n in _WMA_PERIODS),
    ("vol_ratio_20", lambda x: div(x["volume"], x["vma_20"], 1.0)),
    ("vol_ma_ratio", lambda x: div(x["vma_20"], _vol_mean(x, 100), 1.0)),
    ("obv_flow_20", lambda x: div(mean(x.win("signed_vol", 20)), x["vma_20"], 0.0)),
    ("vpt_flow_20", lambda x: div(mean(x.win("ret_vol", 20)), x["vma_20"], 0.0)),
    ("hv_20", lambda x: std(x.win("logret", 20), ddof=1)),
    ("hv_50", lambda x: std(x.win("logret", 50), ddof=1)),
    ("trend_slope_20", lambda x: x["trend_slope"]),
    ("trend_r2_20", _trend_r2),
    ("res_dist_20", lambda x: _resistance(x, 20)),
    ("sup_dist_20", lambda x: _support(x, 20)),
    ("res_dist_100", lambda x: _resistance(x, 100)),
    ("sup_dist_100", lambda x: _support(x, 100)),
    ("roc_10", lambda x: x["close"] / x.lag("close", 10) - 1.0),
    ("mom_10_atr", lambda x: div(x["close"] - x.lag("close", 10), x["atr"], 0.0)),
)

FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _ in FEATURES)
N_FEATURES = len(FEATURE_NAMES)


def feature_set_hash(names: tuple[str, ...] = FEATURE_NAMES, version: int = FEATURE_VERSION) -> str:
    """Models store this and refuse to run against a different feature set."""
    canonical = f"quantum-trader-features|v{version}|" + ",".join(names)
    return hashlib.sha256(canonical.encode()).hexdigest()


FEATURE_SET_HASH = feature_set_hash()


class _Recorder:
    """A Ctx over one NaN row that notes which series a formula reads, and how far back."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.depth: dict[str, int] = {}
        self._cur: dict[str, np.ndarray] = {name: np.full(1, np.nan) for name in INPUTS}

    def __getitem__(self, name: str) -> np.ndarray:
        self.reads.add(name)
        return self._cur[name]

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self._cur[name] = values

    def _need(self, name: str, bars: int) -> None:
        self.reads.add(name)
        self.depth[name] = max(self.depth.get(name, 1), bars)

    def lag(self, name: str, k: int) -> np.ndarray:
        self._need(name, k + 1)
        return np.full(1, np.nan)

    def win(self, name: str, n: int) -> np.ndarray:
        self._need(name, n)
        return np.full((n, 1), np.nan)

    def trace(self, formula: Formula) -> tuple[np.ndarray, set[str], dict[str, int]]:
        self.reads, self.depth = set(), {}
        with np.errstate(divide="ignore", invalid="ignore"):
            value = formula(self)
        return value, self.reads, self.depth


Trace = tuple[set[str], dict[str, int]]


@functools.cache
def _traces() -> tuple[dict[str, Trace], dict[str, Trace]]:
    """For every step, and for every feature (some share a step's name): the series its formula reads, and
    the depth of each lag or window."""
    rec, steps, features = _Recorder(), {}, {}
    for step in STEPS:
        if isinstance(step, Ema):
            rec[step.name] = np.full(1, np.nan)
            steps[step.name] = ({step.source}, {})
        else:
            rec[step.name], *steps[step.name] = rec.trace(step.fn)
    for name, fn in FEATURES:
        _, *features[name] = rec.trace(fn)
    return steps, features


def required_steps(features: tuple[str, ...] = FEATURE_NAMES) -> tuple[Point | Ema, ...]:
    """The steps that `features` read, directly or through other steps, in STEPS order."""
    unknown = sorted(set(features) - set(FEATURE_NAMES))
    if unknown:
        raise ValueError(f"unknown features {unknown}; the features are {list(FEATURE_NAMES)}")
    steps, traces = _traces()
    needed: set[str] = set()
    todo = [name for feature in features for name in traces[feature][0]]
    while todo:
        name = todo.pop()
        if name not in needed and name in steps:
            needed.add(name)
            todo.extend(steps[name][0])
    return tuple(step for step in STEPS if step.name in needed)


def history_depths(features: tuple[str, ...] = FEATURE_NAMES) -> dict[str, int]:
    """Bars of history (current bar included) that each series read through lag/win must keep, to evaluate
    `features` and the steps they need."""
    steps, traces = _traces()
    depth: dict[str, int] = {}
    reads = [steps[step.name] for step in required_steps(features)] + [traces[name] for name in features]
    for _, depths in reads:
        for series, bars in depths.items():
            depth[series] = max(depth.get(series, 1), bars)
    return {name: bars for name, bars in depth.items() if bars > 1}

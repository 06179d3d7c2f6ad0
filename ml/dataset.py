"""Training data from a catalog: feature rows, windows of feature rows and forward-return labels.

One `WindowSet` pools every symbol of the universe (one model serves them all). A sample is an *anchor*:
a bar t of one symbol whose close is known. Its input is the window of feature rows t-L+1..t (L =
`lookback`, newest last), its label the forward log return ln(close[t+h] / close[t]) over `horizon`
bars. Windows are gathered on demand from one flat feature array, so sequences are never materialised.

Splits are by time, the same boundaries for every symbol: train, then validation, then test. Between
two consecutive splits `purge_bars + embargo_bars` bars of anchors are left out. The purge (at least the
horizon) makes sure no training label reaches into the validation or test period; the embargo adds a
margin for the serial correlation of overlapping labels and slow features.

Targets (`make_target`). `raw` is the forward log return above. Five-minute crypto returns are dominated
by the market's common move and by each symbol's volatility, so two transforms are offered:

* `vol_scaled`: the forward return over sigma_t * sqrt(horizon), sigma_t the standard deviation of the
  symbol's last `vol_window` one-bar log returns, the newest ending at t (known at t, never later), floored
  at `vol_floor` so a flat stretch cannot blow a label up. The label is then roughly in units of its own
  expected spread, and calm and wild symbols weigh alike in the loss.
* `demeaned`: the forward return minus the mean over the symbols that are anchors at the same timestamp
  (a symbol without a label at t is not part of t's mean; a timestamp with one symbol has no cross-section
  and is dropped). Zero means "no better than the average symbol": a relative-value view.
* `vol_scaled_demeaned`: scaled first, then demeaned.

Every target keeps the sign convention (positive: this symbol goes up, or beats the average), the raw
forward return is kept beside it (`raw_labels`), and the horizon paths the sequence models learn from are
transformed alike, so their last column is always the label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from ml.features import FEATURE_NAMES, N_FEATURES, compute_features
from quantum_trader.config import ConfigError, StrictModel

NS_PER_S = 1_000_000_000
TARGETS = ("raw", "vol_scaled", "demeaned", "vol_scaled_demeaned")


class SplitConfig(StrictModel):
    train: float = Field(0.70, gt=0, lt=1)
    validation: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    purge_bars: int | None = Field(None, ge=0, description="null = the label horizon")
    embargo_bars: int = Field(12, ge=0)

    @model_validator(mode="after")
    def _fractions(self):
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


@dataclass
class WindowSet:
    """Anchors over a pooled, flat feature array. Cheap to subset: the arrays behind it are shared."""

    features: np.ndarray  # (N, N_FEATURES) float32, all symbols' rows one after another
    log_close: np.ndarray  # (N,) float64
    rows: np.ndarray  # (m,) int64: flat row of each anchor (the window's newest bar)
    symbol_idx: np.ndarray  # (m,) int32
    times: np.ndarray  # (m,) int64 ns: close time of the anchor bar
    labels: np.ndarray  # (m,) float64: the target; `raw`: ln(close[t+h] / close[t])
    horizon: int
    symbols: list[str]
    target: str = "raw"
    # Set by make_target for any other target, None for raw (labels are then the raw forward return):
    raw_labels: np.ndarray | None = None  # (m,) ln(close[t+h] / close[t])
    scale: np.ndarray | None = None  # (m,) what a raw return at t is divided by (vol-scaled targets)
    centre: np.ndarray | None = None  # (m, horizon) the cross-sectional mean path, subtracted (demeaned)
    last: np.ndarray | None = None  # (m,) the momentum baseline in target units
    symbol_starts: np.ndarray | None = None  # (symbols + 1,) flat row where each symbol's bars begin, + end

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def forward_returns(self) -> np.ndarray:
        """(m,) the raw forward log return over the horizon, whatever the target."""
        return self.labels if self.raw_labels is None else self.raw_labels

    def subset(self, which: np.ndarray) -> WindowSet:
        """Anchors selected by a boolean mask or an index array (the flat arrays are shared, not copied)."""
        per_anchor = ("rows", "symbol_idx", "times", "labels", "raw_labels", "scale", "centre", "last")
        return replace(
            self, **{k: None if getattr(self, k) is None else getattr(self, k)[which] for k in per_anchor}
        )

    def tabular(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(k, N_FEATURES) float32: each anchor's own feature row."""
        return self.features[self.rows[idx]]

    def windows(self, idx: np.ndarray | slice, length: int) -> np.ndarray:
        """(k, length, N_FEATURES) float32: rows t-length+1..t of each selected anchor, oldest first."""
        rows = self.rows[idx]
        return self.features[rows[:, None] + np.arange(1 - length, 1)]

    def paths(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(k, horizon) float64: ln(close[t+j] / close[t]) for j = 1..horizon in target units (scaled and/or
        demeaned like the label); the last column is the label."""
        rows = self.rows[idx]
        ahead = self.log_close[rows[:, None] + np.arange(1, self.horizon + 1)]
        out = ahead - self.log_close[rows][:, None]
        if self.scale is not None:
            out = out / self.scale[idx][:, None]
        if self.centre is not None:
            out = out - self.centre[idx]
        return out

    def batches(self, batch_size: int, length: int, rng: np.random.Generator | None = None):
        """Yield (windows, labels, positions) mini-batches; shuffled when `rng` is given."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.windows(idx, length), self.labels[idx], idx


@dataclass
class SymbolBars:
    """One symbol's bars in time order; `close_time` is when each bar became known (ns)."""

    symbol: str
    frame: pd.DataFrame  # date (open time), open, high, low, close, volume
    close_time: np.ndarray  # int64 ns


def pool(bars: list[SymbolBars], horizon: int, lookback: int) -> WindowSet:
    """Features for every symbol, and every anchor with a finite window and a label."""
    feats, logc, rows, sym, times, labels = [], [], [], [], [], []
    offset = 0
    for i, sb in enumerate(bars):
        f = compute_features(sb.frame).to_numpy(dtype=np.float32)
        lc = np.log(sb.frame["close"].to_numpy(dtype=np.float64))
        ok = _valid_anchors(f, lc, horizon, lookback)
        idx = np.flatnonzero(ok)
        feats.append(f)
        logc.append(lc)
        rows.append(idx + offset)
        sym.append(np.full(len(idx), i, dtype=np.int32))
        times.append(sb.close_time[idx])
        labels.append(lc[idx + horizon] - lc[idx])
        offset += len(f)
    empty = np.empty((0, N_FEATURES), np.float32)
    return WindowSet(
        features=np.concatenate(feats) if feats else empty,
        log_close=np.concatenate(logc) if logc else np.empty(0),
        rows=np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64),
        symbol_idx=np.concatenate(sym) if sym else np.empty(0, np.int32),
        times=np.concatenate(times).astype(np.int64) if times else np.empty(0, np.int64),
        labels=np.concatenate(labels) if labels else np.empty(0),
        horizon=horizon,
        symbols=[sb.symbol for sb in bars],
        symbol_starts=np.cumsum([0] + [len(f) for f in feats]).astype(np.int64),
    )


def make_target(ws: WindowSet, target: str, vol_window: int = 288, vol_floor: float = 1e-4) -> WindowSet:
    """The pooled set with its labels (and paths, and the momentum baseline) in `target` units; module doc.

    Run on the whole pool, before any split or subsample: a demeaned label needs every symbol at its
    timestamp. `vol_window` is in bars; `vol_floor` is per bar, in log-return units.
    """
    if target not in TARGETS:
        raise ConfigError(f"dataset.target: unknown target {target!r}; allowed: {list(TARGETS)}")
    if target == "raw":
        return ws
    raw_paths = ws.paths()  # ws is raw here: plain forward paths
    last = ws.log_close[ws.rows] - ws.log_close[ws.rows - ws.horizon]
    out = replace(ws, target=target, raw_labels=ws.labels)
    keep = np.ones(len(ws), dtype=bool)
    if target.startswith("vol_scaled"):
        sigma = trailing_volatility(ws, vol_window)
        scale = np.maximum(sigma, vol_floor) * np.sqrt(ws.horizon)
        keep &= np.isfinite(scale)  # fewer than vol_window past returns: no scale known yet
        raw_paths, last = raw_paths / scale[:, None], last / scale
        out = replace(out, scale=scale)
    centre = np.zeros_like(raw_paths)
    if target.endswith("demeaned"):
        present = pd.Series(ws.times[keep]).value_counts()  # symbols with a label (and a scale) at t
        keep &= pd.Series(ws.times).map(present).fillna(0).to_numpy() >= 2  # one alone: no cross-section
        centre = _cross_sectional_mean(raw_paths, ws.times, keep)
        last = last - _cross_sectional_mean(last[:, None], ws.times, keep)[:, 0]
        out = replace(out, centre=centre)
    out = replace(out, labels=raw_paths[:, -1] - centre[:, -1], last=last)
    return out.subset(keep) if not keep.all() else out


def trailing_volatility(ws: WindowSet, window: int) -> np.ndarray:
    """(m,) std (ddof 1) of the `window` one-bar log returns ending at each anchor's bar, within its symbol.

    Only closes up to t enter (the newest return is ln(close[t] / close[t-1])). A return reaching back into
    the previous symbol's bars is not a return: an anchor with fewer than `window` of its own gets NaN.
    """
    r = np.diff(ws.log_close, prepend=np.nan)
    if ws.symbol_starts is None:
        raise ValueError("trailing_volatility needs the pool's symbol_starts (a WindowSet made by pool())")
    r[ws.symbol_starts[:-1][ws.symbol_starts[:-1] < len(r)]] = np.nan
    sigma = pd.Series(r).rolling(window, min_periods=window).std().to_numpy()
    return sigma[ws.rows]


def _cross_sectional_mean(values: np.ndarray, times: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(m, k): each anchor's timestamp's column means over the kept anchors (NaN where none is kept)."""
    frame = pd.DataFrame(np.where(keep[:, None], values, np.nan))
    return frame.groupby(times).transform("mean").to_numpy()


def full_windows(f: np.ndarray, lookback: int) -> np.ndarray:
    """True at rows whose last `lookback` feature rows (this one included) are all finite."""
    finite = np.isfinite(f).all(axis=1)
    bad_before = np.concatenate([[0], np.cumsum(~finite)])  # bad rows among the first k rows
    t = np.arange(len(f))
    return (t >= lookback - 1) & (bad_before[t + 1] - bad_before[np.maximum(t + 1 - lookback, 0)] == 0)


def _valid_anchors(f: np.ndarray, log_close: np.ndarray, horizon: int, lookback: int) -> np.ndarray:
    """Rows with a full finite window and a finite label."""
    n = len(f)
    window_ok = full_windows(f, lookback)
    label_ok = np.zeros(n, dtype=bool)
    if n > horizon:
        label_ok[: n - horizon] = np.isfinite(log_close[horizon:] - log_close[:-horizon])
    return window_ok & label_ok


@dataclass
class Splits:
    train: WindowSet
    validation: WindowSet
    test: WindowSet
    boundaries: dict[str, pd.Timestamp]  # first/last anchor time of each split


def split_by_time(ws: WindowSet, cfg: SplitConfig, interval_ns: int) -> Splits:
    """Time-ordered train / validation / test with a purge + embargo gap between consecutive splits."""
    if len(ws) == 0:
        raise ConfigError("dataset: no usable rows (each symbol needs warm-up, lookback and horizon bars)")
    purge = ws.horizon if cfg.purge_bars is None else cfg.purge_bars
    if purge < ws.horizon:
        raise ConfigError(
            f"split.purge_bars: must be at least the label horizon ({ws.horizon}), got {purge}; "
            "a smaller gap lets training labels see the validation period"
        )
    gap = (purge + cfg.embargo_bars) * interval_ns
    t0, t1 = int(ws.times.min()), int(ws.times.max())
    span = t1 - t0
    b1 = t0 + int(span * cfg.train)
    b2 = t0 + int(span * (cfg.train + cfg.validation))
    train = ws.times < b1
    val = (ws.times >= b1 + gap) & (ws.times < b2)
    test = ws.times >= b2 + gap if cfg.test > 0 else np.zeros(len(ws), dtype=bool)
    splits = Splits(ws.subset(train), ws.subset(val), ws.subset(test), {})
    for name, part in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        if name != "test" and len(part) == 0:
            raise ConfigError(f"dataset: the {name} split is empty; widen the period or change split.{name}")
        if len(part):
            splits.boundaries[f"{name}_start"] = pd.Timestamp(int(part.times.min()), tz="UTC")
            splits.boundaries[f"{name}_end"] = pd.Timestamp(int(part.times.max()), tz="UTC")
    return splits


def subsample(ws: WindowSet, max_rows: int | None, seed: int) -> WindowSet:
    """At most `max_rows` anchors, drawn without replacement by `seed`, kept in time order."""
    if max_rows is None or len(ws) <= max_rows:
        return ws
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(ws), size=max_rows, replace=False))
    return ws.subset(keep)


def subsample_timestamps(ws: WindowSet, max_rows: int | None, seed: int) -> WindowSet:
    """Whole timestamps drawn by `seed` (every symbol at each kept), in time order, until about `max_rows`
    anchors: the cross-sections stay complete for the cross-sectional IC."""
    if max_rows is None or len(ws) <= max_rows:
        return ws
    stamps, counts = np.unique(ws.times, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(stamps))
    n = int(np.searchsorted(np.cumsum(counts[order]), max_rows, side="right"))
    return ws.subset(np.isin(ws.times, stamps[order[: max(n, 1)]]))


def load_symbol_bars(catalog: Path | str, bar_types: list, start=None, end=None) -> list[SymbolBars]:
    """Bars of each bar type from the catalog, cut to bars that close inside [start, end)."""
    from catalog.instruments import symbol_of
    from catalog.store import CatalogStore, interval_of, interval_seconds

    store = CatalogStore(Path(catalog))
    out = []
    for bt in bar_types:
        df = store.read_bars_frame(bt)
        step = interval_seconds(interval_of(bt)) * NS_PER_S
        close = df["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64) + step
        keep = np.ones(len(df), dtype=bool)
        if start is not None:
            keep &= close >= pd.Timestamp(start).value
        if end is not None:
            keep &= close < pd.Timestamp(end).value
        out.append(SymbolBars(symbol_of(bt.instrument_id), df[keep].reset_index(drop=True), close[keep]))
    return out


__all__ = [
    "FEATURE_NAMES",
    "SplitConfig",
    "Splits",
    "SymbolBars",
    "WindowSet",
    "TARGETS",
    "load_symbol_bars",
    "make_target",
    "pool",
    "split_by_time",
    "subsample",
    "subsample_timestamps",
]

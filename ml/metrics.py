"""Forecast metrics, the naive baselines beside them, and the leakage alarm.

Every metric is reported next to two baselines that need no model: `zero` (predict no move) and `last`
(predict that the last horizon's return repeats, i.e. momentum). Five-minute crypto returns are close to
unpredictable, so an honest model beats them by a little. A model that beats them by a lot has almost
certainly seen the future: `check_leakage` fails loudly instead of letting such a number be celebrated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("rmse", "mae", "r2", "directional_accuracy", "rank_ic")
# Beside the pooled rank IC when the timestamps are known: the per-timestamp cross-sectional rank IC's mean,
# its t-stat and how many timestamps it averages (cross_sectional_ic).
CROSS_SECTIONAL = ("cs_ic", "cs_ic_t", "cs_ic_n")

# Beyond these, a 5-minute return forecast is not skill but leakage (a label in the inputs, a shifted
# timestamp, a split without purge). Honest models on this data sit near r2 0.00-0.02, accuracy 0.50-0.55.
LEAKAGE_LIMITS = {"r2": 0.30, "directional_accuracy": 0.70, "rank_ic": 0.50}


class LeakageSuspected(RuntimeError):
    """A metric far too good to be true for this problem."""


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def cross_sectional_ic(
    pred: np.ndarray, actual: np.ndarray, timestamps: np.ndarray, min_names: int = 3
) -> dict:
    """Rank IC computed across symbols at each timestamp, then summarised over time.

    The pooled IC mixes two things: ranking symbols against each other and timing the market as a whole. A
    long/short book sized by forecast rank only earns the first; this is it. Timestamps with fewer than
    `min_names` symbols, or no dispersion in forecasts or outcomes, are left out. `t_stat` is the mean over its
    standard error (the per-timestamp ICs treated as independent; overlapping labels make that optimistic).
    """
    frame = pd.DataFrame(
        {"t": np.asarray(timestamps), "p": np.asarray(pred, float), "a": np.asarray(actual, float)}
    )
    frame = frame[np.isfinite(frame["p"]) & np.isfinite(frame["a"])]
    sizes = frame.groupby("t")["p"].transform("size")
    frame = frame[sizes >= min_names]
    ranks = frame.groupby("t")[["p", "a"]].rank()
    ranks["t"] = frame["t"]
    per_t = ranks.groupby("t").apply(_rank_corr, include_groups=False).dropna()
    n = len(per_t)
    mean = float(per_t.mean()) if n else float("nan")
    std = float(per_t.std(ddof=1)) if n > 1 else float("nan")
    t_stat = mean / (std / np.sqrt(n)) if n > 1 and std > 0 else float("nan")
    return {"mean": mean, "std": std, "t_stat": float(t_stat), "n_timestamps": n}


def _rank_corr(group: pd.DataFrame) -> float:
    p, a = group["p"].to_numpy(), group["a"].to_numpy()
    if p.std() == 0 or a.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, a)[0, 1])


def regression_metrics(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    err = pred - actual
    ss_tot = float(((actual - actual.mean()) ** 2).sum())
    moved = actual != 0
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else 0.0,
        "directional_accuracy": directional_accuracy(pred, actual) if moved.any() else float("nan"),
        "rank_ic": spearman(pred, actual),
    }


def scores(pred: np.ndarray, actual: np.ndarray, timestamps: np.ndarray | None = None) -> dict[str, float]:
    """regression_metrics, and with the timestamps the CROSS_SECTIONAL ones beside the pooled rank IC.

    A forecast with no spread across symbols (the zero forecast) ranks nothing: its cs_ic is NaN over 0
    timestamps, which is the honest answer, not 0."""
    out = regression_metrics(pred, actual)
    if timestamps is not None:
        cs = cross_sectional_ic(pred, actual, timestamps)
        out |= {"cs_ic": cs["mean"], "cs_ic_t": cs["t_stat"], "cs_ic_n": cs["n_timestamps"]}
    return out


def directional_accuracy(pred: np.ndarray, actual: np.ndarray) -> float:
    """Share of the bars that moved whose direction the forecast got right; a forecast of exactly 0 says
    nothing about direction and scores a coin flip (0.5), so the zero baseline scores 0.5."""
    moved = actual != 0
    hit = np.where(pred[moved] == 0, 0.5, (np.sign(pred[moved]) == np.sign(actual[moved])).astype(float))
    return float(hit.mean())


def baselines(
    last_return: np.ndarray, actual: np.ndarray, timestamps: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """`zero`: no move (for a demeaned target: no symbol beats the average). `last`: the return of the
    previous `horizon` bars, repeated (momentum), given in the target's units by the caller."""
    zero = scores(np.zeros_like(actual, dtype=np.float64), actual, timestamps)
    return {"zero": zero, "last": scores(last_return, actual, timestamps)}


def ic_by_symbol(
    pred: np.ndarray, actual: np.ndarray, symbol_idx: np.ndarray, symbols: list[str]
) -> pd.Series:
    out = {}
    for i, name in enumerate(symbols):
        mask = symbol_idx == i
        if mask.sum() >= 3:
            out[name] = spearman(pred[mask], actual[mask])
    return pd.Series(out, name="rank_ic", dtype=float)


def check_leakage(name: str, split: str, metrics: dict[str, float], n: int) -> None:
    """Raise LeakageSuspected when a metric is beyond what this problem allows (ignored on tiny sets)."""
    if n < 500:
        return
    bad = [
        f"{key} {metrics[key]:.3f} > {limit}"
        for key, limit in LEAKAGE_LIMITS.items()
        if np.isfinite(metrics.get(key, np.nan)) and metrics[key] > limit
    ]
    if bad:
        raise LeakageSuspected(
            f"{name} on {split}: {', '.join(bad)}. That is not skill on 5-minute returns; look for "
            "look-ahead in the features, labels in the inputs, shifted timestamps or a split without purge."
        )


def metrics_table(results: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """{model: {split: metrics}} -> a frame indexed by (model, split) with the METRICS as columns, and the
    CROSS_SECTIONAL ones where they were scored."""
    rows = {(m, s): vals for m, splits in results.items() for s, vals in splits.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame[[c for c in (*METRICS, *CROSS_SECTIONAL) if c in frame.columns or c in METRICS]]

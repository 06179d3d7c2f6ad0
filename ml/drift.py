"""Feature drift: how far the features seen now have moved from the ones a model was trained on.

At registration (ml/train.py) each feature's training distribution is stored in the model's meta.json under
`feature_distribution`: the inner decile edges of the training anchors' feature rows and the share of rows in
each bin. A drift check puts recent feature rows into the same bins and measures the Population Stability
Index per feature,

    PSI = sum over bins of (actual_share - expected_share) * ln(actual_share / expected_share),

with every share floored at PSI_FLOOR so an empty bin does not make it infinite. PSI is 0 for the same
distribution; the usual reading is < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a large one. The alarm
statistic (actors/clm.py) is the mean PSI over the features, or the largest one. A model registered before
this record existed has no reference: its check says so instead of failing.
"""

from __future__ import annotations

import numpy as np

BINS = 10
PSI_FLOOR = 1e-4  # a bin share of zero would make ln() infinite; 1e-4 is far below one row in ten thousand


def feature_distribution(rows: np.ndarray, names: list[str] | tuple[str, ...], bins: int = BINS) -> dict:
    """The reference distribution of each feature column of `rows` (n, len(names)): what meta.json stores.

    Edges are the inner quantiles; repeated edges (a feature with few distinct values) are merged, so the
    shares stay those of the bins actually used. Non-finite values are left out."""
    rows = np.asarray(rows, dtype=np.float64)
    edges, shares = {}, {}
    for j, name in enumerate(names):
        column = rows[:, j]
        column = column[np.isfinite(column)]
        if len(column) == 0:
            continue
        inner = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        edges[name] = inner.tolist()
        shares[name] = bin_shares(column, inner).tolist()
    return {"statistic": "psi", "bins": bins, "rows": int(len(rows)), "edges": edges, "shares": shares}


def bin_shares(values: np.ndarray, inner_edges) -> np.ndarray:
    """The share of `values` in each bin that `inner_edges` (sorted) cut the line into."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=len(inner_edges) + 1)
    return counts / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population Stability Index of `actual` bin shares against `expected` ones (same bins)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def drift(distribution: dict | None, rows: np.ndarray, names: list[str] | tuple[str, ...]) -> dict:
    """PSI of each feature in `rows` against a stored `feature_distribution`.

    Returns {"psi": {feature: value}, "max": ..., "feature": the feature with the max, "mean": ..., "rows": n},
    or {"reason": ...} when there is no reference or no rows to compare."""
    if not distribution or not distribution.get("edges"):
        return {"reason": "no reference: the model was registered without a feature_distribution"}
    rows = np.asarray(rows, dtype=np.float64)
    if len(rows) == 0:
        return {"reason": "no feature rows since the last check"}
    values = {}
    for j, name in enumerate(names):
        if name in distribution["edges"]:
            inner = np.asarray(distribution["edges"][name])
            values[name] = psi(distribution["shares"][name], bin_shares(rows[:, j], inner))
    if not values:
        return {"reason": "no feature of the reference is computed by this build"}
    worst = max(values, key=values.get)
    return {
        "psi": values,
        "max": values[worst],
        "feature": worst,
        "mean": float(np.mean(list(values.values()))),
        "rows": int(len(rows)),
    }


__all__ = ["BINS", "PSI_FLOOR", "bin_shares", "drift", "feature_distribution", "psi"]

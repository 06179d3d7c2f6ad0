"""Lookahead detector: a feature leaks the future if its value at bar t depends on bars after t.

The check is black-box, so it works for any feature function: recompute on the frame truncated right
after bar t and compare row t with the full-history computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd


def _changed(truncated: pd.Series, full: pd.Series, rtol: float, atol: float) -> pd.Series:
    a = truncated.to_numpy(dtype=np.float64)
    b = full.to_numpy(dtype=np.float64)
    same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    return pd.Series(~same, index=full.index)


def find_lookahead(
    compute: Callable[[pd.DataFrame], pd.DataFrame],
    df: pd.DataFrame,
    checkpoints: Iterable[int],
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> list[str]:
    """Names of the columns of compute(df) whose row t changes when df is cut after bar t.

    `checkpoints` are row positions t (0 <= t < len(df)). Columns are returned in compute's order.
    NaN compares equal to NaN; a NaN that turns finite (or back) counts as a change. The tolerance
    only absorbs rounding that depends on the frame's length (e.g. BLAS blocking); a causal feature
    computed elementwise or by a sequential recursion reproduces row t exactly.
    """
    full = compute(df)
    leaking: set[str] = set()
    for t in checkpoints:
        if not 0 <= t < len(df):
            raise IndexError(f"checkpoint {t} outside [0, {len(df)})")
        truncated = compute(df.iloc[: t + 1])
        changed = _changed(truncated.iloc[t].reindex(full.columns), full.iloc[t], rtol, atol)
        leaking.update(changed.index[changed.to_numpy()])
    return [name for name in full.columns if name in leaking]

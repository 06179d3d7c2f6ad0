"""Batch (vectorised) evaluator: the feature matrix of one symbol's whole bar history.

The history is evaluated in chunks of rows so that memory stays bounded on long histories (2-D steps
hold 100 values per row). A chunk carries over from the previous one exactly what the online
evaluator carries from bar to bar: the tail of each windowed series and each EMA's last value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from ml.features.definition import (
    FEATURE_NAMES,
    FEATURES,
    INPUTS,
    STEPS,
    WARMUP_BARS,
    Ema,
    history_depths,
)

CHUNK_ROWS = 8192


class _ChunkCtx:
    """Formulas see the chunk's rows; lags and windows reach back into the previous chunks' tail."""

    def __init__(self, rows: int, tails: dict[str, np.ndarray]) -> None:
        self._rows = rows
        self._tails = tails
        self._cur: dict[str, np.ndarray] = {}
        self._extended: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cur[name]

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self._cur[name] = values

    def _tail_and_chunk(self, name: str) -> tuple[np.ndarray, int]:
        if name not in self._extended:
            self._extended[name] = np.concatenate([self._tails[name], self._cur[name]])
        return self._extended[name], len(self._tails[name])

    def lag(self, name: str, k: int) -> np.ndarray:
        values, start = self._tail_and_chunk(name)
        return values[start - k : start - k + self._rows]

    def win(self, name: str, n: int) -> np.ndarray:
        values, start = self._tail_and_chunk(name)
        # (n, rows) view: row j is a contiguous slice, so reductions over axis 0 add whole rows
        return sliding_window_view(values[start - n + 1 :], n).T

    def tails(self) -> dict[str, np.ndarray]:
        """What the next chunk needs of each windowed series: its last depth − 1 values."""
        return {name: self._tail_and_chunk(name)[0][-len(tail) :] for name, tail in self._tails.items()}


def _ema(source: np.ndarray, com: float, last: float) -> np.ndarray:
    # Prepending the previous chunk's last value resumes pandas' recursion exactly where it stopped.
    resumed = pd.Series(np.concatenate([[last], source])).ewm(com=com, adjust=False).mean()
    return resumed.to_numpy()[1:]


def _chunk(
    inputs: dict[str, np.ndarray], tails: dict[str, np.ndarray], ema_last: dict[str, float]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = len(inputs["close"])
    ctx = _ChunkCtx(rows, tails)
    for name, values in inputs.items():
        ctx[name] = values
    for step in STEPS:
        if isinstance(step, Ema):
            ctx[step.name] = _ema(ctx[step.source], step.com, ema_last[step.name])
            ema_last[step.name] = ctx[step.name][-1]
        else:
            ctx[step.name] = step.fn(ctx)
    matrix = np.empty((len(FEATURES), rows))  # feature-major: each formula fills a contiguous row
    for j, (_, fn) in enumerate(FEATURES):
        matrix[j] = fn(ctx)
    return matrix, ctx.tails()


def compute_features(df: pd.DataFrame, *, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Feature matrix (columns FEATURE_NAMES, float64, index of `df`) for one symbol's bars in time order.

    Row t reads bars <= t only; rows of the first WARMUP_BARS - 1 bars are NaN. `chunk_rows` bounds
    memory (about 10 KB per row of a chunk) and does not change the result.
    """
    columns = {name: df[name].to_numpy(dtype=np.float64) for name in INPUTS}
    tails = {name: np.full(depth - 1, np.nan) for name, depth in history_depths().items()}
    ema_last = {step.name: np.nan for step in STEPS if isinstance(step, Ema)}
    # Feature-major, which is also how pandas stores a float frame's columns: no copy at the end.
    out = np.empty((len(FEATURE_NAMES), len(df)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, len(df), chunk_rows):
            part = {name: values[start : start + chunk_rows] for name, values in columns.items()}
            out[:, start : start + chunk_rows], tails = _chunk(part, tails, ema_last)
    out[:, : WARMUP_BARS - 1] = np.nan
    return pd.DataFrame(out.T, index=df.index, columns=list(FEATURE_NAMES), copy=False)

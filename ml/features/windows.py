"""The newest `lookback` feature rows of each symbol, as the models read them: shared by the EnsembleStrategy
and the continuous-learning actor's shadow scoring, so both feed a model the same windows."""

from __future__ import annotations

import numpy as np

from ml.features.definition import N_FEATURES


class FeatureWindows:
    def __init__(self, n_slots: int, lookback: int) -> None:
        self.windows = np.full((n_slots, lookback, N_FEATURES), np.nan, dtype=np.float32)
        self.filled = np.zeros(n_slots, dtype=np.int64)  # finite rows in a row at the end of each window

    @property
    def lookback(self) -> int:
        return self.windows.shape[1]

    def push(self, slots: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Append each slot's new feature row to its window; True where a full finite window exists."""
        w = self.windows
        w[slots, :-1] = w[slots, 1:]
        w[slots, -1] = rows
        finite = np.isfinite(rows).all(axis=1)
        self.filled[slots] = np.where(finite, self.filled[slots] + 1, 0)
        return self.filled[slots] >= w.shape[1]

    def resize(self, lookback: int) -> None:
        """Keep the newest rows under a new lookback (a hot-swapped model that reads a longer window waits
        until it has one: the missing older rows are NaN)."""
        n, old, width = self.windows.shape
        resized = np.full((n, lookback, width), np.nan, dtype=np.float32)
        keep = min(old, lookback)
        resized[:, lookback - keep :] = self.windows[:, old - keep :]
        self.windows = resized

"""Sliding windows over a plain multivariate series, for the sequence nets' general (non-trading) use.

A window's input is the `lookback` rows (all C columns) before its anchor; its target is the next
`horizon` rows of the chosen target columns: the plain multi-step target of the forecasting papers (ETT,
Weather, ...), not the trading set's cumulative forward return. The object quacks like
ml.dataset.WindowSet where the shared training loop (ml.models.torch_common) touches it: `len`,
`batches(batch_size, length, rng)` and `paths(idx)` (the targets), so one loop trains both uses.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class SeriesWindows:
    """Every window of `series` (T, C) with `lookback` input rows and `horizon` target rows, in time order."""

    def __init__(self, series: np.ndarray, lookback: int, horizon: int, targets: list[int]):
        self.series = np.ascontiguousarray(series, dtype=np.float32)
        if self.series.ndim != 2:
            raise ValueError(f"a series must be (time, channels), got shape {self.series.shape}")
        self.lookback, self.horizon, self.targets = int(lookback), int(horizon), list(targets)
        n = len(self.series) - self.lookback - self.horizon + 1
        self.starts = np.arange(max(n, 0))
        # views, no copies: (T - len + 1, C, len)
        self._inputs = sliding_window_view(self.series, self.lookback, axis=0)
        self._ahead = sliding_window_view(self.series[self.lookback :, self.targets], self.horizon, axis=0)

    def __len__(self) -> int:
        return len(self.starts)

    def inputs(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(k, lookback, C) float32 input windows."""
        return np.ascontiguousarray(self._inputs[self.starts[idx]].transpose(0, 2, 1))

    def paths(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(k, horizon, len(targets)) float32: the next `horizon` values of the target columns."""
        return np.ascontiguousarray(self._ahead[self.starts[idx]].transpose(0, 2, 1))

    def batches(self, batch_size: int, length: int, rng: np.random.Generator | None = None):
        """Yield (windows, None, positions) mini-batches; shuffled when `rng` is given (as WindowSet)."""
        if length != self.lookback:
            raise ValueError(f"windows are {self.lookback} rows long, asked for {length}")
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.inputs(idx), None, idx

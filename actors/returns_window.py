"""The last `window` log returns of every symbol's closes, for the correlation gate (SPEC section 6).

One preallocated `(n_symbols, window)` float64 ring: `update` writes one value in place and allocates no
array, so it can run on every bar of every symbol in a 100-symbol backtest. Symbols are addressed by
`slot` (0 .. n_symbols-1), the index the strategy gives each instrument.

Alignment: returns are aligned by update count, from the newest backwards. The k-th newest return of
one slot is paired with the k-th newest return of another. That is the same bar for both only if every
symbol is updated once per bar (the strategy calls `update` on every closed bar of every symbol, which is
what it does). A symbol that joined later simply has fewer returns; the pair uses the returns both have.

A close that is not finite or not positive is ignored (no return is written and the previous good
close stays the reference), so one bad bar cannot poison a window with NaN.
"""

import math

import numpy as np

MIN_COMMON_RETURNS = 20
# A series whose sum of squared deviations is below this per return is treated as constant: a standard
# deviation of 1e-10 in log-return units, far below one tick of any real price.
_ZERO_VARIANCE = 1e-20


class ReturnsWindow:
    def __init__(self, n_symbols: int, window: int, min_periods: int = MIN_COMMON_RETURNS):
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be at least 1, got {n_symbols}")
        if window < 2:
            raise ValueError(f"window must be at least 2 returns, got {window}")
        if min_periods < 2:
            raise ValueError(f"min_periods must be at least 2, got {min_periods}")
        self.n_symbols = n_symbols
        self.window = window
        self.min_periods = min_periods
        self._ring = np.zeros((n_symbols, window), dtype=np.float64)
        self._count = np.zeros(n_symbols, dtype=np.int64)  # returns written so far (not capped)
        self._last = [math.nan] * n_symbols  # last good close per slot (a list: scalar access is faster)
        self._steps = np.arange(window, dtype=np.int64)

    def update(self, slot: int, close: float) -> None:
        """Record one bar's close of `slot`; from the second good close on, a log return is written."""
        if not 0 <= slot < self.n_symbols:
            raise IndexError(f"slot {slot} outside 0..{self.n_symbols - 1}")
        if not (close > 0.0 and math.isfinite(close)):
            return
        last = self._last[slot]
        self._last[slot] = close
        if last != last:  # NaN: the first good close of this slot
            return
        n = int(self._count[slot])
        self._ring[slot, n % self.window] = math.log(close / last)
        self._count[slot] = n + 1

    def update_all(self, closes: np.ndarray) -> None:
        """Record one timestamp's close of every slot at once (NaN where a slot has no price yet).

        Used once per timestamp, after every symbol's bar of it arrived, so every series has the same bars
        and stays aligned; a slot without a new bar repeats its last close (a zero return).
        """
        closes = np.where(np.isfinite(closes) & (closes > 0), closes, np.nan)
        last = np.asarray(self._last, dtype=np.float64)
        closes = np.where(np.isnan(closes), last, closes)
        ok = np.isfinite(last) & np.isfinite(closes)
        rows = np.flatnonzero(ok)
        if len(rows):
            counts = self._count[rows]
            self._ring[rows, counts % self.window] = np.log(closes[rows] / last[rows])
            self._count[rows] = counts + 1
        self._last = closes.tolist()

    def n_returns(self, slot: int) -> int:
        """How many returns of `slot` are in the window (at most `window`)."""
        return min(int(self._count[slot]), self.window)

    def returns(self, slot: int) -> np.ndarray:
        """A copy of `slot`'s returns in the window, oldest first."""
        n = self.n_returns(slot)
        idx = (int(self._count[slot]) - n + self._steps[:n]) % self.window
        return self._ring[slot, idx]

    def correlations(self, slot: int, others: np.ndarray) -> np.ndarray:
        """Pearson correlation of `slot`'s returns with each slot in `others`, over the newest returns both
        have. NaN where they share fewer than `min_periods` returns or either side has zero variance."""
        others = np.asarray(others, dtype=np.int64).reshape(-1)
        out = np.full(others.shape[0], np.nan)
        if others.shape[0] == 0:
            return out
        if not 0 <= slot < self.n_symbols or others.min() < 0 or others.max() >= self.n_symbols:
            raise IndexError(f"slot outside 0..{self.n_symbols - 1}")
        w = self.window
        own_count = int(self._count[slot])
        counts = self._count[others]
        common = np.minimum(np.minimum(counts, own_count), w)
        # Usually every pair shares the same number of returns (a full window): one vectorised pass.
        for n in np.unique(common).tolist():
            if n < self.min_periods:
                continue
            rows = np.flatnonzero(common == n)
            if n == w and bool(((counts[rows] - own_count) % w == 0).all()):
                # Full windows written up to the same ring position are aligned as they lie: rotating
                # both series alike does not change their correlation, so no reordering is needed.
                a = self._ring[slot]
                b = self._ring[others[rows]]
            else:
                a = self._ring[slot, (own_count - n + self._steps[:n]) % w]
                b = self._ring[others[rows, None], (counts[rows, None] - n + self._steps[None, :n]) % w]
            out[rows] = _pearson(a, b, n)
        return out


def _pearson(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Correlation of the series `a` with each row of `b`; NaN where either has (near) zero variance."""
    limit = _ZERO_VARIANCE * n
    corr = np.full(b.shape[0], np.nan)
    a = a - a.mean()
    ss_a = float(a @ a)
    if ss_a <= limit:
        return corr
    b = b - b.mean(axis=1, keepdims=True)
    ss_b = np.einsum("ij,ij->i", b, b)
    ok = ss_b > limit
    corr[ok] = (b[ok] @ a) / np.sqrt(ss_a * ss_b[ok])
    return np.clip(corr, -1.0, 1.0)

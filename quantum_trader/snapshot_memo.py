"""Keeps Nautilus' Portfolio from unpickling the same closed-position snapshots again and again.

In NETTING mode every re-opened position leaves a pickled snapshot of its last cycle in the cache. Nautilus
1.231's `Portfolio._ensure_snapshot_pnls_cached_for(instrument)` reads an instrument's new snapshots and
remembers how many it has read per position, but then forgets that count for every position of every OTHER
instrument (its "stale entries" prune compares against this instrument's snapshots only). So each call,
made on every position event of a closed position, unpickles all of that instrument's snapshots from the
first: quadratic in the number of trades per symbol. On 100 symbols x 90 days the ensemble spent 55 s of
212 s in 1.68M `pickle.loads` calls.

The method is compiled (cdef), so it cannot be replaced; it looks up `pickle` in its module's globals on
every call, so that one name is pointed at a stand-in whose `loads` remembers what each snapshot's bytes
gave. The Portfolio only reads `account_id` and `realized_pnl` from a snapshot, so one shared object per
snapshot changes nothing; tests/test_snapshot_memo.py proves a flipping strategy's fills and PnL are the
same with and without it. The memory is one Position per snapshot (about 3.4 KB; the compiled code insists
on a real Position, so a slimmer stand-in is refused), and `reset()` drops them between runs.
"""

import pickle

import nautilus_trader.portfolio.portfolio as _portfolio_module


class MemoizedPickle:
    """`pickle` for the portfolio module alone: `loads` is memoised on the snapshot's bytes."""

    def __init__(self) -> None:
        self._loaded: dict[bytes, object] = {}
        self.calls = 0

    def loads(self, data: bytes, *args, **kwargs):
        self.calls += 1
        found = self._loaded.get(data)
        if found is None:
            found = self._loaded[data] = pickle.loads(data, *args, **kwargs)
        return found

    @property
    def unpickled(self) -> int:
        """Distinct snapshots really unpickled since the last reset."""
        return len(self._loaded)

    def reset(self) -> None:
        self._loaded.clear()
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(pickle, name)


def memoize_position_snapshots() -> MemoizedPickle:
    """Install the stand-in (once per process) and start it empty; returns it."""
    memo = _portfolio_module.pickle
    if not isinstance(memo, MemoizedPickle):
        memo = _portfolio_module.pickle = MemoizedPickle()
    memo.reset()
    return memo


def forget_position_snapshots() -> None:
    """Put the real `pickle` back (for a comparison run)."""
    _portfolio_module.pickle = pickle

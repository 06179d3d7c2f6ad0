"""The research fast path: an ensemble's Signal events for a whole period, computed in batch.

`batch_signals` gives exactly the signals the EnsembleStrategy publishes bar by bar in a backtest over the
same bars (tests/test_ensemble_strategy.py proves it): the same feature rows (batch and online feature
evaluators agree), the same windows, the same per-row model forecasts, the same vote. Written into the
catalog with `write_signals`, they let a parameter sweep replay decisions (`signal_source: catalog`)
instead of re-running inference for every variant of the trading rules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from ml.dataset import SymbolBars, full_windows
from ml.ensemble import DIRECTION_NAMES, Ensemble
from ml.features import FEATURE_SET_HASH, compute_features
from quantum_trader.events import Signal

PREDICT_CHUNK = 8192


def batch_signals(
    ensemble: Ensemble,
    bars: list[SymbolBars],
    instrument_ids: list[InstrumentId],
    batch_delay_ms: int = 500,
    end_ns: int | None = None,
) -> list[Signal]:
    """Signals for every bar of every symbol that has a full window, ordered by (time, symbol order).

    With `end_ns` (a backtest's end), a bar whose decision time (close + batch delay) falls after it has
    no signal, as in the backtest, whose clock stops at the end.
    """
    lookback = ensemble.lookback
    out = []
    for sb, iid in zip(bars, instrument_ids, strict=True):
        features = compute_features(sb.frame).to_numpy(dtype=np.float32)
        rows = np.flatnonzero(full_windows(features, lookback))
        if end_ns is not None:
            rows = rows[sb.close_time[rows] + batch_delay_ms * 1_000_000 <= end_ns]
        if len(rows) == 0:
            continue
        forecasts = np.concatenate(
            [
                _forecasts(ensemble, features[chunk[:, None] + np.arange(1 - lookback, 1)])
                for chunk in np.array_split(rows, max(1, len(rows) // PREDICT_CHUNK + 1))
                if len(chunk)
            ]
        )
        votes = ensemble.combine(forecasts)
        out.extend(_signals(ensemble, iid, sb.close_time[rows], votes, batch_delay_ms * 1_000_000))
    order = {iid: i for i, iid in enumerate(instrument_ids)}
    out.sort(key=lambda s: (s.ts_event, order[s.instrument_id]))
    return out


def _forecasts(ensemble: Ensemble, windows: np.ndarray) -> np.ndarray:
    return np.column_stack([m.model.predict(windows) for m in ensemble.members])


def _signals(ensemble: Ensemble, iid: InstrumentId, ts: np.ndarray, votes, delay_ns: int) -> list[Signal]:
    kinds = ensemble.kinds
    ids = ensemble.model_ids
    return [
        Signal(
            ts_event=int(ts[i]),
            ts_init=int(ts[i]) + delay_ns,
            instrument_id=iid,
            direction=DIRECTION_NAMES[int(votes.direction[i])],
            confidence=float(votes.confidence[i]),
            prob_up=float(votes.prob_up[i]),
            forecast=float(votes.forecast[i]),
            model_ids=ids,
            features_hash=FEATURE_SET_HASH,
            **{f"vote_{k}": float(votes.votes[i, j]) for j, k in enumerate(kinds)},
        )
        for i in range(len(ts))
    ]


def write_signals(catalog: str | Path, signals: list[Signal]) -> None:
    ParquetDataCatalog(str(catalog)).write_data(sorted(signals, key=lambda s: s.ts_init))


def read_signals(catalog: str | Path, start=None, end=None) -> list[Signal]:
    """Signals whose decision time falls inside [start, end]."""
    cat = ParquetDataCatalog(str(catalog))
    kwargs = {}
    if start is not None:
        kwargs["start"] = pd.Timestamp(start)
    if end is not None:
        kwargs["end"] = pd.Timestamp(end)
    try:
        return list(cat.custom_data(Signal, **kwargs))
    except Exception as err:  # an empty catalog raises from deep in the reader
        if "not found" in str(err).lower() or "no data" in str(err).lower():
            return []
        raise

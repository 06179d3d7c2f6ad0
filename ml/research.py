"""The research fast path: an ensemble's Signal events for a whole period, computed in batch.

`batch_signals` gives exactly the signals the EnsembleStrategy publishes bar by bar in a backtest over the
same bars (tests/test_ensemble_strategy.py proves it): the same feature rows (batch and online feature
evaluators agree), the same windows, the same per-row model forecasts, the same vote. Written into the
catalog with `write_signals` (Nautilus custom data, `qt signals CONFIG`), they let a parameter sweep replay
decisions (`signal_source: catalog`) instead of re-running inference for every variant of the trading rules.

A replay reads them back as columns (`read_signal_table`), not as Signal objects fed through the data engine:
at 100 symbols a Python object per decision cost more than the models themselves (a 12-day replay ran 1.9x
slower than scoring and took 3x the memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from tqdm import tqdm

from ml.dataset import SymbolBars, full_windows
from ml.ensemble import DIRECTION_NAMES, Ensemble
from ml.features import FEATURE_SET_HASH, compute_features
from quantum_trader.events import MODEL_KINDS, Signal

SIGNAL_DATA_DIR = "custom_signal"  # where Nautilus' catalog keeps Signal data, one folder per instrument
_DIRECTION_CODES = {"LONG": 1, "SHORT": -1, "FLAT": 0}

PREDICT_CHUNK = 8192


def batch_signals(
    ensemble: Ensemble,
    bars: list[SymbolBars],
    instrument_ids: list[InstrumentId],
    batch_delay_ms: int = 500,
    end_ns: int | None = None,
    progress: bool = False,
) -> list[Signal]:
    """Signals for every bar of every symbol that has a full window, ordered by (time, symbol order).

    With `end_ns` (a backtest's end), a bar whose decision time (close + batch delay) falls after it has
    no signal, as in the backtest, whose clock stops at the end.
    """
    lookback = ensemble.lookback
    out = []
    symbols = tqdm(
        zip(bars, instrument_ids, strict=True),
        total=len(bars),
        desc="signals",
        unit="symbol",
        disable=not progress,
    )
    for sb, iid in symbols:
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


@dataclass
class SignalTable:
    """Stored Signals as columns, sorted by decision time; `instrument` indexes `instrument_ids`."""

    ts_event: np.ndarray  # int64, the bar close the decision is about
    instrument: np.ndarray  # int32
    instrument_ids: list[str]
    direction: np.ndarray  # int8: 1 LONG, -1 SHORT, 0 FLAT
    confidence: np.ndarray
    prob_up: np.ndarray
    forecast: np.ndarray
    votes: dict[str, np.ndarray]  # kind -> votes, for the kinds that voted
    model_ids: np.ndarray  # object: str per row
    features_hash: np.ndarray  # object: str per row

    def __len__(self) -> int:
        return len(self.ts_event)


def read_signal_table(catalog: str | Path, start=None, end=None) -> SignalTable:
    """The catalog's Signals whose decision time (ts_init) falls inside [start, end], as columns."""
    folder = Path(catalog) / "data" / SIGNAL_DATA_DIR
    files = sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()
    if len(frame):
        keep = np.ones(len(frame), dtype=bool)
        if start is not None:
            keep &= frame["ts_init"].to_numpy() >= pd.Timestamp(start).value
        if end is not None:
            keep &= frame["ts_init"].to_numpy() <= pd.Timestamp(end).value
        frame = frame[keep].sort_values(["ts_event", "instrument_id"], kind="stable")
    else:
        frame = pd.DataFrame(columns=["ts_event", "instrument_id", "direction", *_FLOATS, "model_ids"])
    codes, uniques = pd.factorize(frame["instrument_id"].astype(str), sort=True)
    unknown = set(frame["direction"].unique()) - set(_DIRECTION_CODES)
    if unknown:
        raise ValueError(
            f"stored signals have unknown directions {sorted(unknown)}; allowed: LONG, SHORT, FLAT"
        )
    return SignalTable(
        ts_event=frame["ts_event"].to_numpy(dtype=np.int64),
        instrument=codes.astype(np.int32),
        instrument_ids=list(uniques),
        direction=frame["direction"].map(_DIRECTION_CODES).to_numpy(dtype=np.int8),
        confidence=frame["confidence"].to_numpy(dtype=np.float64),
        prob_up=frame["prob_up"].to_numpy(dtype=np.float64),
        forecast=frame["forecast"].to_numpy(dtype=np.float64),
        votes={
            kind: frame[f"vote_{kind}"].to_numpy(dtype=np.float64)
            for kind in MODEL_KINDS
            if f"vote_{kind}" in frame and frame[f"vote_{kind}"].notna().any()
        },
        model_ids=frame["model_ids"].to_numpy(dtype=object),
        features_hash=frame.get("features_hash", pd.Series("", index=frame.index)).to_numpy(dtype=object),
    )


_FLOATS = ("confidence", "prob_up", "forecast")

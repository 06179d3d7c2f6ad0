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

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from nautilus_trader.core.datetime import unix_nanos_to_iso8601
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from tqdm import tqdm

from ml.dataset import SymbolBars, full_windows
from ml.ensemble import DIRECTION_NAMES, FLAT, LONG, SHORT, Ensemble
from ml.features import FEATURE_SET_HASH, N_FEATURES, compute_features
from quantum_trader.events import MODEL_KINDS, Signal

SIGNAL_DATA_DIR = "custom_signal"  # where Nautilus' catalog keeps Signal data, one folder per instrument
_DIRECTION_CODES = {name: code for code, name in DIRECTION_NAMES.items()}

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
    out = []
    delay_ns = batch_delay_ms * 1_000_000
    for iid, ts, votes in _symbol_votes(ensemble, bars, instrument_ids, delay_ns, end_ns, progress):
        out.extend(_signals(ensemble, iid, ts, votes, delay_ns))
    order = {iid: i for i, iid in enumerate(instrument_ids)}
    out.sort(key=lambda s: (s.ts_event, order[s.instrument_id]))
    return out


def write_batch_signals(
    catalog: str | Path,
    ensemble: Ensemble,
    bars: list[SymbolBars],
    instrument_ids: list[InstrumentId],
    batch_delay_ms: int = 500,
    end_ns: int | None = None,
    progress: bool = False,
    replace: bool = False,
) -> int:
    """`batch_signals` written straight into the catalog, a symbol at a time, as the files Nautilus writes for
    Signal data (same folder, file name and columns), without a Python object per decision. With `replace`,
    a symbol's stored signals are deleted just before its new ones are written. Returns the count."""
    count, delay_ns = 0, batch_delay_ms * 1_000_000
    for iid, ts, votes in _symbol_votes(ensemble, bars, instrument_ids, delay_ns, end_ns, progress):
        table = _signal_columns(ensemble, iid, ts, votes, delay_ns)
        folder = Path(catalog) / "data" / SIGNAL_DATA_DIR / str(iid)
        if replace:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        first, last = (unix_nanos_to_iso8601(int(t)) for t in (ts[0] + delay_ns, ts[-1] + delay_ns))
        pq.write_table(table, folder / f"{_file_time(first)}_{_file_time(last)}.parquet")
        count += len(ts)
    return count


def _file_time(iso: str) -> str:
    return iso.replace(":", "-").replace(".", "-")  # Nautilus' catalog file names


def _symbol_votes(ensemble, bars, instrument_ids, delay_ns, end_ns, progress):
    """Per symbol: (instrument id, close times of the scored bars, their votes).

    Each model sees the batches the EnsembleStrategy would give it wherever its forecast could depend on
    them (`ForecastModel.batch_invariant`): one call per bar close with the windows of every symbol scored
    then, in universe order. Batch-invariant models (trees) score each symbol's rows in big chunks.
    """
    lookback = ensemble.lookback
    # every symbol's feature rows in one array (a view per symbol), so a bar close's windows are one gather
    starts = np.cumsum([0] + [len(sb.frame) for sb in bars])
    everything = np.empty((starts[-1], N_FEATURES), dtype=np.float32)
    scored = []
    for sb, a, b in tqdm(
        zip(bars, starts[:-1], starts[1:], strict=True),
        total=len(bars),
        desc="features",
        unit="symbol",
        disable=not progress,
    ):
        everything[a:b] = compute_features(sb.frame).to_numpy(dtype=np.float32)
        scored.append((everything[a:b], _scored_rows(everything[a:b], sb, lookback, delay_ns, end_ns)))
    forecasts = [np.empty((len(rows), len(ensemble.members))) for _, rows in scored]
    for j, member in enumerate(ensemble.members):
        if member.model.batch_invariant:
            per_symbol = _predict_per_symbol(member.model, scored, lookback)
        else:
            per_symbol = _predict_per_bar_close(member.model, scored, bars, everything, starts, progress)
        for symbol, values in enumerate(per_symbol):
            forecasts[symbol][:, j] = values
    for (_, rows), sb, iid, f in zip(scored, bars, instrument_ids, forecasts, strict=True):
        if len(rows):
            yield iid, sb.close_time[rows], ensemble.combine(f)


def _scored_rows(features: np.ndarray, sb: SymbolBars, lookback: int, delay_ns: int, end_ns: int | None):
    """The rows the strategy would score: a full window, decided by `end_ns`."""
    rows = np.flatnonzero(full_windows(features, lookback))
    if end_ns is not None:
        rows = rows[sb.close_time[rows] + delay_ns <= end_ns]
    return rows


def _windows(features: np.ndarray, rows: np.ndarray, lookback: int) -> np.ndarray:
    return features[rows[:, None] + np.arange(1 - lookback, 1)]


def _predict_per_symbol(model, scored, lookback):
    for features, rows in scored:
        chunks = np.array_split(rows, max(1, len(rows) // PREDICT_CHUNK + 1))
        yield np.concatenate(
            [model.predict(_windows(features, c, lookback)) for c in chunks if len(c)] or [np.empty(0)]
        )


def _predict_per_bar_close(model, scored, bars, everything, starts, progress):
    """One call per bar close with the windows of every symbol scored then, in universe order, as the
    strategy batches them. `everything` holds all symbols' rows, symbol s from `starts[s]`."""
    symbol = np.concatenate([np.full(len(rows), s, dtype=np.int64) for s, (_, rows) in enumerate(scored)])
    rows = np.concatenate([rows for _, rows in scored]).astype(np.int64)
    close = np.concatenate([sb.close_time[r] for sb, (_, r) in zip(bars, scored, strict=True)])
    order = np.lexsort((symbol, close))  # by bar close, then universe order
    flat = starts[symbol[order]] + rows[order]
    groups = np.split(np.arange(len(order)), np.flatnonzero(np.diff(close[order])) + 1) if len(order) else []
    lookback = model.lookback
    forecasts = np.empty(len(order))
    for group in tqdm(groups, desc=f"{model.kind}, per bar close", unit="bar", disable=not progress):
        forecasts[order[group]] = model.predict(_windows(everything, flat[group], lookback))
    bounds = np.cumsum([0] + [len(r) for _, r in scored])
    return [forecasts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _signal_columns(ensemble: Ensemble, iid: InstrumentId, ts: np.ndarray, votes, delay_ns: int) -> pa.Table:
    n = len(ts)
    code = votes.direction
    direction = np.where(
        code == LONG,
        DIRECTION_NAMES[LONG],
        np.where(code == SHORT, DIRECTION_NAMES[SHORT], DIRECTION_NAMES[FLAT]),
    )
    kinds = ensemble.kinds
    columns = {
        "instrument_id": pa.array([str(iid)] * n, pa.string()),
        "direction": pa.array(direction.tolist(), pa.string()),
        "confidence": pa.array(votes.confidence, pa.float64()),
        "prob_up": pa.array(votes.prob_up, pa.float64()),
        "forecast": pa.array(votes.forecast, pa.float64()),
        **{
            f"vote_{k}": pa.array(
                votes.votes[:, kinds.index(k)] if k in kinds else np.full(n, np.nan), pa.float64()
            )
            for k in MODEL_KINDS
        },
        "model_ids": pa.array([ensemble.model_ids] * n, pa.string()),
        "features_hash": pa.array([FEATURE_SET_HASH] * n, pa.string()),
        "type": pa.array(["Signal"] * n, pa.string()),
        "ts_event": pa.array(ts.astype(np.int64), pa.int64()),
        "ts_init": pa.array(ts.astype(np.int64) + delay_ns, pa.int64()),
    }
    return pa.table(columns)


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
    """The catalog's Signals whose decision time (ts_init) falls inside [start, end], as columns.

    Files are read one at a time with their text columns as dictionaries, so a 90-day, 100-symbol table
    (2.6M rows) never exists as Python strings: only its few distinct ids, hashes and directions do."""
    folder = Path(catalog) / "data" / SIGNAL_DATA_DIR
    files = sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []
    lo = pd.Timestamp(start).value if start is not None else np.iinfo(np.int64).min
    hi = pd.Timestamp(end).value if end is not None else np.iinfo(np.int64).max
    texts: dict[str, dict[str, int]] = {name: {} for name in _TEXT}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _COLUMNS}
    for f in files:
        table = pq.read_table(f, columns=_COLUMNS, read_dictionary=_TEXT).combine_chunks()
        ts_init = table["ts_init"].to_numpy()
        keep = (ts_init >= lo) & (ts_init <= hi)
        for name in _COLUMNS:
            column = table[name].chunk(0) if table[name].num_chunks else None
            if name in _TEXT:
                values = _text_codes(column, texts[name]) if column is not None else np.empty(0, np.int32)
            else:
                values = column.to_numpy(zero_copy_only=False) if column is not None else np.empty(0)
            parts[name].append(values[keep])
    cols = {name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in parts.items()}
    order = np.lexsort((cols["instrument_id"], cols["ts_event"])) if len(cols["ts_event"]) else []
    names = {name: list(codes) for name, codes in texts.items()}
    unknown = set(names["direction"]) - set(_DIRECTION_CODES)
    if unknown:
        raise ValueError(
            f"stored signals have unknown directions {sorted(unknown)}; allowed: LONG, SHORT, FLAT"
        )
    direction_of = np.array([_DIRECTION_CODES[d] for d in names["direction"]] or [0], dtype=np.int8)
    return SignalTable(
        ts_event=cols["ts_event"][order].astype(np.int64),
        instrument=cols["instrument_id"][order].astype(np.int32),
        instrument_ids=names["instrument_id"],
        direction=direction_of[cols["direction"][order].astype(np.int64)],
        confidence=cols["confidence"][order].astype(np.float64),
        prob_up=cols["prob_up"][order].astype(np.float64),
        forecast=cols["forecast"][order].astype(np.float64),
        votes={
            kind: cols[f"vote_{kind}"][order].astype(np.float64)
            for kind in MODEL_KINDS
            if np.isfinite(cols[f"vote_{kind}"]).any()
        },
        model_ids=np.array(names["model_ids"] or [""], dtype=object)[
            cols["model_ids"][order].astype(np.int64)
        ],
        features_hash=np.array(names["features_hash"] or [""], dtype=object)[
            cols["features_hash"][order].astype(np.int64)
        ],
    )


def _text_codes(column: pa.DictionaryArray, codes: dict[str, int]) -> np.ndarray:
    """A dictionary column's rows as codes into `codes`, which gains the values it has not seen."""
    mapping = np.array(
        [codes.setdefault(v, len(codes)) for v in column.dictionary.to_pylist()], dtype=np.int32
    )
    return (
        mapping[column.indices.to_numpy(zero_copy_only=False)]
        if len(mapping)
        else np.zeros(len(column), np.int32)
    )


_FLOATS = ("confidence", "prob_up", "forecast")
_TEXT = ["instrument_id", "direction", "model_ids", "features_hash"]
_COLUMNS = ["ts_event", "ts_init", *_TEXT, *_FLOATS, *(f"vote_{kind}" for kind in MODEL_KINDS)]

"""Keeps every decision published on the bus during a run, columnar, for the run's report (signals.parquet).

It listens the way any other consumer would (a dashboard, a Redis stream writer): by subscribing to the
BarCloseSignals type (how the EnsembleStrategy publishes, one event per bar close) and to the Signal type (one
decision, e.g. replayed from the catalog), so what it records is exactly what went over the bus.

A run at 100 symbols x 90 days makes 2.6M decisions. Batches are kept as the arrays they arrived in (a single
Signal as a batch of one), so the recorder holds a few bytes per field instead of millions of Python
objects that the garbage collector would walk again and again.

Shadow decisions (ShadowSignals, a candidate model's, actors/clm.py) are kept apart: `frame()` is what was
traded on, `frame(shadow=True)` the shadow's (the report's shadow_signals.parquet); both carry a `shadow` column.
"""

import numpy as np
import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import ClientId

from quantum_trader.events import DIRECTION_CODES, MODEL_KINDS, BarCloseSignals, ShadowSignals, Signal

FIELDS = tuple(name for name in Signal.__annotations__)


class SignalRecorderConfig(ActorConfig, frozen=True):
    client_id: str = "SIGNALS"


class SignalRecorder(Actor):
    def __init__(self, config: SignalRecorderConfig | None = None):
        super().__init__(config or SignalRecorderConfig())
        self._chunks: list[dict[str, np.ndarray]] = []
        self._shadow_chunks: list[dict[str, np.ndarray]] = []
        self._instrument_codes: dict[object, int] = {}
        self._texts: dict[str, dict[str, int]] = {"model_ids": {}, "features_hash": {}}

    def on_start(self) -> None:
        client = ClientId(self.config.client_id)
        self.subscribe_data(DataType(BarCloseSignals), client_id=client)
        self.subscribe_data(DataType(Signal), client_id=client)
        self.subscribe_data(DataType(ShadowSignals), client_id=client)

    def on_data(self, data: Data) -> None:
        if isinstance(data, BarCloseSignals):
            self._record_batch(data)
        elif isinstance(data, Signal):
            self._record_batch(BarCloseSignals.of(data))

    def _record_batch(self, batch: BarCloseSignals) -> None:
        n = len(batch)
        codes = self._instrument_codes
        chunk = {
            "ts_event": np.full(n, batch.ts_event, dtype=np.int64),
            "ts_init": np.full(n, batch.ts_init, dtype=np.int64),
            "instrument_id": np.fromiter(
                (codes.setdefault(iid, len(codes)) for iid in batch.instrument_ids), dtype=np.int32, count=n
            ),
            "direction": np.asarray(batch.direction, dtype=np.int8),
            "confidence": np.asarray(batch.confidence, dtype=np.float64),
            "prob_up": np.asarray(batch.prob_up, dtype=np.float64),
            "forecast": np.asarray(batch.forecast, dtype=np.float64),
            "model_ids": np.full(n, self._text("model_ids", batch.model_ids), dtype=np.int32),
            "features_hash": np.full(n, self._text("features_hash", batch.features_hash), dtype=np.int32),
            "shadow": np.full(n, bool(batch.shadow)),
        }
        for kind in MODEL_KINDS:
            values = batch.votes.get(kind)
            chunk[f"vote_{kind}"] = (
                np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)
            )
        (self._shadow_chunks if batch.shadow else self._chunks).append(chunk)

    def _text(self, field: str, value: str) -> int:
        codes = self._texts[field]
        return codes.setdefault(value, len(codes))

    def __len__(self) -> int:
        return sum(len(c["ts_event"]) for c in self._chunks)

    def frame(self, shadow: bool = False) -> pd.DataFrame:
        chunks = self._shadow_chunks if shadow else self._chunks
        if not chunks:
            return pd.DataFrame(
                {name: pd.Series(dtype="float64") for name in ("ts_event", "ts_init", *FIELDS)}
            )
        joined = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        columns = {
            name: pd.to_datetime(pd.Series(joined[name], dtype="int64"), utc=True)
            for name in ("ts_event", "ts_init")
        }
        names = {
            "instrument_id": [str(iid) for iid in self._instrument_codes],
            "model_ids": list(self._texts["model_ids"]),
            "features_hash": list(self._texts["features_hash"]),
        }
        for name in FIELDS:
            if name == "direction":
                labels = pd.Series([DIRECTION_CODES[c] for c in (1, -1, 0)], dtype="str")
                index = pd.Series(joined[name]).map({1: 0, -1: 1, 0: 2})
                columns[name] = labels.take(index.to_numpy()).reset_index(drop=True)
            elif name == "shadow":
                columns[name] = pd.Series(joined[name], dtype="bool")
            elif name in names:
                labels = pd.Series(names[name], dtype="str")
                columns[name] = labels.take(joined[name]).reset_index(drop=True)
            else:
                columns[name] = pd.Series(joined[name], dtype="float64")
        return pd.DataFrame(columns)

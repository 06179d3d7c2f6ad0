"""Keeps every Signal published on the bus during a run, columnar, for the run's report (signals.parquet).

It listens the way any other consumer would (a dashboard, a Redis stream writer): by subscribing to the
Signal data type, so what it records is exactly what went over the bus.

A run at 100 symbols x 90 days publishes 2.6M signals. Numbers go into typed arrays and strings into codes,
so the recorder holds a few bytes per field instead of millions of Python objects that the garbage
collector would walk again and again.
"""

from array import array

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import ClientId

from quantum_trader.events import Signal

FIELDS = tuple(name for name in Signal.__annotations__)
_TEXT = ("instrument_id", "direction", "model_ids", "features_hash")
_NUMBERS = tuple(f for f in FIELDS if f not in _TEXT)


class SignalRecorderConfig(ActorConfig, frozen=True):
    client_id: str = "SIGNALS"


class SignalRecorder(Actor):
    def __init__(self, config: SignalRecorderConfig | None = None):
        super().__init__(config or SignalRecorderConfig())
        self._times = {"ts_event": array("q"), "ts_init": array("q")}
        self._numbers = {name: array("d") for name in _NUMBERS}
        self._codes = {name: array("i") for name in _TEXT}
        self._values: dict[str, dict[str, int]] = {name: {} for name in _TEXT}

    def on_start(self) -> None:
        self.subscribe_data(DataType(Signal), client_id=ClientId(self.config.client_id))

    def on_data(self, data: Data) -> None:
        if not isinstance(data, Signal):
            return
        self._times["ts_event"].append(data.ts_event)
        self._times["ts_init"].append(data.ts_init)
        for name, column in self._numbers.items():
            column.append(getattr(data, name))
        for name, column in self._codes.items():
            value = str(getattr(data, name))
            codes = self._values[name]
            column.append(codes.setdefault(value, len(codes)))

    def __len__(self) -> int:
        return len(self._times["ts_event"])

    def frame(self) -> pd.DataFrame:
        columns = {
            name: pd.to_datetime(pd.Series(col, dtype="int64"), utc=True) for name, col in self._times.items()
        }
        for name in FIELDS:
            if name in self._numbers:
                columns[name] = pd.Series(self._numbers[name], dtype="float64")
            else:
                labels = pd.Series(list(self._values[name]), dtype="str")
                columns[name] = labels.take(pd.Series(self._codes[name], dtype="int64")).reset_index(
                    drop=True
                )
        return pd.DataFrame(columns)

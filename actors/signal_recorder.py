"""Keeps every Signal published on the bus during a run, columnar, for the run's report (signals.parquet).

It listens the way any other consumer would (a dashboard, a Redis stream writer): by subscribing to the
Signal data type, so what it records is exactly what went over the bus.
"""

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import ClientId

from quantum_trader.events import Signal

FIELDS = tuple(name for name in Signal.__annotations__)


class SignalRecorderConfig(ActorConfig, frozen=True):
    client_id: str = "SIGNALS"


class SignalRecorder(Actor):
    def __init__(self, config: SignalRecorderConfig | None = None):
        super().__init__(config or SignalRecorderConfig())
        self._columns: dict[str, list] = {"ts_event": [], "ts_init": [], **{f: [] for f in FIELDS}}

    def on_start(self) -> None:
        self.subscribe_data(DataType(Signal), client_id=ClientId(self.config.client_id))

    def on_data(self, data: Data) -> None:
        if not isinstance(data, Signal):
            return
        cols = self._columns
        cols["ts_event"].append(data.ts_event)
        cols["ts_init"].append(data.ts_init)
        for name in FIELDS:
            cols[name].append(getattr(data, name))

    def __len__(self) -> int:
        return len(self._columns["ts_event"])

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self._columns)
        df["instrument_id"] = df["instrument_id"].astype(str)
        for col in ("ts_event", "ts_init"):
            df[col] = pd.to_datetime(df[col].astype("int64"), utc=True)
        return df

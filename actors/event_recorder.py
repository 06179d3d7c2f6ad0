"""Keeps every ExitEvent, RiskEvent, ModelEvent and SizingEvent published on the bus during a run, for the report.

Like SignalRecorder it subscribes as any consumer would, so the report shows exactly what went over the bus.
These events are few (one per exit fill, veto, trip or model decision), so plain rows are enough.
"""

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import ClientId

from quantum_trader.events import ExitEvent, ModelEvent, RiskEvent, SizingEvent

RECORDED = (ExitEvent, RiskEvent, ModelEvent, SizingEvent)


class EventRecorderConfig(ActorConfig, frozen=True):
    client_id: str = "SIGNALS"


class EventRecorder(Actor):
    def __init__(self, config: EventRecorderConfig | None = None):
        super().__init__(config or EventRecorderConfig())
        self.rows: dict[type, list[dict]] = {cls: [] for cls in RECORDED}

    def on_start(self) -> None:
        for cls in RECORDED:
            self.subscribe_data(DataType(cls), client_id=ClientId(self.config.client_id))

    def on_data(self, data: Data) -> None:
        rows = self.rows.get(type(data))
        if rows is not None:
            row = data.to_dict()
            row.pop("type", None)
            rows.append(row)

    def frame(self, cls: type) -> pd.DataFrame:
        columns = [*cls.__annotations__, "ts_event", "ts_init"]
        df = pd.DataFrame(self.rows[cls], columns=columns)
        for col in ("ts_event", "ts_init"):
            if col in df:
                df[col] = pd.to_datetime(df[col], utc=True)
        return df

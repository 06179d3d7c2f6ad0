"""Typed events that travel on the message bus and are stored with a run, so any run can be audited.

They are Nautilus custom data (`@customdataclass`): serialisable to Arrow/Parquet for the catalog and
to msgpack for Redis streams. No `from __future__ import annotations` here: the decorator resolves the
field types at class creation.
"""

import math

from nautilus_trader.core.data import Data
from nautilus_trader.model.custom import customdataclass
from nautilus_trader.model.identifiers import InstrumentId

DIRECTIONS = ("LONG", "SHORT", "FLAT")
MODEL_KINDS = ("xgboost", "lightgbm", "nhits", "patchtst")


@customdataclass
class Signal(Data):
    """One ensemble decision for one symbol at one bar close, whether or not it was traded.

    `direction` is LONG / SHORT / FLAT; `confidence` in [0, 1] (see ml/ensemble.py for the mapping);
    `prob_up` the weighted vote; `vote_<kind>` each model's vote (its forecast in units of its own
    validation forecast spread; NaN when that model is not in the ensemble); `forecast` the weighted
    forecast of the forward log return; `model_ids` the comma-separated registry ids that voted.
    """

    instrument_id: InstrumentId = InstrumentId.from_str("BTCUSDT-PERP.BINANCE")
    direction: str = "FLAT"
    confidence: float = 0.0
    prob_up: float = 0.5
    forecast: float = 0.0
    vote_xgboost: float = math.nan
    vote_lightgbm: float = math.nan
    vote_nhits: float = math.nan
    vote_patchtst: float = math.nan
    model_ids: str = ""
    features_hash: str = ""

    def votes(self) -> dict[str, float]:
        return {
            k: getattr(self, f"vote_{k}") for k in MODEL_KINDS if not math.isnan(getattr(self, f"vote_{k}"))
        }

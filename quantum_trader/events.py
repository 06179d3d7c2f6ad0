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


EXIT_REASONS = (
    "tp1",
    "tp2",
    "sl",
    "breakeven",
    "trailing",
    "time",
    "liquidation_buffer",
    "emergency",
    "manual",
    "liquidation",
    "strategy",
)


@customdataclass
class ExitEvent(Data):
    """One exit fill of a position managed by the Exit Brain (strategies/exit_brain.py).

    `reason` is one of EXIT_REASONS. `position_side` is the side of the position being reduced (LONG /
    SHORT). `pnl` = signed price move x `quantity` - this fill's `commission` (the entry commission stays
    with the position in positions.csv). `r_multiple` = signed price move / `risk_per_unit`, where
    `risk_per_unit` is R: the price distance from entry to the initial stop.
    """

    instrument_id: InstrumentId = InstrumentId.from_str("BTCUSDT-PERP.BINANCE")
    reason: str = "manual"
    position_side: str = "LONG"
    quantity: float = 0.0
    entry_price: float = 0.0
    exit_price: float = 0.0
    commission: float = 0.0
    pnl: float = 0.0
    r_multiple: float = 0.0
    risk_per_unit: float = 0.0
    position_id: str = ""
    order_id: str = ""


RISK_SOURCES = ("risk_guard", "safety_governor", "emergency_stop", "model_supervisor")
RISK_ACTIONS = ("veto", "block", "trip", "reset", "halt", "close_losing", "reduce_exposure", "alert")


@customdataclass
class RiskEvent(Data):
    """A risk decision: a veto or block of one entry, or a trip / reset / action of the emergency stop.

    `source` is one of RISK_SOURCES, `action` one of RISK_ACTIONS, `code` a short machine-readable cause
    (e.g. confidence, correlation, daily_drawdown, feed_stale) and `reason` the sentence a person reads.
    `value` is what was measured and `limit` what it was held against (NaN when not numeric). `symbol` is
    empty for account-wide events.
    """

    source: str = "risk_guard"
    action: str = "veto"
    code: str = ""
    reason: str = ""
    symbol: str = ""
    value: float = math.nan
    limit: float = math.nan


@customdataclass
class OperatorCommand(Data):
    """An operator command: `action` trip or reset (the emergency stop) or close (`symbol`, reason manual)."""

    action: str = "trip"
    symbol: str = ""
    reason: str = ""
    operator: str = ""


HEALTH_STATUSES = ("ok", "degraded", "critical")


@customdataclass
class HealthEvent(Data):
    """A component's health: `status` ok / degraded / critical. A critical one trips the emergency stop."""

    component: str = ""
    status: str = "ok"
    reason: str = ""

"""Typed events that travel on the message bus and are stored with a run, so any run can be audited.

They are Nautilus custom data (`@customdataclass`): serialisable to Arrow/Parquet for the catalog and
to msgpack for Redis streams. No `from __future__ import annotations` here: the decorator resolves the
field types at class creation.
"""

import contextlib
import math

import numpy as np
from nautilus_trader.core.data import Data
from nautilus_trader.model.custom import customdataclass
from nautilus_trader.model.identifiers import InstrumentId

from quantum_trader.trace import trace_id as _trace_id

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
    shadow: bool = False  # a shadow candidate's decision (actors/clm.py): recorded, never traded

    def votes(self) -> dict[str, float]:
        return {
            k: getattr(self, f"vote_{k}") for k in MODEL_KINDS if not math.isnan(getattr(self, f"vote_{k}"))
        }

    def trace_id(self, strategy_id) -> str:
        """The id this decision's orders, fills, exits and log lines carry when `strategy_id` acts on it
        (quantum_trader/trace.py). Derived, not stored: the same for a live decision and its replay."""
        return _trace_id(strategy_id, self.instrument_id, self.ts_event)


DIRECTION_CODES = {1: "LONG", -1: "SHORT", 0: "FLAT"}
# Plain message-bus topics (not data types): what a session recorder (live/record.py) listens to.
WARMUP_TOPIC = "qt.warmup.history"  # msg: list[Bar], the history a strategy warmed up on
INTENT_TOPIC = "qt.order.intent"  # msg: (strategy_id, order), as a strategy submitted it
_CODE_OF_DIRECTION = {name: code for code, name in DIRECTION_CODES.items()}


class BarCloseSignals(Data):
    """Every decision of one bar close, one row per symbol: how the EnsembleStrategy publishes its Signals.

    The rows hold exactly the fields of `Signal` (`signals()` turns them into Signal events), as columns:
    `instrument_ids`, `direction` (int8: 1 LONG, -1 SHORT, 0 FLAT), `confidence`, `prob_up`, `forecast`, and
    `votes` (kind -> each model's vote). At 100 symbols a Python object per decision would cost more than the
    models themselves (2.6M of them in a 90-day run), so decisions travel and are stored in columns; a
    consumer that wants one event per symbol calls `signals()`. It is not catalog data: a run stores its
    batches in signals.parquet, and `ml/research.py` writes Signal events to the catalog for replay.

    (Its name must not start with "Signal": Nautilus subscribes to a data type by the topic prefix
    "Signal*", so a subscriber to Signal would receive these too.)
    """

    def __init__(
        self,
        ts_event: int,
        ts_init: int,
        instrument_ids: list[InstrumentId],
        direction: np.ndarray,
        confidence: np.ndarray,
        prob_up: np.ndarray,
        forecast: np.ndarray,
        votes: dict[str, np.ndarray],
        model_ids: str,
        features_hash: str,
        shadow: bool = False,
    ):
        self._ts_event = ts_event
        self._ts_init = ts_init
        self.instrument_ids = instrument_ids
        self.direction = direction
        self.confidence = confidence
        self.prob_up = prob_up
        self.forecast = forecast
        self.votes = votes
        self.model_ids = model_ids
        self.features_hash = features_hash
        self.shadow = shadow

    @property
    def ts_event(self) -> int:
        return self._ts_event

    @property
    def ts_init(self) -> int:
        return self._ts_init

    @classmethod
    def of(cls, signal: Signal) -> "BarCloseSignals":
        """One Signal as a batch of one row (e.g. replayed from the catalog)."""
        return cls(
            ts_event=signal.ts_event,
            ts_init=signal.ts_init,
            instrument_ids=[signal.instrument_id],
            direction=np.array([_CODE_OF_DIRECTION[signal.direction]], dtype=np.int8),
            confidence=np.array([signal.confidence]),
            prob_up=np.array([signal.prob_up]),
            forecast=np.array([signal.forecast]),
            votes={kind: np.array([getattr(signal, f"vote_{kind}")]) for kind in MODEL_KINDS},
            model_ids=signal.model_ids,
            features_hash=signal.features_hash,
            shadow=signal.shadow,
        )

    def __len__(self) -> int:
        return len(self.instrument_ids)

    def signal(self, i: int) -> Signal:
        return Signal(
            ts_event=self._ts_event,
            ts_init=self._ts_init,
            instrument_id=self.instrument_ids[i],
            direction=DIRECTION_CODES[int(self.direction[i])],
            confidence=float(self.confidence[i]),
            prob_up=float(self.prob_up[i]),
            forecast=float(self.forecast[i]),
            model_ids=self.model_ids,
            features_hash=self.features_hash,
            shadow=self.shadow,
            **{f"vote_{kind}": float(values[i]) for kind, values in self.votes.items()},
        )

    def signals(self) -> list[Signal]:
        return [self.signal(i) for i in range(len(self))]

    def trace_id(self, i: int, strategy_id) -> str:
        """Row `i`'s trace id (`Signal.trace_id`), computed only for a decision that is acted on."""
        return _trace_id(strategy_id, self.instrument_ids[i], self._ts_event)


class ShadowSignals(BarCloseSignals):
    """The decisions of a shadow candidate (actors/clm.py) about one bar close: BarCloseSignals with
    `shadow` set, published under their own type so that nothing subscribed to BarCloseSignals (the
    strategies' consumers, the dashboard, the metrics) ever sees them; only recorders that ask for them."""

    def __init__(self, *args, **kwargs):
        kwargs["shadow"] = True
        super().__init__(*args, **kwargs)


MODEL_ACTIONS = (
    "retrain_started", "retrain_done", "retrain_failed", "drift_alarm", "drift_check", "performance",
    "shadow_started", "promoted", "promotion_refused", "rollback",
)  # fmt: skip


@customdataclass
class ModelEvent(Data):
    """A model-lifecycle decision of the continuous-learning actor (actors/clm.py).

    `action` one of MODEL_ACTIONS; `kind` the model kind (empty for a retrain of several); `model_id` the
    version concerned (the candidate), `previous_id` production before it; `ic` / `hit_rate` / `n` the
    rank IC, hit rate and matured predictions behind a performance check or a promotion decision (the
    candidate's), `baseline_ic` production's IC on the same rows; `psi` / `feature` the largest PSI of a
    drift check and its feature; `reason` the sentence a person reads. NaN where a number does not apply.
    """

    action: str = "performance"
    kind: str = ""
    model_id: str = ""
    previous_id: str = ""
    ic: float = math.nan
    baseline_ic: float = math.nan
    hit_rate: float = math.nan
    n: int = 0
    psi: float = math.nan
    feature: str = ""
    reason: str = ""


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
    "recovery",
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
    trace_id: str = ""  # the entry decision's trace id (quantum_trader/trace.py)


RISK_SOURCES = (
    "risk_guard",
    "safety_governor",
    "emergency_stop",
    "model_supervisor",
    "feed_guard",  # feed gaps (strategies/base.py)
    "execution_guard",  # exits that could not be sent (strategies/execution_guard.py)
)
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
    trace_id: str = ""  # a veto of an entry: the trace id of the decision it refused


SIZING_MODES = ("shadow", "active")


@customdataclass
class SizingEvent(Data):
    """The RL sizer's view of one entry (ml/rl, strategies/rl_sizing.py), published whether it traded or not.

    `rule_margin` is the rule-based margin (strategies/sizing.py with the profile's own rl_adjustment),
    `rl_multiplier` the agent's suggestion, `rl_margin` the margin with it as rl_adjustment (after the
    profile's clamp). `mode` shadow: the rule-based size was traded; active: the RL size was. `entered`: the
    entry passed the risk gates and the margin check and its order was sent.
    """

    symbol: str = ""
    mode: str = "shadow"
    confidence: float = 0.0
    rule_margin: float = 0.0
    rl_multiplier: float = 1.0
    rl_margin: float = 0.0
    entered: bool = False
    model_id: str = ""
    trace_id: str = ""


# What an operator can ask (the control API, actors/control_api.py, publishes them; the node's own components act):
# trip / reset: the emergency stop; close: a market exit of `symbol` (`*` = every position), reason manual;
# executor_stop / executor_start: the strategies stop / resume opening positions (exits keep being managed);
# retrain / promote / demote: the model lifecycle, `target` a model kind or registry id.
# rollback: the continuous-learning actor puts the previous production version of `target` (a kind) back.
OPERATOR_ACTIONS = (
    "trip", "reset", "close", "executor_stop", "executor_start", "retrain", "promote", "demote", "rollback",
)  # fmt: skip


@customdataclass
class OperatorCommand(Data):
    """An operator command: `action` one of OPERATOR_ACTIONS; `symbol` for close, `target` for the model
    actions; `operator` who asked (never a credential)."""

    action: str = "trip"
    symbol: str = ""
    reason: str = ""
    operator: str = ""
    target: str = ""


HEALTH_STATUSES = ("ok", "degraded", "critical")
# The roll-up of every dependency's status (actors/health_monitor.py), best first.
HEALTH_LEVELS = ("OPTIMAL", "HEALTHY", "DEGRADED", "CRITICAL", "EMERGENCY")
SYSTEM_COMPONENT = "system"  # the component name of the roll-up's HealthEvents


@customdataclass
class HealthEvent(Data):
    """A component's health: `status` ok / degraded / critical. A critical one trips the emergency stop.

    The roll-up (component `system`) also carries `level`, one of HEALTH_LEVELS; other components leave it empty.
    """

    component: str = ""
    status: str = "ok"
    reason: str = ""
    level: str = ""


def bar_close_signals_to_dict(batch: BarCloseSignals) -> dict:
    """Primitives only (the message bus encodes them as JSON or msgpack); NaN votes become null in JSON."""
    return {
        "type": "BarCloseSignals",
        "ts_event": batch.ts_event,
        "ts_init": batch.ts_init,
        "instrument_ids": [str(i) for i in batch.instrument_ids],
        "direction": [int(d) for d in batch.direction],
        "confidence": [float(x) for x in batch.confidence],
        "prob_up": [float(x) for x in batch.prob_up],
        "forecast": [float(x) for x in batch.forecast],
        "votes": {kind: [float(x) for x in values] for kind, values in batch.votes.items()},
        "model_ids": batch.model_ids,
        "features_hash": batch.features_hash,
        "shadow": bool(batch.shadow),
    }


def bar_close_signals_from_dict(d: dict) -> BarCloseSignals:
    floats = lambda values: np.array(values, dtype=np.float64)  # noqa: E731 (None -> NaN)
    return BarCloseSignals(
        ts_event=int(d["ts_event"]),
        ts_init=int(d["ts_init"]),
        instrument_ids=[InstrumentId.from_str(i) for i in d["instrument_ids"]],
        direction=np.array(d["direction"], dtype=np.int8),
        confidence=floats(d["confidence"]),
        prob_up=floats(d["prob_up"]),
        forecast=floats(d["forecast"]),
        votes={kind: floats(values) for kind, values in d["votes"].items()},
        model_ids=d["model_ids"],
        features_hash=d["features_hash"],
        shadow=bool(d.get("shadow", False)),
    )


def register_bus_types() -> None:
    """Make every event of this module publishable to external message-bus streams (Redis).

    A Nautilus MessageBus copies the set of publishable types when it is constructed, so this must run
    before a TradingNode is built. The `@customdataclass` events register themselves when this module is
    imported; `BarCloseSignals` is a plain `Data` subclass and is registered here. Idempotent.
    """
    from nautilus_trader.serialization.base import register_serializable_type

    with contextlib.suppress(KeyError):  # already registered in this process
        register_serializable_type(BarCloseSignals, bar_close_signals_to_dict, bar_close_signals_from_dict)

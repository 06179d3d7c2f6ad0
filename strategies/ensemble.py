"""EnsembleStrategy: online features -> one batched ensemble vote per timestamp -> Signal events -> trades.

Batching: bars of many symbols close at the same time. Each bar is buffered; the first bar of a timestamp
sets a time alert `batch_delay_ms` after its arrival (in a backtest, the close), and when it fires every
symbol whose bar closed then is advanced in the online feature evaluator and scored in ONE call per model. In
a backtest the alert fires after all bars of that timestamp were processed (the engine runs timers due before
the next data point); live it gives the websocket a moment to deliver every symbol's kline. A bar of the next
close arriving before the alert scores the held batch at once, so no bar is ever replaced unscored. Same code
in both.

Every scored bar becomes a `Signal` (see quantum_trader/events.py) published on the bus, traded or not.
Entry: confidence >= the threshold (the risk profile's `entry_confidence`, else `entry_threshold`),
direction not FLAT, symbol flat and out of cooldown, the risk gates pass it (with a risk profile) and the
margin is free; with `rl_sizer`, the PPO sizing agent's multiplier is published beside (shadow) or used as
(active) the sizing formula's rl_adjustment (strategies/rl_sizing.py). Exits: the Exit Brain with
`exit_profile` (DEFAULT unless configured), resting at the venue.
Fills follow the backtest's fill timing (README: an order sent at the batch time fills at the close just
scored, plus slippage, with the default `bar_close`).

Latency: each batch's own time (features, models, vote, gates and the orders it submits) and how late its
time alert fired are kept in `batch_latency`, logged at stop; benchmarks/bench_live_latency.py reads them from
a live node on the fake exchange.
"""

import time
from collections import deque

import msgspec
import numpy as np
import pandas as pd
from nautilus_trader.common.component import is_logging_initialized
from nautilus_trader.model.data import Bar, DataType
from nautilus_trader.model.enums import OrderSide, PositionSide
from nautilus_trader.model.events import PositionClosed
from nautilus_trader.model.identifiers import InstrumentId

from ml.ensemble import DEFAULT_WEIGHTS, Ensemble, EnsembleError, load_ensemble
from ml.features import FEATURE_NAMES, FEATURE_SET_HASH, OnlineFeatures, bar_columns
from ml.features.windows import FeatureWindows
from ml.research import SignalTable
from quantum_trader.events import BarCloseSignals, ModelEvent
from strategies.base import COMMANDS_CLIENT, QTStrategy, QTStrategyConfig
from strategies.rl_sizing import RLSizing

BAR_CLOSE_SIGNALS_TYPE = DataType(BarCloseSignals)  # built once: published at every bar close
RELOAD_ACTIONS = ("promoted", "rollback")  # ModelEvents after which the production models changed


class EnsembleStrategyConfig(QTStrategyConfig, frozen=True):
    registry: str = "models"
    models: tuple[str, ...] = (
        "xgboost:production",
        "lightgbm:production",
        "nhits:production",
        "patchtst:production",
    )
    weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    entry_threshold: float = 0.70
    flat_below: float = 0.0
    cooldown_seconds: int = 120
    allow_short: bool = True
    exit_profile: str | dict | None = "default"
    batch_delay_ms: int = 500
    signal_source: str = "models"  # models | catalog (replay Signal events stored in the catalog)
    trade_start: str | int | None = None  # ISO time or ns: no entries on signals before it (warm-up bars)
    rl_sizer: dict | None = None  # {model, mode: shadow|active, bounds}: strategies/rl_sizing.py


class BatchLatency:
    """Per live batch: nanoseconds from the alert's due time to its firing, from firing to done, and the
    entries it sent (an entry's gates, sizing and order submission are most of a trading batch's time)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.late_ns: deque[int] = deque(maxlen=keep)
        self.work_ns: deque[int] = deque(maxlen=keep)
        self.entries: deque[int] = deque(maxlen=keep)
        self.score_ns: deque[int] = deque(maxlen=keep)
        self.submit_ns: deque[int] = deque(maxlen=keep)

    def add(self, late_ns: int, work_ns: int, entries: int, score_ns: int, submit_ns: int) -> None:
        self.late_ns.append(late_ns)
        self.work_ns.append(work_ns)
        self.entries.append(entries)
        self.score_ns.append(score_ns)
        self.submit_ns.append(submit_ns)

    def summary(self) -> str:
        work, late = np.array(self.work_ns) / 1e6, np.array(self.late_ns) / 1e6
        entries = np.array(self.entries)
        parts = [f"Batch latency over {len(work):,} batches: {_percentiles(work)}"]
        parts.append(f"scoring (features, models, vote): {_percentiles(np.array(self.score_ns) / 1e6)}")
        for name, rows in (("no entry", entries == 0), ("with entries", entries > 0)):
            if rows.any():
                parts.append(
                    f"{name} ({rows.sum():,}, {entries[rows].sum():,} entries): {_percentiles(work[rows])}"
                )
        decision = work - np.array(self.submit_ns) / 1e6
        parts.append(
            f"without Nautilus' order submission (features, models, vote, gates): {_percentiles(decision)}"
        )
        parts.append(f"with the timer's lateness: {_percentiles(work + late)}")
        return "; ".join(parts)


def _percentiles(ms: np.ndarray) -> str:
    p50, p99 = np.percentile(ms, [50, 99])
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms.max():.2f} ms"


class EnsembleStrategy(QTStrategy):
    def __init__(self, config: EnsembleStrategyConfig):
        _check_config(config)
        super().__init__(config)
        # Loaded here, not in on_start, so a node or backtest with no usable model fails before it runs.
        self.ensemble: Ensemble | None = (
            load_ensemble(config.registry, config.models, config.weights, config.flat_below)
            if config.signal_source == "models"
            else None
        )
        self.signals_published = 0
        self.entries = 0
        self.batch_latency = BatchLatency()
        self._trade_start_ns = pd.Timestamp(config.trade_start).value if config.trade_start is not None else 0
        self._table: SignalTable | None = None
        self._slot: dict[InstrumentId, int] = {}
        self._pending: dict[int, Bar] = {}
        self._batches = 0  # alert names must be unique: see on_bar
        self._batch_alert = ""
        self._scored_at = 0
        self._last_trade_ns: dict[InstrumentId, int] = {}
        self._threshold = (
            self.risk.profile.entry_confidence if self.risk is not None else config.entry_threshold
        )
        self.rl_sizing = RLSizing(self, config.rl_sizer, config.registry) if config.rl_sizer else None

    # ---- setup -------------------------------------------------------------------------------------
    def on_strategy_start(self) -> None:
        cfg = self.config
        self._ids = [bt.instrument_id for bt in self.bar_types]
        self._slot = {iid: i for i, iid in enumerate(self._ids)}
        # The exits read the ATR in both signal sources; a replay needs nothing else, unless the RL sizer
        # observes the features.
        replay = cfg.signal_source == "catalog"
        atr_only = replay and self.rl_sizing is None
        self._features = OnlineFeatures(len(self._ids), ("atr_14",) if atr_only else FEATURE_NAMES)
        self._atr_column = self._features.features.index("atr_14")
        if replay:
            if self._table is None:
                self.log.error(
                    "signal_source is 'catalog' but no stored signals were given: nothing to trade"
                )
                self.stop()
                return
            # each stored row's slot, -1 for symbols outside this run's universe
            slot_of = {str(iid): slot for iid, slot in self._slot.items()}
            self._table_slots = np.array(
                [slot_of.get(iid, -1) for iid in self._table.instrument_ids], dtype=np.int64
            )[self._table.instrument]
            return
        if self.ensemble.missing:
            self.log.warning(f"Reduced model count: running without {sorted(self.ensemble.missing)}")
        self._windows = FeatureWindows(len(self._ids), self.ensemble.lookback)
        # continuous learning (actors/clm.py): a promotion or rollback reloads the models at once
        self.subscribe_data(DataType(ModelEvent), client_id=COMMANDS_CLIENT)

    # ---- scoring -----------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        slot = self._slot[bar.bar_type.instrument_id]
        held = self._pending.get(slot)
        if held is not None and held.ts_event != bar.ts_event:
            # The next close arrived before this batch's alert (a replay faster than real time): score the
            # held batch now rather than let the newer bar replace a bar that was never scored.
            self.clock.cancel_timer(self._batch_alert)
            self._run_batch()
        if not self._pending:
            # Due a delay after the first bar's arrival, not after its stamped close: a live kline stamped in
            # the future (the fake's fast replay) or the past (a late feed) must still wait for the others.
            # Names are unique: a bar that arrives after its close's alert fired (a late kline) starts a batch
            # of its own for the same close, and Nautilus' LiveClock still lists a fired alert's name, so a
            # name made of the close time alone raised KeyError there and the data engine terminated the node.
            self._batches += 1
            self._batch_alert = f"ensemble-batch-{bar.ts_event}-{self._batches}"
            due = self.clock.timestamp_ns() + self.config.batch_delay_ms * 1_000_000
            self.clock.set_time_alert_ns(self._batch_alert, due, self._on_batch)
        self._pending[slot] = bar

    def on_warmup(self, bars: list[Bar]) -> None:
        """Live warm-up: the history goes through the same batches as live closes, one close at a time, so the
        features and model windows are full at the first live bar (entries are refused meanwhile)."""
        super().on_warmup(bars)
        i = 0
        while i < len(bars):
            ts = bars[i].ts_event
            while i < len(bars) and bars[i].ts_event == ts:
                self._pending[self._slot[bars[i].bar_type.instrument_id]] = bars[i]
                i += 1
            self._on_batch()

    def use_replayed_signals(self, table: SignalTable) -> None:
        """With `signal_source: catalog`: trade these stored decisions (ml/research.py) instead of scoring."""
        self._table = table

    def _on_batch(self, event=None) -> None:
        if event is None:  # warm-up: history, not a live close
            self._run_batch()
            return
        if event.name != self._batch_alert or not self._pending:
            # Live, an alert cancelled when a newer close's bar flushed its batch can still fire: the timer
            # had queued it on the event loop already. Its batch was scored; the held one waits for its own.
            return
        started, entries, submit = time.perf_counter_ns(), self.entries, self.submit_ns
        late = self.clock.timestamp_ns() - event.ts_event
        self._run_batch()
        done = time.perf_counter_ns()
        self.batch_latency.add(
            late, done - started, self.entries - entries, self._scored_at - started, self.submit_ns - submit
        )

    def on_stop(self) -> None:
        if self.batch_latency.work_ns:
            self.log.info(self.batch_latency.summary())

    def _run_batch(self) -> None:
        slots = np.fromiter(sorted(self._pending), dtype=np.int64)
        bars = [self._pending[s] for s in slots]
        self._pending = {}
        ohlcv = bar_columns(bars)
        rows = self._features.update(slots, *ohlcv)
        closes, atr_ratios = ohlcv[3], rows[:, self._atr_column]
        scored = self._replay(slots, bars) if self.ensemble is None else self._score(slots, bars, rows)
        self._scored_at = time.perf_counter_ns()
        for batch, positions in scored:
            self._act_on_batch(batch, closes[positions], atr_ratios[positions], rows[positions])

    def _score(
        self, slots: np.ndarray, bars: list[Bar], rows: np.ndarray
    ) -> list[tuple[BarCloseSignals, np.ndarray]]:
        """Vote on every slot with a full window and publish the decisions, one BarCloseSignals per bar close.

        Returns each batch with the positions of its rows in this call's `slots`.
        """
        ready = np.flatnonzero(self._windows.push(slots, rows))
        if len(ready) == 0:
            return []
        votes = self.ensemble.vote(self._windows.windows[slots[ready]])
        now = self.clock.timestamp_ns()
        closes_at = np.fromiter((bars[p].ts_event for p in ready), dtype=np.int64, count=len(ready))
        out = []
        for ts in np.unique(closes_at).tolist():  # live, a late bar of an earlier close can share this call
            rows_of = np.flatnonzero(closes_at == ts)
            batch = BarCloseSignals(
                ts_event=ts,
                ts_init=now,
                instrument_ids=[self._ids[s] for s in slots[ready[rows_of]].tolist()],
                direction=votes.direction[rows_of],
                confidence=votes.confidence[rows_of],
                prob_up=votes.prob_up[rows_of],
                forecast=votes.forecast[rows_of],
                votes={kind: votes.votes[rows_of, j] for j, kind in enumerate(self.ensemble.kinds)},
                model_ids=self.ensemble.model_ids,
                features_hash=FEATURE_SET_HASH,
            )
            self._publish(batch)
            out.append((batch, ready[rows_of]))
        return out

    def _replay(self, slots: np.ndarray, bars: list[Bar]) -> list[tuple[BarCloseSignals, np.ndarray]]:
        """The stored decisions about these bars, published as the scoring path would publish them: one
        BarCloseSignals per bar close, rows in slot order, each with its position in `slots`."""
        table, now, out = self._table, self.clock.timestamp_ns(), []
        position_of = np.full(len(self._ids), -1, dtype=np.int64)
        position_of[slots] = np.arange(len(slots))
        for ts in sorted({bar.ts_event for bar in bars}):
            lo, hi = np.searchsorted(table.ts_event, [ts, ts + 1])
            rows = np.arange(lo, hi)
            rows = rows[self._table_slots[rows] >= 0]
            rows = rows[position_of[self._table_slots[rows]] >= 0]  # only the symbols whose bar is here
            if len(rows) == 0:
                continue
            rows = rows[np.argsort(self._table_slots[rows], kind="stable")]
            batch = BarCloseSignals(
                ts_event=ts,
                ts_init=now,
                instrument_ids=[self._ids[s] for s in self._table_slots[rows].tolist()],
                direction=table.direction[rows],
                confidence=table.confidence[rows],
                prob_up=table.prob_up[rows],
                forecast=table.forecast[rows],
                votes={kind: values[rows] for kind, values in table.votes.items()},
                model_ids=str(table.model_ids[rows[0]]),
                features_hash=str(table.features_hash[rows[0]]),
            )
            self._publish(batch)
            out.append((batch, position_of[self._table_slots[rows]]))
        return out

    def _publish(self, batch: BarCloseSignals) -> None:
        self.publish_data(BAR_CLOSE_SIGNALS_TYPE, batch)
        self.signals_published += len(batch)

    # ---- model hot swap (continuous learning) ------------------------------------------------------
    def on_data(self, data) -> None:
        if isinstance(data, ModelEvent):
            if data.action in RELOAD_ACTIONS and self.ensemble is not None:
                self._reload_models(data)
            return
        super().on_data(data)

    def _reload_models(self, event: ModelEvent) -> None:
        """Load the registry's production models again: a promotion or rollback of `event.kind` takes effect
        from the next bar close, in a backtest as live. A failed reload keeps the models already loaded."""
        cfg = self.config
        try:
            ensemble = load_ensemble(cfg.registry, cfg.models, cfg.weights, cfg.flat_below)
        except EnsembleError as err:
            self.log.error(f"Models not reloaded after {event.action} of {event.kind}: {err}")
            return
        self.ensemble = ensemble
        if ensemble.lookback != self._windows.lookback:
            self._windows.resize(ensemble.lookback)
        self.log.info(f"Models reloaded after {event.action} of {event.kind}: {ensemble.model_ids}")

    # ---- trading -----------------------------------------------------------------------------------
    def _act_on_batch(
        self, batch: BarCloseSignals, closes: np.ndarray, atr_ratios: np.ndarray, features: np.ndarray
    ) -> None:
        """Entries for the rows that clear the threshold; the rest of the batch costs one numpy pass.
        Scored and replayed decisions (a batch of one each) go through the same rules."""
        if self.risk is not None:
            self.risk.observe_signals(batch.direction)
        if batch.ts_event < self._trade_start_ns:
            return
        direction = batch.direction
        wanted = (direction != 0) & (batch.confidence >= self._threshold)
        wanted &= np.isfinite(atr_ratios) & (atr_ratios > 0)
        if not self.config.allow_short:
            wanted &= direction > 0
        for i in np.flatnonzero(wanted).tolist():
            self._enter_if_free(batch, i, closes[i], atr_ratios[i], features[i])

    def _enter_if_free(self, batch: BarCloseSignals, i: int, price, atr_ratio, features) -> None:
        iid = batch.instrument_ids[i]
        if self.net_side(iid) != PositionSide.FLAT or self._cooling_down(iid):
            return
        price, atr = float(price), float(atr_ratio) * float(price)
        side = OrderSide.BUY if batch.direction[i] > 0 else OrderSide.SELL
        # The Signal's trace id is born here, for the decisions acted on: none is computed per row.
        detail = _detail(batch, i) if is_logging_initialized() else ""
        trace = batch.trace_id(i, self.id)
        rl = self.rl_sizing
        adjustment = rl.adjustment(iid, batch, i, features, trace) if rl is not None else None
        entered = self.enter(
            iid,
            side,
            price,
            confidence=float(batch.confidence[i]),
            atr=atr,
            trace=trace,
            detail=detail,
            rl_adjustment=adjustment,
        )
        if rl is not None:
            rl.entered(entered)
        if entered:
            self.entries += 1
            self._last_trade_ns[iid] = self.clock.timestamp_ns()

    def _cooling_down(self, iid: InstrumentId) -> bool:
        last = self._last_trade_ns.get(iid)
        return last is not None and self.clock.timestamp_ns() - last < self.config.cooldown_seconds * 1e9

    def on_position_closed(self, event: PositionClosed) -> None:
        super().on_position_closed(event)
        self._last_trade_ns[event.instrument_id] = event.ts_event


def _detail(batch: BarCloseSignals, i: int) -> str:
    """Row `i`'s vote for the decision's log line."""
    votes = " ".join(f"{k}={v[i]:.3f}" for k, v in batch.votes.items() if np.isfinite(v[i]))
    return f"prob_up={batch.prob_up[i]:.3f} forecast={batch.forecast[i]:.6f} votes[{votes}]"


def _check_config(cfg: EnsembleStrategyConfig) -> None:
    if not 0.0 <= cfg.entry_threshold <= 1.0:
        raise ValueError(f"entry_threshold must be within [0, 1], got {cfg.entry_threshold}")
    if cfg.signal_source not in ("models", "catalog"):
        raise ValueError(f"signal_source must be 'models' or 'catalog', got {cfg.signal_source!r}")
    if cfg.exit_profile is None:
        raise ValueError("exit_profile is required: the ensemble's positions are protected by the Exit Brain")

"""The strategy side of the risk layer: sizing, the pre-trade gates and the emergency stop's actions.

A strategy with a `risk_profile` owns one `RiskControl`. Before every entry it
1. refuses while the emergency stop is tripped (its latched state is read from the cache, where the
   EmergencyStop actor keeps it, so a restarted node with a persistent cache stays halted);
2. sizes the entry with the SPEC section 6 formula (strategies/sizing.py);
3. runs the Model Supervisor, Safety Governor and Risk Guard (actors/risk_gates.py) on the intent, the
   account's equity and drawdowns, the open positions and the correlation of returns with them.
Every veto is published as a RiskEvent and counted.

Actors cannot send orders, so the emergency stop's `close_losing` and `reduce_exposure` actions arrive here
as events and are carried out with the Exit Brain's market exits (reason emergency).
"""

import math

import numpy as np
from nautilus_trader.common.component import is_logging_initialized
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import Bar, DataType
from nautilus_trader.model.identifiers import ClientId, InstrumentId

from actors.emergency_stop import emergency_state
from actors.equity_recorder import account_equity
from actors.returns_window import ReturnsWindow
from actors.risk_gates import BookState, EntryIntent, RiskGate, Veto, max_directional_correlation
from actors.risk_profile import RiskProfile
from quantum_trader.events import RiskEvent
from strategies.sizing import Sizing, position_size

RISK_EVENT_TYPE = DataType(RiskEvent)
EVENTS_CLIENT = ClientId("SIGNALS")
NS_PER_DAY = 86_400_000_000_000


class RiskControl:
    def __init__(self, strategy, profile: RiskProfile):
        self.strategy = strategy
        self.profile = profile
        self.gate = RiskGate(profile)
        self._slot: dict[InstrumentId, int] = {}
        self._returns: ReturnsWindow | None = None
        self._day = -1
        self._week = -1
        self._day_start = self._week_start = self._peak = math.nan
        # Entries sent but not yet filled count as open: at one timestamp many symbols are reviewed before
        # any of their orders fills, and each review must see the ones approved before it.
        self._pending: dict[int, float] = {}

    # ---- wiring --------------------------------------------------------------------------------------
    def start(self, instrument_ids: list[InstrumentId]) -> None:
        self._slot = {iid: i for i, iid in enumerate(instrument_ids)}
        self._returns = ReturnsWindow(len(instrument_ids), self.profile.correlation_window)
        self._last_close = [math.nan] * len(instrument_ids)
        # Returns enter the window one whole timestamp at a time, when the next one begins, so every symbol's
        # series covers the same bars when an entry is reviewed in the middle of a timestamp.
        self._closes = np.full(len(instrument_ids), np.nan)
        self._bar_ts = -1
        self.strategy.subscribe_data(RISK_EVENT_TYPE, client_id=EVENTS_CLIENT)

    def on_bar(self, bar: Bar) -> None:
        slot = self._slot.get(bar.bar_type.instrument_id)
        if bar.ts_event != self._bar_ts:  # the previous timestamp is complete: add it to the returns
            self._returns.update_all(self._closes)
            self._closes[:] = np.nan
            self._bar_ts = bar.ts_event
        if slot is not None:
            close = bar.close.as_double()
            self._closes[slot] = close
            self._last_close[slot] = close
        day = bar.ts_event // NS_PER_DAY
        if day != self._day:
            self._new_day(day)

    def _new_day(self, day: int) -> None:
        equity = self.equity()
        if equity is None:
            return
        self._day = day
        self._day_start = equity
        week = (day + 3) // 7  # 1970-01-01 was a Thursday: weeks start on Monday 00:00 UTC
        if week != self._week:
            self._week, self._week_start = week, equity
        self._peak = equity if math.isnan(self._peak) else max(self._peak, equity)

    def observe_signal(self, direction: str) -> None:
        self.gate.observe(direction)

    def observe_signals(self, direction_codes: np.ndarray) -> None:
        """A batch of decisions (1 LONG, -1 SHORT, 0 FLAT): only its last `window` non-flat ones can still be
        in the supervisor's window afterwards, so only they are fed."""
        directions = np.asarray(direction_codes)
        for code in directions[directions != 0][-self.profile.supervisor.window :].tolist():
            self.gate.observe("LONG" if code > 0 else "SHORT")

    # ---- the entry review ----------------------------------------------------------------------------
    def approve(
        self,
        instrument_id: InstrumentId,
        direction: str,
        confidence: float,
        price: float,
        atr_ratio: float,
        trace_id: str = "",
        rl_adjustment: float | None = None,
    ) -> Sizing | None:
        """The sizing of an allowed entry, or None after publishing why it was refused (the veto carries the
        decision's `trace_id`). `rl_adjustment`: an active RL sizer's multiplier (strategies/rl_sizing.py)."""
        symbol = instrument_id.symbol.value
        state = emergency_state(self.strategy.cache)
        if state.tripped:
            self._publish(Veto("emergency_stop", "veto", "halted", f"emergency stop tripped: {state.reason}",
                               math.nan, math.nan), symbol, trace_id)  # fmt: skip
            return None
        equity = self.equity()
        if equity is None or equity <= 0:
            veto = Veto("risk_guard", "veto", "equity", f"no positive equity ({equity})", math.nan, 0.0)
            self._publish(veto, symbol, trace_id)
            return None
        leverage = self.strategy.leverage(instrument_id)
        sizing = position_size(equity, confidence, self.profile, leverage, rl_adjustment)
        slot = self._slot[instrument_id]
        intent = EntryIntent(
            symbol=symbol,
            slot=slot,
            direction=direction,
            confidence=confidence,
            price=price,
            atr_ratio=atr_ratio,
            margin=sizing.margin,
            notional=sizing.notional,
            leverage=sizing.leverage,
            ts=self.strategy.clock.timestamp_ns(),
        )
        book = self._book(equity)
        correlation = max_directional_correlation(self._returns, slot, direction, book.open_notional)
        veto = self.gate.review(intent, book, correlation)
        for alert in self.gate.supervisor.pop_observed():  # observe mode: reported, not enforced
            self._publish(alert, symbol, trace_id)
        if veto is not None:
            self._publish(veto, symbol, trace_id)
            return None
        return sizing

    def entry_sent(self, instrument_id: InstrumentId, signed_notional: float) -> None:
        self._pending[self._slot[instrument_id]] = signed_notional

    def entry_done(self, instrument_id: InstrumentId) -> None:
        """The entry filled (the position now counts) or failed (nothing counts)."""
        slot = self._slot.get(instrument_id)
        if slot is not None:
            self._pending.pop(slot, None)

    def equity(self) -> float | None:
        venue = next(iter(self._slot)).venue if self._slot else None
        return account_equity(self.strategy.portfolio, venue) if venue is not None else None

    def book(self, equity: float) -> BookState:
        """The account as the gates see it (the RL sizer's observation reads it too)."""
        return self._book(equity)

    def unrealised_pnl(self) -> float:
        """Open positions marked at their symbols' last closes."""
        total = 0.0
        for position in self.strategy.cache.positions_open():
            slot = self._slot.get(position.instrument_id)
            last = self._last_close[slot] if slot is not None else math.nan
            if last == last:
                total += position.signed_qty * (last - position.avg_px_open)
        return total

    def _book(self, equity: float) -> BookState:
        if math.isnan(self._day_start):
            self._day_start = self._week_start = self._peak = equity
        self._peak = max(self._peak, equity)
        open_notional = dict(self._pending)
        for position in self.strategy.cache.positions_open():
            slot = self._slot.get(position.instrument_id)
            if slot is not None:
                last = self._last_close[slot]
                open_notional[slot] = position.signed_qty * (last if last == last else position.avg_px_open)
        return BookState(
            equity=equity,
            day_start_equity=self._day_start,
            week_start_equity=self._week_start,
            peak_equity=self._peak,
            open_notional=open_notional,
        )

    def _publish(self, veto: Veto, symbol: str = "", trace_id: str = "") -> None:
        if trace_id and is_logging_initialized():
            self.strategy.log.info(
                f"trace_id={trace_id} {veto.action} {veto.source}/{veto.code} {symbol}: {veto.reason}"
            )
        event = veto.to_event(symbol, self.strategy.clock.timestamp_ns(), trace_id=trace_id)
        self.strategy.publish_data(RISK_EVENT_TYPE, event)

    # ---- the emergency stop's actions and operator commands -------------------------------------------
    def on_data(self, data: Data) -> None:
        if isinstance(data, RiskEvent) and data.source == "emergency_stop":
            if data.action == "close_losing":
                self._close_losing()
            elif data.action == "reduce_exposure":
                self._reduce_all(
                    data.value if math.isfinite(data.value) else self.profile.emergency.reduce_fraction
                )

    def _close_losing(self) -> None:
        for position in self.strategy.cache.positions_open(strategy_id=self.strategy.id):
            slot = self._slot.get(position.instrument_id)
            last = self._last_close[slot] if slot is not None else math.nan
            if last == last and (last - position.avg_px_open) * position.signed_qty < 0:
                self.strategy.exit(position.instrument_id, "EMERGENCY")

    def _reduce_all(self, fraction: float) -> None:
        brain = self.strategy.exit_brain
        for position in self.strategy.cache.positions_open(strategy_id=self.strategy.id):
            if brain is None:  # no partial market exits without the Exit Brain: close the whole position
                self.strategy.exit(position.instrument_id, "EMERGENCY")
            elif not brain.is_closing(position.instrument_id):
                iid = position.instrument_id
                self.strategy.decide(iid, lambda iid=iid: brain.reduce(iid, fraction, "EMERGENCY"))

"""Pre-trade risk gates (SPEC section 6): what each gate vetoes, at which number, and in which order.

Moderate profile unless a test says otherwise: margin 100..2000 USD, 20x, gross exposure 2x equity,
15 positions, correlation 0.70, daily / weekly drawdown 15% / 25%, emergency brake 20% from the peak,
min confidence 0.60, veto at 80% of a drawdown limit, ATR/price 2%, supervisor 70% of the last 20.
"""

import math

import numpy as np
import pandas as pd
import pytest

from actors.returns_window import ReturnsWindow
from actors.risk_gates import (
    BookState,
    EntryIntent,
    ModelSupervisor,
    RiskGate,
    RiskGuard,
    SafetyGovernor,
    Veto,
    gross_exposure,
    max_directional_correlation,
)
from actors.risk_profile import SupervisorSettings, load_risk_profile
from strategies.sizing import position_size

MODERATE = load_risk_profile("moderate")
CONSERVATIVE = load_risk_profile("conservative")
AGGRESSIVE = load_risk_profile("aggressive")


def intent(**kw) -> EntryIntent:
    """A clean LONG entry: confidence 0.80, ATR/price 1%, 500 USD margin at 10x."""
    fields = dict(
        symbol="ETHUSDT",
        slot=0,
        direction="LONG",
        confidence=0.80,
        price=100.0,
        atr_ratio=0.01,
        margin=500.0,
        notional=5_000.0,
        leverage=10.0,
        ts=1_700_000_000_000_000_000,
    )
    fields.update(kw)
    return EntryIntent(**fields)


def book(equity=10_000.0, day=None, week=None, peak=None, open_notional=None) -> BookState:
    """A 10k account; the day / week / peak marks default to the equity (no drawdown), no open positions."""
    return BookState(
        equity=equity,
        day_start_equity=equity if day is None else day,
        week_start_equity=equity if week is None else week,
        peak_equity=equity if peak is None else peak,
        open_notional={} if open_notional is None else open_notional,
    )


def spread_positions(n: int, each: float = 100.0) -> dict[int, float]:
    """n small open positions in slots 1..n, alternating long and short."""
    return {slot: each if slot % 2 else -each for slot in range(1, n + 1)}


NO_CORR = math.nan


# ---- Risk Guard: the hard limits -------------------------------------------------------------------------


class TestRiskGuard:
    guard = RiskGuard(MODERATE)

    def test_a_clean_entry_passes(self):
        assert self.guard.check(intent(), book(), NO_CORR) is None

    # systemic tier

    def test_daily_drawdown_exactly_at_the_limit_vetoes(self):
        v = self.guard.check(intent(), book(8_500, day=10_000), NO_CORR)
        assert (v.source, v.action, v.code) == ("risk_guard", "veto", "daily_drawdown")
        assert v.value == pytest.approx(0.15) and v.limit == 0.15
        assert "daily drawdown 15.0% reached the 15.0% limit" in v.reason

    def test_daily_drawdown_just_inside_the_limit_passes(self):
        assert self.guard.check(intent(), book(8_501, day=10_000), NO_CORR) is None

    def test_weekly_drawdown_at_the_limit_vetoes(self):
        # down 10% today, 25% on the week; peak = week start, so the brake (20%) is also past: weekly first
        v = self.guard.check(intent(), book(9_000, day=10_000, week=12_000, peak=12_000), NO_CORR)
        assert v.code == "weekly_drawdown"
        assert v.value == pytest.approx(0.25) and v.limit == 0.25

    def test_emergency_brake_from_the_peak(self):
        # flat on the day and the week, but 20% below the peak
        v = self.guard.check(intent(), book(8_000, peak=10_000), NO_CORR)
        assert v.code == "emergency_brake"
        assert v.value == pytest.approx(0.20) and v.limit == 0.20
        assert "emergency brake" in v.reason

    @pytest.mark.parametrize("equity", [0.0, -100.0, math.nan])
    def test_a_blown_or_unknown_equity_fails_closed(self, equity):
        v = self.guard.check(intent(), book(equity, day=10_000, week=10_000, peak=10_000), NO_CORR)
        assert v is not None and v.code == "daily_drawdown"

    def test_unknown_day_start_fails_closed(self):
        v = self.guard.check(intent(), book(10_000, day=0.0), NO_CORR)
        assert v.code == "daily_drawdown" and math.isnan(v.value)

    # position tier

    def test_margin_exactly_at_the_maximum_passes(self):
        assert self.guard.check(intent(margin=2_000.0, notional=20_000.0), book(), NO_CORR) is None

    def test_margin_above_the_maximum_vetoes(self):
        v = self.guard.check(intent(margin=2_000.01, notional=20_000.1), book(), NO_CORR)
        assert v.code == "margin_max"
        assert (v.value, v.limit) == (2_000.01, 2_000.0)
        assert v.reason == "margin 2,000.01 USD above the maximum of 2,000.00 USD per position"

    def test_margin_clamped_by_sizing_is_exactly_at_the_limit(self):
        s = position_size(1_000_000, 0.99, MODERATE, 1)
        assert s.clamped == "max"
        big_book = book(1_000_000)
        assert self.guard.check(intent(margin=s.margin, notional=s.notional), big_book, NO_CORR) is None

    def test_margin_exactly_at_the_minimum_passes(self):
        assert self.guard.check(intent(margin=100.0, notional=1_000.0), book(), NO_CORR) is None

    def test_margin_below_the_minimum_vetoes(self):
        v = self.guard.check(intent(margin=99.99, notional=999.9), book(), NO_CORR)
        assert v.code == "margin_min"
        assert (v.value, v.limit) == (99.99, 100.0)

    def test_a_zero_sizing_never_reaches_the_exchange(self):
        s = position_size(0.0, 0.85, MODERATE, 10)
        v = self.guard.check(intent(margin=s.margin, notional=s.notional), book(), NO_CORR)
        assert v.code == "margin_min"

    def test_leverage_at_the_maximum_passes_above_it_vetoes(self):
        assert self.guard.check(intent(margin=250.0, leverage=20.0), book(), NO_CORR) is None
        v = self.guard.check(intent(margin=250.0, leverage=20.5, notional=5_125.0), book(), NO_CORR)
        assert v.code == "leverage"
        assert (v.value, v.limit) == (20.5, 20.0)
        assert v.reason == "leverage 20.5x above the maximum of 20x"

    # portfolio tier

    def test_exposure_exactly_at_twice_equity_passes(self):
        # 15_000 open (long and short both count) + 5_000 new = 20_000 = 2.0 x 10_000
        open_ = {1: 10_000.0, 2: -5_000.0}
        assert self.guard.check(intent(notional=5_000.0), book(open_notional=open_), NO_CORR) is None

    def test_exposure_above_twice_equity_vetoes(self):
        open_ = {1: 10_000.0, 2: -5_000.0}
        v = self.guard.check(intent(notional=5_100.0), book(open_notional=open_), NO_CORR)
        assert v.code == "exposure"
        assert v.value == pytest.approx(2.01) and v.limit == 2.0
        assert "exposure after this entry 2.01x equity above the 2.00x limit" in v.reason

    def test_a_short_intent_counts_its_absolute_notional(self):
        open_ = {1: 10_000.0, 2: -5_000.0}
        v = self.guard.check(intent(direction="SHORT", notional=-5_100.0), book(open_notional=open_), NO_CORR)
        assert v.code == "exposure"

    def test_the_fifteenth_position_is_allowed_the_sixteenth_is_not(self):
        assert self.guard.check(intent(), book(open_notional=spread_positions(14)), NO_CORR) is None
        v = self.guard.check(intent(), book(open_notional=spread_positions(15)), NO_CORR)
        assert v.code == "positions"
        assert (v.value, v.limit) == (15, 15)
        assert v.reason == "15 positions open, the maximum is 15"

    def test_zero_notional_entries_are_not_positions(self):
        open_ = {**spread_positions(14), 20: 0.0, 21: 0.0}
        assert self.guard.check(intent(), book(open_notional=open_), NO_CORR) is None

    def test_correlation_at_the_limit_passes_above_it_vetoes(self):
        open_ = {1: 1_000.0}
        assert self.guard.check(intent(), book(open_notional=open_), 0.70) is None
        v = self.guard.check(intent(), book(open_notional=open_), 0.71)
        assert v.code == "correlation"
        assert (v.value, v.limit) == (0.71, 0.70)
        assert v.reason == "correlation 0.71 with an open position above the 0.70 limit"

    def test_unknown_correlation_is_not_held_against_the_entry(self):
        assert self.guard.check(intent(), book(open_notional={1: 1_000.0}), math.nan) is None

    # tier order

    def test_systemic_tier_comes_before_the_position_tier(self):
        v = self.guard.check(intent(margin=5_000.0), book(8_000, day=10_000), NO_CORR)
        assert v.code == "daily_drawdown"

    def test_position_tier_comes_before_the_portfolio_tier(self):
        v = self.guard.check(intent(margin=5_000.0), book(open_notional=spread_positions(15)), 0.99)
        assert v.code == "margin_max"


# ---- Safety Governor: judgment in front of the limits ------------------------------------------------------


class TestSafetyGovernor:
    governor = SafetyGovernor(MODERATE)

    def test_a_clean_entry_passes(self):
        assert self.governor.check(intent(), book(), NO_CORR) is None

    def test_low_confidence_is_vetoed_with_the_numbers(self):
        v = self.governor.check(intent(confidence=0.55), book(), NO_CORR)
        assert (v.source, v.action, v.code) == ("safety_governor", "veto", "confidence")
        assert (v.value, v.limit) == (0.55, 0.60)
        assert v.reason == "confidence 0.55 below 0.60"

    def test_confidence_exactly_at_the_minimum_passes(self):
        assert self.governor.check(intent(confidence=0.60), book(), NO_CORR) is None

    def test_margin_over_the_position_limit_is_a_size_veto(self):
        v = self.governor.check(intent(margin=2_500.0, notional=5_000.0), book(), NO_CORR)
        assert v.code == "size"
        assert (v.value, v.limit) == (2_500.0, 2_000.0)

    def test_margin_under_the_position_limit_is_a_size_veto(self):
        v = self.governor.check(intent(margin=50.0, notional=500.0), book(), NO_CORR)
        assert v.code == "size"
        assert (v.value, v.limit) == (50.0, 100.0)

    def test_notional_over_the_exposure_headroom_is_a_size_veto(self):
        # 2 x 10_000 - 12_000 open = 8_000 USD of headroom; 9_000 asked
        v = self.governor.check(intent(notional=9_000.0), book(open_notional={1: 12_000.0}), NO_CORR)
        assert v.code == "size"
        assert (v.value, v.limit) == (9_000.0, 8_000.0)
        assert "notional 9,000.00 USD exceeds the 8,000.00 USD of exposure headroom left" in v.reason

    def test_notional_exactly_filling_the_headroom_passes(self):
        assert (
            self.governor.check(intent(notional=8_000.0), book(open_notional={1: 12_000.0}), NO_CORR) is None
        )

    def test_correlation_above_the_limit(self):
        v = self.governor.check(intent(), book(open_notional={1: 1_000.0}), 0.85)
        assert v.code == "correlation"
        assert (v.value, v.limit) == (0.85, 0.70)
        assert v.reason == "correlation 0.85 with an open position above 0.70"

    def test_daily_drawdown_at_80_percent_of_its_limit(self):
        # 12% down on the day = 0.8 x 15%: the governor stops new entries before the guard's 15%
        v = self.governor.check(intent(), book(8_800, day=10_000), NO_CORR)
        assert v.code == "drawdown_near"
        assert v.value == pytest.approx(0.12) and v.limit == pytest.approx(0.12)
        assert "daily drawdown 12.0% is near its 15.0% limit" in v.reason
        assert RiskGuard(MODERATE).check(intent(), book(8_800, day=10_000), NO_CORR) is None

    def test_daily_drawdown_just_short_of_80_percent_passes(self):
        assert self.governor.check(intent(), book(8_801, day=10_000), NO_CORR) is None

    def test_weekly_drawdown_near_its_limit(self):
        # flat today, 20% down on the week = 0.8 x 25%
        v = self.governor.check(intent(), book(8_000, week=10_000), NO_CORR)
        assert v.code == "drawdown_near"
        assert v.value == pytest.approx(0.20) and v.limit == pytest.approx(0.20)
        assert v.reason.startswith("weekly drawdown 20.0%")

    def test_volatility_above_the_threshold(self):
        assert self.governor.check(intent(atr_ratio=0.02), book(), NO_CORR) is None
        v = self.governor.check(intent(atr_ratio=0.025), book(), NO_CORR)
        assert v.code == "volatility"
        assert (v.value, v.limit) == (0.025, 0.02)
        assert v.reason == "volatility (ATR/price) 2.50% above 2.00%"

    def test_unknown_volatility_fails_closed(self):
        v = self.governor.check(intent(atr_ratio=math.nan), book(), NO_CORR)
        assert v.code == "volatility" and "not known" in v.reason

    def test_nan_confidence_fails_closed(self):
        assert self.governor.check(intent(confidence=math.nan), book(), NO_CORR).code == "confidence"


# ---- Model Supervisor ----------------------------------------------------------------------------------------


def supervisor(mode="enforce", longs=0, shorts=0, window=20, max_share=0.70) -> ModelSupervisor:
    sup = ModelSupervisor(SupervisorSettings(window=window, max_share=max_share, mode=mode))
    for d in ["LONG"] * longs + ["SHORT"] * shorts:
        sup.observe(d)
    return sup


class TestModelSupervisor:
    def test_blocks_the_dominant_direction_only(self):
        sup = supervisor(longs=15, shorts=5)
        v = sup.check(intent(direction="LONG"))
        assert (v.source, v.action, v.code) == ("model_supervisor", "block", "dominant_direction")
        assert (v.value, v.limit) == (0.75, 0.70)
        assert v.reason == "15 of the last 20 signals are LONG (75%), more than the 70% allowed"
        assert sup.check(intent(direction="SHORT", notional=-5_000.0)) is None

    def test_exactly_70_percent_is_not_more_than_70_percent(self):
        assert supervisor(longs=14, shorts=6).check(intent(direction="LONG")) is None

    def test_silent_until_the_window_is_full(self):
        sup = supervisor(longs=19)
        assert sup.check(intent(direction="LONG")) is None
        sup.observe("LONG")
        assert sup.check(intent(direction="LONG")).value == 1.0

    def test_flat_signals_are_ignored(self):
        sup = supervisor(longs=15)
        for _ in range(100):
            sup.observe("FLAT")
        assert sup.check(intent(direction="LONG")) is None  # still only 15 non-flat signals
        for _ in range(5):
            sup.observe("SHORT")
        assert sup.check(intent(direction="LONG")).code == "dominant_direction"

    def test_the_window_slides(self):
        sup = supervisor(longs=20, shorts=20)  # the 20 longs have left the window
        assert sup.check(intent(direction="LONG")) is None
        assert sup.check(intent(direction="SHORT")).value == 1.0
        assert sup.count("LONG") == 0 and sup.count("SHORT") == 20

    def test_observe_mode_records_but_does_not_block(self):
        sup = supervisor(mode="observe", longs=18, shorts=2)
        assert sup.check(intent(direction="LONG")) is None
        assert len(sup.observed) == 1
        alert = sup.observed[0]
        assert (alert.action, alert.code, alert.value) == ("alert", "dominant_direction", 0.9)
        assert "observe mode" in alert.reason
        assert sup.check(intent(direction="SHORT")) is None
        assert len(sup.observed) == 1  # the minority direction is no would-be block
        assert len(sup.pop_observed()) == 1 and sup.observed == []

    def test_configurable_window_and_share(self):
        sup = supervisor(longs=5, shorts=1, window=6, max_share=0.8)  # 5/6 = 83% > 80%
        assert sup.check(intent(direction="LONG")).value == pytest.approx(5 / 6)

    def test_unknown_direction_is_an_error(self):
        with pytest.raises(ValueError, match="LONG, SHORT or FLAT"):
            supervisor().observe("UP")


# ---- RiskGate: the order of the layers, the counts --------------------------------------------------------------


class TestRiskGate:
    def test_supervisor_then_governor_then_guard(self):
        gate = RiskGate(MODERATE)
        for _ in range(20):
            gate.observe("LONG")
        bad = intent(confidence=0.50, margin=5_000.0, leverage=25.0)
        assert gate.review(bad, book(), NO_CORR).source == "model_supervisor"
        assert gate.review(intent(direction="SHORT", confidence=0.50), book(), NO_CORR).code == "confidence"
        # the governor's "size" answers before the guard's "margin_max" would
        v = gate.review(intent(direction="SHORT", margin=5_000.0), book(), NO_CORR)
        assert (v.source, v.code) == ("safety_governor", "size")

    @pytest.mark.parametrize(
        ("the_intent", "the_book", "code"),
        [
            (intent(leverage=25.0, notional=12_500.0), book(), "leverage"),
            (intent(), book(open_notional=spread_positions(15)), "positions"),
            (intent(), book(8_400, peak=10_500), "emergency_brake"),
        ],
    )
    def test_the_guard_answers_what_the_governor_does_not_check(self, the_intent, the_book, code):
        v = RiskGate(MODERATE).review(the_intent, the_book, NO_CORR)
        assert (v.source, v.code) == ("risk_guard", code)

    def test_counts_vetoes_by_source_and_code(self):
        gate = RiskGate(MODERATE)
        gate.review(intent(confidence=0.5), book(), NO_CORR)
        gate.review(intent(confidence=0.4), book(), NO_CORR)
        gate.review(intent(leverage=30.0), book(), NO_CORR)
        gate.review(intent(), book(), NO_CORR)
        assert gate.counts == {("safety_governor", "confidence"): 2, ("risk_guard", "leverage"): 1}
        assert (gate.reviewed, gate.approved) == (4, 1)

    def test_observe_mode_supervisor_lets_the_entry_through_to_the_other_layers(self):
        gate = RiskGate(MODERATE.model_copy(update={"supervisor": SupervisorSettings(mode="observe")}))
        for _ in range(20):
            gate.observe("LONG")
        assert gate.review(intent(), book(), NO_CORR) is None
        assert gate.review(intent(confidence=0.5), book(), NO_CORR).code == "confidence"
        assert [a.action for a in gate.supervisor.observed] == ["alert", "alert"]
        assert ("model_supervisor", "dominant_direction") not in gate.counts

    def test_a_veto_becomes_a_risk_event(self):
        v = RiskGate(MODERATE).review(intent(confidence=0.55), book(), NO_CORR)
        ev = v.to_event("ETHUSDT", ts_event=5, ts_init=7)
        assert (ev.source, ev.action, ev.code, ev.reason) == (v.source, v.action, v.code, v.reason)
        assert (ev.symbol, ev.value, ev.limit, ev.ts_event, ev.ts_init) == ("ETHUSDT", 0.55, 0.60, 5, 7)


# ---- profiles: the same entry, different answers -----------------------------------------------------------------


class TestProfiles:
    def test_a_1500_usd_margin_is_too_big_for_conservative_only(self):
        big = intent(margin=1_500.0, notional=9_000.0, leverage=6.0)
        assert RiskGate(CONSERVATIVE).review(big, book(), NO_CORR).code == "size"
        assert RiskGate(MODERATE).review(big, book(), NO_CORR) is None
        assert RiskGate(AGGRESSIVE).review(big, book(), NO_CORR) is None

    def test_a_12_percent_daily_loss_stops_conservative_and_moderate_not_aggressive(self):
        # near-limit thresholds: conservative 8%, moderate 12%, aggressive 16%
        down = book(8_800, day=10_000)
        assert RiskGate(CONSERVATIVE).review(intent(), down, NO_CORR).value == pytest.approx(0.12)
        assert RiskGate(CONSERVATIVE).review(intent(), down, NO_CORR).limit == pytest.approx(0.08)
        assert RiskGate(MODERATE).review(intent(), down, NO_CORR).code == "drawdown_near"
        assert RiskGate(AGGRESSIVE).review(intent(), down, NO_CORR) is None

    def test_the_eleventh_position_is_conservative_only_veto(self):
        crowded = book(open_notional=spread_positions(10))
        assert RiskGate(CONSERVATIVE).review(intent(), crowded, NO_CORR).code == "positions"
        assert RiskGate(AGGRESSIVE).review(intent(), crowded, NO_CORR) is None

    def test_25x_leverage_is_aggressive_only(self):
        levered = intent(margin=400.0, notional=10_000.0, leverage=25.0)
        assert RiskGate(MODERATE).review(levered, book(), NO_CORR).code == "leverage"
        assert RiskGate(AGGRESSIVE).review(levered, book(), NO_CORR) is None


# ---- returns window and the direction-adjusted correlation ------------------------------------------------------


def feed(window: ReturnsWindow, closes: np.ndarray) -> None:
    """closes: (bars, symbols), one update per symbol per bar."""
    for row in closes:
        for slot, close in enumerate(row):
            window.update(slot, float(close))


def prices_from(log_returns: np.ndarray) -> np.ndarray:
    return 100.0 * np.exp(np.vstack([np.zeros(log_returns.shape[1]), np.cumsum(log_returns, axis=0)]))


class TestReturnsWindow:
    rng = np.random.default_rng(11)

    def test_identical_moves_correlate_1_mirrored_moves_minus_1(self):
        r = self.rng.normal(0, 0.01, 100)
        w = ReturnsWindow(3, 50)
        feed(w, prices_from(np.column_stack([r, 2 * r, -r])))
        assert w.correlations(0, np.array([1, 2])) == pytest.approx([1.0, -1.0])

    def test_independent_series_are_near_zero(self):
        w = ReturnsWindow(2, 2_000)
        feed(w, prices_from(self.rng.normal(0, 0.01, (2_000, 2))))
        assert abs(w.correlations(0, np.array([1]))[0]) < 0.08  # ~3.5 standard errors at n = 2000

    def test_fewer_than_20_common_returns_is_nan(self):
        r = self.rng.normal(0, 0.01, (19, 2))
        w = ReturnsWindow(2, 50)
        feed(w, prices_from(r))  # 20 closes -> 19 returns
        assert np.isnan(w.correlations(0, np.array([1]))[0])
        w.update(0, 101.0)
        w.update(1, 99.0)
        assert not np.isnan(w.correlations(0, np.array([1]))[0])

    def test_a_flat_price_has_no_correlation(self):
        w = ReturnsWindow(2, 50)
        feed(w, np.column_stack([np.full(60, 100.0), prices_from(self.rng.normal(0, 0.01, (59, 1)))[:, 0]]))
        assert np.isnan(w.correlations(0, np.array([1]))[0])
        assert np.isnan(w.correlations(1, np.array([0]))[0])

    def test_wrap_around_matches_numpy_on_the_tail(self):
        n_sym, size, bars = 5, 37, 200  # the ring wraps several times, ending mid-ring
        common = self.rng.normal(0, 0.01, (bars, 1))
        lr = 0.7 * common + self.rng.normal(0, 0.01, (bars, n_sym))
        w = ReturnsWindow(n_sym, size)
        feed(w, prices_from(lr))
        tail = lr[-size:]
        expected = [np.corrcoef(tail[:, 0], tail[:, k])[0, 1] for k in range(1, n_sym)]
        assert w.correlations(0, np.arange(1, n_sym)) == pytest.approx(expected, abs=1e-9)
        assert w.returns(3) == pytest.approx(tail[:, 3], abs=1e-12)

    def test_a_symbol_with_a_shorter_history_uses_the_returns_both_have(self):
        lr = self.rng.normal(0, 0.01, (120, 2))
        closes = prices_from(lr)
        w = ReturnsWindow(2, 100)
        for t, row in enumerate(closes):
            w.update(0, float(row[0]))
            if t >= 70:  # slot 1 is listed at bar 70: 50 returns
                w.update(1, float(row[1]))
        assert w.n_returns(0) == 100 and w.n_returns(1) == 50
        expected = np.corrcoef(lr[-50:, 0], lr[-50:, 1])[0, 1]
        assert w.correlations(0, np.array([1]))[0] == pytest.approx(expected, abs=1e-9)
        assert w.correlations(1, np.array([0]))[0] == pytest.approx(expected, abs=1e-9)

    def test_bad_closes_are_skipped(self):
        w = ReturnsWindow(1, 10)
        for close in (100.0, math.nan, 0.0, -5.0, math.inf, 110.0):
            w.update(0, close)
        assert w.returns(0) == pytest.approx([math.log(1.1)])

    def test_update_writes_in_place(self):
        w = ReturnsWindow(2, 10)
        ring = w._ring
        feed(w, prices_from(self.rng.normal(0, 0.01, (30, 2))))
        assert w._ring is ring

    def test_unknown_slot_is_an_error(self):
        with pytest.raises(IndexError):
            ReturnsWindow(2, 10).update(2, 100.0)


class TestDirectionalCorrelation:
    @pytest.fixture
    def window(self):
        r = np.random.default_rng(3).normal(0, 0.01, 60)
        w = ReturnsWindow(4, 50)
        feed(w, prices_from(np.column_stack([r, r, -r, np.random.default_rng(4).normal(0, 0.01, 60)])))
        return w  # slot 1 moves with slot 0, slot 2 against it, slot 3 independently

    def test_same_direction_on_a_twin_is_penalised(self, window):
        assert max_directional_correlation(window, 0, "LONG", {1: 1_000.0}) == pytest.approx(1.0)

    def test_a_hedge_is_not_penalised(self, window):
        # short slot 0 against an open long in its twin: direction-adjusted -1
        assert max_directional_correlation(window, 0, "SHORT", {1: 1_000.0}) == pytest.approx(-1.0)

    def test_long_against_a_short_in_the_mirror_is_the_same_bet(self, window):
        # slot 2 = -slot 0; being short slot 2 and long slot 0 doubles the bet
        assert max_directional_correlation(window, 0, "LONG", {2: -1_000.0}) == pytest.approx(1.0)

    def test_the_largest_over_open_positions(self, window):
        assert max_directional_correlation(window, 0, "LONG", {2: 1_000.0, 3: 1_000.0, 1: 500.0}) == (
            pytest.approx(1.0)
        )

    def test_nothing_open_is_nan_and_own_slot_and_zero_entries_are_skipped(self, window):
        assert math.isnan(max_directional_correlation(window, 0, "LONG", {}))
        assert math.isnan(max_directional_correlation(window, 0, "LONG", {0: 1_000.0, 1: 0.0}))


# ---- randomized: an approved entry never breaks a limit ------------------------------------------------------------


def test_thirty_symbols_random_intents_never_break_the_limits():
    """Random entries on 30 correlated symbols; every approved one is applied to the book.

    After each approval the book must hold: gross exposure <= 2x equity, at most 15 positions, the new
    position's direction-adjusted correlation with every other open one <= 0.70 (checked independently
    with numpy.corrcoef), margin and leverage within the position limits, daily drawdown under the limit.
    """
    profile = MODERATE
    rng = np.random.default_rng(2024)
    n_sym, size, warmup, bars = 30, 288, 300, 150
    # three sectors; each coin loads on its sector factor with a random strength -> pair correlations
    # from about 0 to about 0.9, so the correlation limit binds for some pairs and not for others
    loading = rng.uniform(0.0, 2.0, n_sym)
    sector = np.arange(n_sym) % 3
    factors = rng.normal(0, 0.004, (warmup + bars, 3))
    lr = factors[:, sector] * loading + rng.normal(0, 0.004, (warmup + bars, n_sym))
    closes = prices_from(lr)
    window = ReturnsWindow(n_sym, size)
    feed(window, closes[: warmup + 1])

    gate = RiskGate(profile)
    open_: dict[int, float] = {}
    equity = peak = day_start = 10_000.0
    approved = headroom_vetoes = 0
    for t in range(warmup + 1, warmup + 1 + bars):
        for slot in range(n_sym):
            window.update(slot, float(closes[t, slot]))
        equity *= math.exp(rng.normal(0, 0.01))
        peak = max(peak, equity)
        for slot in list(open_):
            if rng.random() < 0.1:
                del open_[slot]
        for _ in range(6):
            slot = int(rng.integers(n_sym))
            if slot in open_:
                continue
            direction = "LONG" if rng.random() < 0.5 else "SHORT"
            gate.observe(direction)
            sizing = position_size(
                equity, rng.uniform(0.5, 1.0), profile, float(rng.choice([1, 2, 5, 10, 25]))
            )
            margin = sizing.margin * (rng.choice([1.0, 1.0, 1.0, 3.0]))  # now and then a broken size
            sign = 1.0 if direction == "LONG" else -1.0
            it = intent(
                symbol=f"S{slot}",
                slot=slot,
                direction=direction,
                confidence=rng.uniform(0.5, 1.0),
                atr_ratio=rng.uniform(0.002, 0.025),
                margin=margin,
                notional=sign * margin * sizing.leverage,
                leverage=float(rng.choice([sizing.leverage, sizing.leverage, 25.0])),
                ts=t,
            )
            state = book(equity, day=day_start, week=day_start, peak=peak, open_notional=dict(open_))
            corr = max_directional_correlation(window, slot, direction, open_)
            veto = gate.review(it, state, corr)
            if veto is not None:
                headroom_vetoes += veto.code == "size" and "headroom" in veto.reason
                continue
            approved += 1
            tail = lr[t - size + 1 : t + 1]  # the window's returns, straight from the generator
            for other, notional in open_.items():
                same = (notional > 0) == (direction == "LONG")
                c = np.corrcoef(tail[:, slot], tail[:, other])[0, 1] * (1 if same else -1)
                assert c <= profile.max_correlation + 1e-9, (slot, other, c)
            assert len(open_) < profile.max_positions
            assert profile.min_position_usd <= it.margin <= profile.max_position_usd
            assert it.leverage <= profile.max_leverage
            assert (day_start - equity) / day_start < profile.daily_drawdown
            open_[slot] = it.notional
            assert (
                gross_exposure(book(equity, open_notional=open_))
                <= profile.max_total_exposure * equity + 1e-6
            )
            assert len(open_) <= profile.max_positions

    # the run must have exercised the limits, or the invariants above prove nothing
    assert approved >= 50
    assert sum(gate.counts.values()) == gate.reviewed - gate.approved
    for key in [
        ("safety_governor", "correlation"),
        ("safety_governor", "size"),
        ("safety_governor", "confidence"),
        ("safety_governor", "volatility"),
        ("risk_guard", "leverage"),
        ("risk_guard", "positions"),
    ]:
        assert gate.counts[key] > 0, (key, dict(gate.counts))
    assert headroom_vetoes > 0


def test_veto_is_a_frozen_value():
    v = Veto("risk_guard", "veto", "positions", "15 positions open, the maximum is 15", 15, 15)
    with pytest.raises(AttributeError):
        v.code = "x"


def test_a_whole_timestamp_enters_the_returns_window_at_once_and_stays_aligned():
    rng = np.random.default_rng(4)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (60, 3)), axis=0))
    closes[10, 2] = np.nan  # symbol 2 has no bar at t=10: its close repeats
    window = ReturnsWindow(3, 40)
    for row in closes:
        window.update_all(row)
    filled = pd.DataFrame(closes).ffill()
    expected = np.log(filled).diff().dropna().tail(40)
    assert window.n_returns(0) == window.n_returns(2) == 40
    assert np.allclose(window.returns(2), expected[2].to_numpy())
    corr = window.correlations(0, np.array([1, 2]))
    assert np.allclose(corr, [np.corrcoef(expected[0], expected[k])[0, 1] for k in (1, 2)])

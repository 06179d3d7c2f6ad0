"""Pre-trade risk gates: every entry intent is reviewed before an order is sent (SPEC section 6).

Plain Python, no Nautilus engine inside: the strategy builds an `EntryIntent` (sized by
strategies/sizing.py) and a `BookState` (equity marks and the open notional per symbol slot), measures
the correlation with `max_directional_correlation`, and calls `RiskGate.review` synchronously. A `Veto`
comes back, or None for "go". The strategy turns a veto into a RiskEvent (`Veto.to_event`) and publishes
it; these classes publish nothing and keep no clock, so a review is deterministic and cheap.

Three layers, run in this order by `RiskGate`:

1. `ModelSupervisor` (source model_supervisor): blocks entries in the direction that dominates the recent
   signals (more than max_share of the last `window` non-flat signals). In observe mode it only records
   what it would have blocked.
2. `SafetyGovernor` (source safety_governor): the judgment in front of the limits. It vetoes early and
   with a safety margin (drawdown_near: at 80% of a drawdown limit, not at the limit), adds conditions
   that are not limits at all (minimum confidence, volatility), and says in plain words why, before an
   intent ever reaches a hard limit. It is the layer a user tunes.
3. `RiskGuard` (source risk_guard): the hard limits of the profile, in tiers: systemic (daily / weekly
   drawdown, emergency brake from the peak), position (margin, leverage), portfolio (gross exposure,
   open positions, correlation). It repeats some of the governor's checks on purpose: the limits must
   hold even when the governor is tuned loose, switched off or bypassed by a future caller.

The two layers share the computations (`drawdowns`, `gross_exposure`, `exposure_headroom`,
`margin_breach`, `above` / `below` / `reached`), so a limit means exactly the same thing in both.

Comparisons: a value exactly at a limit is at the limit, not past it (margin == max_position_usd
passes; a drawdown == daily_drawdown vetoes, as "reached"). Limits are compared with a relative tolerance
of 1e-9, so that a number computed to equal the limit (0.8 * 15%, a margin clamped to the maximum) counts
as equal. A NaN in any measured quantity fails closed (vetoes), except `correlation`, where NaN means
"no open position, or too little common history to measure" and passes.
"""

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from actors.returns_window import ReturnsWindow
from actors.risk_profile import RiskProfile, SupervisorSettings

ENTRY_DIRECTIONS = ("LONG", "SHORT")
_REL_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class EntryIntent:
    """One entry the strategy wants to make. `slot` is the symbol's index in the ReturnsWindow and in
    `BookState.open_notional`; `atr_ratio` is ATR(14) / price at the bar; `ts` in UNIX nanoseconds."""

    symbol: str
    slot: int
    direction: str
    confidence: float
    price: float
    atr_ratio: float
    margin: float
    notional: float
    leverage: float
    ts: int

    def __post_init__(self):
        if self.direction not in ENTRY_DIRECTIONS:
            raise ValueError(f"entry direction must be LONG or SHORT, got {self.direction!r}")


@dataclass(frozen=True, slots=True)
class BookState:
    """The account as the gates see it. `open_notional`: slot -> signed notional in USD of each open
    position (+ long, - short); a zero entry is not a position."""

    equity: float
    day_start_equity: float
    week_start_equity: float
    peak_equity: float
    open_notional: dict[int, float]


@dataclass(frozen=True, slots=True)
class Veto:
    """Why an entry may not happen; the fields of a RiskEvent except the symbol (the intent has it)."""

    source: str
    action: str
    code: str
    reason: str
    value: float
    limit: float

    def to_event(self, symbol: str, ts_event: int, ts_init: int | None = None, trace_id: str = ""):
        """This veto as a RiskEvent for the message bus; `trace_id`: the refused decision's."""
        from quantum_trader.events import RiskEvent

        return RiskEvent(
            source=self.source,
            action=self.action,
            code=self.code,
            reason=self.reason,
            symbol=symbol,
            value=float(self.value),
            limit=float(self.limit),
            ts_event=ts_event,
            ts_init=ts_event if ts_init is None else ts_init,
            trace_id=trace_id,
        )


# ---- shared computations -------------------------------------------------------------------------------


def _tol(limit: float) -> float:
    return _REL_TOL * max(1.0, abs(limit))


def above(value: float, limit: float) -> bool:
    """value is past an upper limit (equal is not past). NaN fails closed (True)."""
    return not (value <= limit + _tol(limit))


def below(value: float, limit: float) -> bool:
    """value is short of a lower limit (equal is not short). NaN fails closed (True)."""
    return not (value >= limit - _tol(limit))


def reached(value: float, limit: float) -> bool:
    """value is at or past an upper limit. NaN fails closed (True)."""
    return not (value < limit - _tol(limit))


def drawdown(reference: float, equity: float) -> float:
    """Fractional loss of `equity` from `reference` (0.15 = 15% down); NaN when reference is not positive."""
    if not reference > 0:
        return math.nan
    return (reference - equity) / reference


@dataclass(frozen=True, slots=True)
class Drawdowns:
    daily: float
    weekly: float
    from_peak: float


def drawdowns(book: BookState) -> Drawdowns:
    eq = book.equity
    return Drawdowns(
        drawdown(book.day_start_equity, eq),
        drawdown(book.week_start_equity, eq),
        drawdown(book.peak_equity, eq),
    )


def gross_exposure(book: BookState) -> float:
    """Sum of |notional| of the open positions, USD."""
    return sum(abs(v) for v in book.open_notional.values())


def open_positions(book: BookState) -> int:
    return sum(1 for v in book.open_notional.values() if v != 0)


def exposure_headroom(book: BookState, profile: RiskProfile) -> float:
    """New notional (USD) that still fits under max_total_exposure x equity; negative when already over."""
    return profile.max_total_exposure * book.equity - gross_exposure(book)


def margin_breach(margin: float, profile: RiskProfile) -> tuple[str, float] | None:
    """("max", limit) / ("min", limit) when the margin is outside the position limits, else None."""
    if above(margin, profile.max_position_usd):
        return "max", profile.max_position_usd
    if below(margin, profile.min_position_usd):
        return "min", profile.min_position_usd
    return None


def max_directional_correlation(
    window: ReturnsWindow, slot: int, direction: str, open_notional: dict[int, float]
) -> float:
    """The largest direction-adjusted correlation of the candidate with any open position.

    corr * +1 for an open position in the same direction, * -1 for one in the opposite direction, so a
    hedge (short a coin that moves with an open long) is not penalised. The candidate's own slot and zero
    entries are skipped. Pairs without enough common history (NaN) are not held against the entry. NaN
    when nothing is left to compare with.
    """
    long = direction == "LONG"
    others = []
    signs = []
    for s, v in open_notional.items():
        if v != 0 and s != slot:
            others.append(s)
            signs.append(1.0 if (v > 0) == long else -1.0)
    if not others:
        return math.nan
    adjusted = window.correlations(slot, np.asarray(others, dtype=np.int64)) * np.asarray(signs)
    if np.isnan(adjusted).all():
        return math.nan
    return float(np.nanmax(adjusted))


def _usd(x: float) -> str:
    return f"{x:,.2f} USD"


# ---- the layers ----------------------------------------------------------------------------------------


class RiskGuard:
    """The hard limits of the profile. Order: systemic, position, portfolio tier."""

    source = "risk_guard"

    def __init__(self, profile: RiskProfile):
        self.profile = profile

    def _veto(self, code: str, reason: str, value: float, limit: float) -> Veto:
        return Veto(self.source, "veto", code, reason, float(value), float(limit))

    def check(self, intent: EntryIntent, book: BookState, correlation: float) -> Veto | None:
        return (
            self.check_systemic(book)
            or self.check_position(intent)
            or self.check_portfolio(intent, book, correlation)
        )

    def check_systemic(self, book: BookState) -> Veto | None:
        p = self.profile
        dd = drawdowns(book)
        if reached(dd.daily, p.daily_drawdown):
            return self._veto(
                "daily_drawdown",
                f"daily drawdown {dd.daily:.1%} reached the {p.daily_drawdown:.1%} limit "
                f"(equity {_usd(book.equity)}, {_usd(book.day_start_equity)} at the start of the day)",
                dd.daily,
                p.daily_drawdown,
            )
        if reached(dd.weekly, p.weekly_drawdown):
            return self._veto(
                "weekly_drawdown",
                f"weekly drawdown {dd.weekly:.1%} reached the {p.weekly_drawdown:.1%} limit "
                f"(equity {_usd(book.equity)}, {_usd(book.week_start_equity)} at the start of the week)",
                dd.weekly,
                p.weekly_drawdown,
            )
        if reached(dd.from_peak, p.emergency_brake):
            return self._veto(
                "emergency_brake",
                f"drawdown from the peak {dd.from_peak:.1%} reached the {p.emergency_brake:.1%} emergency "
                f"brake (equity {_usd(book.equity)}, peak {_usd(book.peak_equity)})",
                dd.from_peak,
                p.emergency_brake,
            )
        return None

    def check_position(self, intent: EntryIntent) -> Veto | None:
        p = self.profile
        breach = margin_breach(intent.margin, p)
        if breach is not None:
            side, limit = breach
            word = "above the maximum" if side == "max" else "below the minimum"
            return self._veto(
                f"margin_{side}",
                f"margin {_usd(intent.margin)} {word} of {_usd(limit)} per position",
                intent.margin,
                limit,
            )
        if above(intent.leverage, p.max_leverage):
            return self._veto(
                "leverage",
                f"leverage {intent.leverage:g}x above the maximum of {p.max_leverage:g}x",
                intent.leverage,
                p.max_leverage,
            )
        return None

    def check_portfolio(self, intent: EntryIntent, book: BookState, correlation: float) -> Veto | None:
        p = self.profile
        new = abs(intent.notional)
        if above(new, exposure_headroom(book, p)):
            gross = gross_exposure(book)
            ratio = (gross + new) / book.equity if book.equity > 0 else math.inf
            return self._veto(
                "exposure",
                f"exposure after this entry {ratio:.2f}x equity above the {p.max_total_exposure:.2f}x limit "
                f"({_usd(gross)} open + {_usd(new)} new on equity {_usd(book.equity)})",
                ratio,
                p.max_total_exposure,
            )
        n_open = open_positions(book)
        if n_open >= p.max_positions:
            return self._veto(
                "positions",
                f"{n_open} positions open, the maximum is {p.max_positions}",
                n_open,
                p.max_positions,
            )
        if correlation == correlation and above(correlation, p.max_correlation):
            return self._veto(
                "correlation",
                f"correlation {correlation:.2f} with an open position above the {p.max_correlation:.2f} limit",
                correlation,
                p.max_correlation,
            )
        return None


class SafetyGovernor:
    """The judgment in front of the limits: confidence, size, correlation, drawdown_near, volatility."""

    source = "safety_governor"

    def __init__(self, profile: RiskProfile):
        self.profile = profile

    def _veto(self, code: str, reason: str, value: float, limit: float) -> Veto:
        return Veto(self.source, "veto", code, reason, float(value), float(limit))

    def check(self, intent: EntryIntent, book: BookState, correlation: float) -> Veto | None:
        p = self.profile
        if below(intent.confidence, p.min_confidence):
            return self._veto(
                "confidence",
                f"confidence {intent.confidence:.2f} below {p.min_confidence:.2f}",
                intent.confidence,
                p.min_confidence,
            )
        breach = margin_breach(intent.margin, p)
        if breach is not None:
            side, limit = breach
            word = "above the maximum" if side == "max" else "below the minimum"
            return self._veto(
                "size",
                f"margin {_usd(intent.margin)} {word} of {_usd(limit)} per position",
                intent.margin,
                limit,
            )
        headroom = exposure_headroom(book, p)
        if above(abs(intent.notional), headroom):
            return self._veto(
                "size",
                f"notional {_usd(abs(intent.notional))} exceeds the {_usd(max(headroom, 0.0))} of exposure "
                f"headroom left ({p.max_total_exposure:.2f}x equity {_usd(book.equity)}, "
                f"{_usd(gross_exposure(book))} open)",
                abs(intent.notional),
                headroom,
            )
        if correlation == correlation and above(correlation, p.max_correlation):
            return self._veto(
                "correlation",
                f"correlation {correlation:.2f} with an open position above {p.max_correlation:.2f}",
                correlation,
                p.max_correlation,
            )
        dd = drawdowns(book)
        for name, value, limit in (
            ("daily", dd.daily, p.daily_drawdown),
            ("weekly", dd.weekly, p.weekly_drawdown),
        ):
            near = p.drawdown_near * limit
            if reached(value, near):
                return self._veto(
                    "drawdown_near",
                    f"{name} drawdown {value:.1%} is near its {limit:.1%} limit "
                    f"(no new entries from {near:.1%}, {p.drawdown_near:.0%} of the limit)",
                    value,
                    near,
                )
        if above(intent.atr_ratio, p.max_volatility):
            reason = (
                f"volatility (ATR/price) {intent.atr_ratio:.2%} above {p.max_volatility:.2%}"
                if intent.atr_ratio == intent.atr_ratio
                else f"volatility (ATR/price) not known yet; no entry without it (limit {p.max_volatility:.2%})"
            )
            return self._veto("volatility", reason, intent.atr_ratio, p.max_volatility)
        return None


class ModelSupervisor:
    """Blocks entries in the direction that dominates the recent signals.

    `observe` every signal the strategy emits, traded or not (FLAT is ignored). Once `window` non-flat
    signals are in, `check` blocks an intent whose direction holds MORE than `max_share` of them. In
    observe mode nothing is blocked; the would-be block is appended to `observed` (action "alert"), which
    the caller publishes and empties with `pop_observed`.
    """

    source = "model_supervisor"

    def __init__(self, settings: SupervisorSettings):
        self.settings = settings
        self._recent: deque[bool] = deque(maxlen=settings.window)  # True = LONG
        self._longs = 0
        self.observed: list[Veto] = []

    def observe(self, direction: str) -> None:
        if direction == "FLAT":
            return
        if direction not in ENTRY_DIRECTIONS:
            raise ValueError(f"signal direction must be LONG, SHORT or FLAT, got {direction!r}")
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._longs -= 1
        is_long = direction == "LONG"
        recent.append(is_long)
        self._longs += is_long

    def count(self, direction: str) -> int:
        """How many of the recent non-flat signals point `direction`."""
        return self._longs if direction == "LONG" else len(self._recent) - self._longs

    def check(self, intent: EntryIntent) -> Veto | None:
        window = self.settings.window
        if len(self._recent) < window:
            return None
        count = self.count(intent.direction)
        share = count / window
        limit = self.settings.max_share
        if not above(share, limit):
            return None
        enforce = self.settings.mode == "enforce"
        veto = Veto(
            self.source,
            "block" if enforce else "alert",
            "dominant_direction",
            f"{count} of the last {window} signals are {intent.direction} ({share:.0%}), more than the "
            f"{limit:.0%} allowed" + ("" if enforce else " (observe mode: not blocked)"),
            share,
            limit,
        )
        if enforce:
            return veto
        self.observed.append(veto)
        return None

    def pop_observed(self) -> list[Veto]:
        out, self.observed = self.observed, []
        return out


class RiskGate:
    """Runs the supervisor, the governor and the guard in that order; the first veto wins.

    `counts[(source, code)]` counts the vetoes returned; `reviewed` and `approved` count the reviews.
    """

    def __init__(self, profile: RiskProfile):
        self.profile = profile
        self.supervisor = ModelSupervisor(profile.supervisor)
        self.governor = SafetyGovernor(profile)
        self.guard = RiskGuard(profile)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.reviewed = 0
        self.approved = 0

    def observe(self, direction: str) -> None:
        """Feed one emitted signal's direction to the supervisor."""
        self.supervisor.observe(direction)

    def review(self, intent: EntryIntent, book: BookState, correlation: float) -> Veto | None:
        self.reviewed += 1
        veto = (
            self.supervisor.check(intent)
            or self.governor.check(intent, book, correlation)
            or self.guard.check(intent, book, correlation)
        )
        if veto is None:
            self.approved += 1
        else:
            self.counts[(veto.source, veto.code)] += 1
        return veto

"""Position sizing: how much margin one entry puts up and at what leverage (SPEC section 6).

    base             = equity * risk_per_trade
    requested_margin = base * (1 + (confidence - confidence_pivot) * 2) * rl_adjustment
    margin           = clamp(requested_margin, min_position_usd, max_position_usd)
    leverage         = clamp(account_leverage, 1, max_leverage)
    notional         = margin * leverage

Every number comes from the RiskProfile. The function is pure and cheap: a strategy calls it on every entry
intent, before the risk gates (actors/risk_gates.py) review the result.

Decisions:
- No position (margin 0, notional 0) when the inputs cannot be sized: equity <= 0, or any of equity,
  confidence, account_leverage not finite. `clamped` is "" then; the risk gates veto a zero margin
  (it is below min_position_usd), so a bad input never turns into an order.
- No position either when the formula itself asks for none (requested_margin <= 0, i.e. a confidence
  more than 0.5 below the pivot): the minimum clamp raises a small request, it does not turn "no trade"
  into a trade.
- The minimum clamp is applied as the SPEC says, even when it raises the margin above what
  risk_per_trade asked for (a small account); `clamped == "min"` says so. Whether that margin fits the
  free balance is the strategy's margin check (strategies/base.py), not sizing's.
"""

import math
from dataclasses import dataclass

from actors.risk_profile import RiskProfile


@dataclass(frozen=True, slots=True)
class Sizing:
    """`margin` in USD after the clamp, `notional` = margin * leverage, `requested_margin` the formula's
    value before the clamp, `clamped` "" (inside the limits), "min" or "max" (raised / cut to that limit)."""

    margin: float
    notional: float
    leverage: float
    requested_margin: float
    clamped: str


def clamp_leverage(account_leverage: float, profile: RiskProfile) -> float:
    """The account's leverage held to [1, max_leverage]; 1 when it is not a finite number."""
    if not math.isfinite(account_leverage):
        return 1.0
    return float(min(max(account_leverage, 1.0), profile.max_leverage))


def position_size(
    equity: float,
    confidence: float,
    profile: RiskProfile,
    account_leverage: float,
    rl_adjustment: float | None = None,
) -> Sizing:
    """`rl_adjustment`: the RL sizer's multiplier for this entry (ml/rl), in place of the profile's."""
    leverage = clamp_leverage(account_leverage, profile)
    if not (math.isfinite(equity) and math.isfinite(confidence) and math.isfinite(account_leverage)):
        return Sizing(0.0, 0.0, leverage, 0.0, "")
    if equity <= 0:
        return Sizing(0.0, 0.0, leverage, 0.0, "")
    base = equity * profile.risk_per_trade
    adjustment = profile.rl_adjustment if rl_adjustment is None else rl_adjustment
    requested = base * (1.0 + (confidence - profile.confidence_pivot) * 2.0) * adjustment
    if requested <= 0:
        return Sizing(0.0, 0.0, leverage, requested, "")
    if requested < profile.min_position_usd:
        margin, clamped = profile.min_position_usd, "min"
    elif requested > profile.max_position_usd:
        margin, clamped = profile.max_position_usd, "max"
    else:
        margin, clamped = requested, ""
    return Sizing(margin, margin * leverage, leverage, requested, clamped)

"""A risk profile: every limit of the risk layer in one typed, validated object (SPEC section 6).

Profiles live in `configs/risk/<name>.yaml` (conservative, moderate, aggressive); a backtest or node config
names one with `risk_profile:`. The defaults below are the moderate profile.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from quantum_trader.config import StrictModel, profile_from

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "risk"


class SupervisorSettings(StrictModel):
    """Model Supervisor: entries in a direction that dominates the recent signals are blocked."""

    window: int = Field(20, ge=2, description="the last N non-flat signals")
    max_share: float = Field(0.70, gt=0.5, le=1.0, description="block when MORE than this share agree")
    mode: Literal["enforce", "observe"] = "enforce"


class EmergencySettings(StrictModel):
    """Emergency Stop System: when it trips and what it does then."""

    max_consecutive_errors: int = Field(5, ge=1, description="trips when MORE than this many in a row")
    feed_stale_seconds: float = Field(300.0, gt=0)
    check_interval_seconds: float = Field(
        300.0,
        gt=0,
        description="on the UTC grid of this interval: a multiple of the bar interval keeps fills",
    )
    actions: list[Literal["halt", "close_losing", "reduce_exposure", "alert"]] = Field(
        default_factory=lambda: ["halt", "close_losing", "reduce_exposure", "alert"]
    )
    reduce_fraction: float = Field(0.5, gt=0, le=1.0)


class RiskProfile(StrictModel):
    name: str = "moderate"
    # sizing: margin = equity * risk_per_trade * (1 + (confidence - 0.70) * 2) * rl_adjustment
    risk_per_trade: float = Field(0.02, ge=0.01, le=0.05)
    confidence_pivot: float = Field(0.70, ge=0, le=1)
    rl_adjustment: float = Field(1.0, gt=0, le=2.0)
    # position tier
    min_position_usd: float = Field(100.0, gt=0, description="minimum margin per position")
    max_position_usd: float = Field(2000.0, gt=0, description="maximum margin per position")
    max_leverage: float = Field(20.0, ge=1, le=30)
    # portfolio tier
    max_total_exposure: float = Field(2.0, gt=0, description="gross notional / equity")
    max_positions: int = Field(15, ge=1)
    max_correlation: float = Field(0.70, gt=0, le=1)
    correlation_window: int = Field(288, ge=10, description="bars of returns (288 x 5m = 1 day)")
    # systemic tier
    daily_drawdown: float = Field(0.15, gt=0, lt=1)
    weekly_drawdown: float = Field(0.25, gt=0, lt=1)
    emergency_brake: float = Field(0.20, gt=0, lt=1, description="drawdown from the peak that trips the ESS")
    # Safety Governor
    entry_confidence: float = Field(0.70, ge=0, le=1, description="the strategy's entry threshold")
    min_confidence: float = Field(0.60, ge=0, le=1, description="the governor vetoes below this")
    drawdown_near: float = Field(0.8, gt=0, le=1, description="veto at this fraction of a drawdown limit")
    max_volatility: float = Field(0.02, gt=0, description="ATR(14) / price above this is vetoed")
    supervisor: SupervisorSettings = SupervisorSettings()
    emergency: EmergencySettings = EmergencySettings()

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_position_usd > self.max_position_usd:
            raise ValueError(
                f"min_position_usd {self.min_position_usd} exceeds max_position_usd {self.max_position_usd}"
            )
        if self.min_confidence > self.entry_confidence:
            raise ValueError(
                f"min_confidence {self.min_confidence} exceeds entry_confidence {self.entry_confidence}"
            )
        return self


def load_risk_profile(name_or_path: str) -> RiskProfile:
    return risk_profile_from(name_or_path)


def risk_profile_from(value: str | dict | None, where: str = "risk_profile") -> RiskProfile | None:
    """A config's `risk_profile`: a profile name / path, an inline mapping, or None (no risk layer)."""
    return profile_from(RiskProfile, value, PROFILE_DIR, where)

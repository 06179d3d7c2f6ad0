"""An exit profile: where the Exit Brain puts the stop, the take-profits and the other exits (SPEC section 5).

Profiles live in `configs/exits/<name>.yaml` (default, challenge_100); a backtest or node config names one
with `exit_profile:`.

R is the ATR-based risk unit: `r_atr` x ATR(14) at entry. The initial stop rests `stop_r` R from the entry
price. In DEFAULT the stop is at 1R, so R is exactly the entry-to-initial-stop distance. CHALLENGE_100 asks
for a stop "at most 1.5R" from an ATR-based R; it rests at 1.5R, the most it allows (`max_stop_r`).
Take-profits are at multiples of R and each closes a fraction of the ORIGINAL quantity; the last one closes
whatever is left.
"""

from pathlib import Path

from pydantic import Field, model_validator

from quantum_trader.config import StrictModel, profile_from

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "exits"


class TakeProfit(StrictModel):
    r: float = Field(gt=0, description="distance from entry in R")
    fraction: float = Field(gt=0, le=1, description="share of the original quantity it closes")


class ExitProfile(StrictModel):
    name: str = "default"
    r_atr: float = Field(1.5, gt=0, description="R = r_atr x ATR(14) at entry")
    stop_r: float = Field(1.0, gt=0, description="initial stop distance in R")
    max_stop_r: float = Field(1.5, gt=0)
    take_profits: list[TakeProfit] = Field(default_factory=lambda: [TakeProfit(r=1.5, fraction=1.0)])
    breakeven_after_tp1: bool = False
    trailing_atr: float | None = Field(2.0, gt=0, description="trail the best price by this many ATRs")
    trailing_step_atr: float = Field(
        0.25, gt=0, description="move the resting stop in steps of at least this"
    )
    time_stop_minutes: float | None = Field(None, gt=0)
    liquidation_buffer: float | None = Field(
        None, gt=0, lt=0.5, description="never rest the stop closer than this to the liquidation price"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.stop_r > self.max_stop_r:
            raise ValueError(f"stop_r {self.stop_r} exceeds max_stop_r {self.max_stop_r}")
        if not self.take_profits:
            raise ValueError("take_profits needs at least one level")
        levels = [tp.r for tp in self.take_profits]
        if levels != sorted(levels) or len(set(levels)) != len(levels):
            raise ValueError(f"take_profits must have increasing r levels, got {levels}")
        total = sum(tp.fraction for tp in self.take_profits)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"take_profits fractions must add up to 1, got {total:g}")
        return self


def load_exit_profile(name_or_path: str) -> ExitProfile:
    return exit_profile_from(name_or_path)


def exit_profile_from(value: str | dict | None) -> ExitProfile | None:
    """A strategy config's `exit_profile`: a profile name / path, an inline mapping, or None (no Exit Brain)."""
    return profile_from(ExitProfile, value, PROFILE_DIR, "exit_profile")

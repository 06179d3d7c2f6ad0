"""The sizing agent's observation: one function builds it for training (ml/rl/env.py) and trading
(strategies/rl_sizing.py), so the agent never sees a state built differently from the one it learned on.

Layout (64 float32):
    0-48   the 49 features of ml/features (FEATURE_NAMES order) of the signal's bar
    49     the ensemble's confidence
    50     its direction (+1 LONG, -1 SHORT)
    51-54  each model's vote (MODEL_KINDS order; 0 where the model did not vote)
    55-58  1 where that model voted, else 0
    59     gross open notional / equity (entries sent but not filled count)
    60     unrealised pnl / equity
    61     drawdown from the peak equity (0 at a peak)
    62     equity change since the start of the UTC day
    63     open positions / the risk profile's max_positions

Everything is standardised with statistics of the training observations (`ObsNorm`, saved with the agent),
clipped to +-CLIP, and a missing value (a feature not warmed up) becomes 0, the training mean.
"""

import math
from dataclasses import dataclass

import numpy as np

from ml.features import FEATURE_NAMES, N_FEATURES
from quantum_trader.events import MODEL_KINDS

N_MARKET = N_FEATURES + 2 + 2 * len(MODEL_KINDS)  # features, confidence, direction, votes, vote flags
ACCOUNT_FIELDS = ("exposure", "unrealised", "drawdown", "day_change", "positions")
OBS_DIM = N_MARKET + len(ACCOUNT_FIELDS)
OBS_NAMES = (
    *FEATURE_NAMES,
    "confidence",
    "direction",
    *(f"vote_{k}" for k in MODEL_KINDS),
    *(f"voted_{k}" for k in MODEL_KINDS),
    *ACCOUNT_FIELDS,
)
CLIP = 10.0


@dataclass(frozen=True, slots=True)
class AccountState:
    """The account as the agent sees it, every value relative to the current equity (see the layout)."""

    exposure: float = 0.0
    unrealised: float = 0.0
    drawdown: float = 0.0
    day_change: float = 0.0
    positions: float = 0.0

    @classmethod
    def of(
        cls,
        equity: float,
        gross_notional: float,
        unrealised: float,
        peak: float,
        day_start: float,
        positions: int,
        max_positions: int,
    ) -> "AccountState":
        if not (equity > 0 and math.isfinite(equity)):
            return cls()
        return cls(
            exposure=gross_notional / equity,
            unrealised=unrealised / equity,
            drawdown=max(0.0, 1.0 - equity / peak) if peak > 0 else 0.0,
            day_change=equity / day_start - 1.0 if day_start > 0 else 0.0,
            positions=positions / max(max_positions, 1),
        )


def build_observation(
    features: np.ndarray, confidence: float, direction: int, votes: dict[str, float], account: AccountState
) -> np.ndarray:
    """The raw (not yet standardised) observation of one entry decision."""
    obs = np.empty(OBS_DIM, dtype=np.float32)
    obs[:N_FEATURES] = features
    obs[N_FEATURES] = confidence
    obs[N_FEATURES + 1] = 1.0 if direction > 0 else -1.0
    base = N_FEATURES + 2
    for j, kind in enumerate(MODEL_KINDS):
        vote = votes.get(kind, math.nan)
        voted = vote == vote  # NaN: the model is not in the ensemble
        obs[base + j] = vote if voted else 0.0
        obs[base + len(MODEL_KINDS) + j] = 1.0 if voted else 0.0
    obs[N_MARKET:] = [getattr(account, name) for name in ACCOUNT_FIELDS]
    return obs


@dataclass(frozen=True)
class ObsNorm:
    """Per-dimension mean and std of the training observations; the account part is left as it is (its
    values are already fractions of equity)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, market: np.ndarray) -> "ObsNorm":
        """From raw observations' market part (rows x N_MARKET, NaN allowed)."""
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(market, axis=0)) if len(market) else np.zeros(N_MARKET)
            std = np.nan_to_num(np.nanstd(market, axis=0)) if len(market) else np.ones(N_MARKET)
        std = np.where(std > 1e-8, std, 1.0)
        return cls(
            np.concatenate([mean, np.zeros(len(ACCOUNT_FIELDS))]).astype(np.float32),
            np.concatenate([std, np.ones(len(ACCOUNT_FIELDS))]).astype(np.float32),
        )

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        z = (raw - self.mean) / self.std
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP).astype(np.float32)

    def to_json(self) -> dict:
        return {"names": list(OBS_NAMES), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "ObsNorm":
        if list(d.get("names", [])) != list(OBS_NAMES):
            raise ValueError("the agent was trained on another observation layout; retrain it")
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))

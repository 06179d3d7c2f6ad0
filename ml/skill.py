"""Whether a model learned anything: the one rule that decides whether it may vote or be promoted.

A model is usable only when, on its validation split,

* its forecasts are not constant: their standard deviation is above MIN_PRED_STD (in log-return units), and
* it beats the zero-return forecast: its MSE against the realised forward log returns is strictly below
  the zero forecast's MSE (the mean squared label).

Every kind (XGBoost, LightGBM, N-HiTS, PatchTST) is held to it alike. Training records the evidence in the
model's meta.json (`skill`), and every gate reads it back through `verdict`: the registry refuses to promote
(or roll back to) a model that fails, the ensemble leaves it out of the vote, `qt models list/show` flag it.
A model registered without that record has shown nothing and fails too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# Far below any tick (1e-4 bp): a spread this small is float noise around one value, not a forecast.
MIN_PRED_STD = 1e-8
HEALTHY, CONSTANT, NO_SKILL = "healthy", "constant", "no-skill"


class Verdict(NamedTuple):
    status: str  # healthy | constant | no-skill
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.status == HEALTHY

    def __str__(self) -> str:
        return self.status if self.reason is None else f"{self.status} ({self.reason})"


def assess(pred: np.ndarray, labels: np.ndarray) -> dict:
    """The validation evidence the rule reads, with its verdict: what meta.json stores as `skill`."""
    pred = np.asarray(pred, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    nan = float("nan")
    record = {
        "rule": "validation MSE strictly below the zero forecast's, and forecast std above MIN_PRED_STD",
        "rows": len(labels),
        "mse": float(np.mean((pred - labels) ** 2)) if len(labels) else nan,
        "zero_mse": float(np.mean(labels**2)) if len(labels) else nan,
        "pred_std": float(np.std(pred)) if len(pred) else nan,
        "min_pred_std": MIN_PRED_STD,
    }
    found = verdict(record)
    return record | {"status": found.status, "reason": found.reason}


def verdict(skill: dict | None) -> Verdict:
    """Apply the rule to a stored `skill` record (None: the model never showed any)."""
    if not skill:
        return Verdict(NO_SKILL, "no validation record of skill was registered with it; retrain it")
    mse, zero, std = (_number(skill.get(key)) for key in ("mse", "zero_mse", "pred_std"))
    if not all(math.isfinite(x) for x in (mse, zero, std)):
        return Verdict(NO_SKILL, "its validation forecasts or their scores are not finite")
    if not std > MIN_PRED_STD:
        return Verdict(CONSTANT, f"validation forecast std {std:.3g} <= {MIN_PRED_STD:g}: it learned nothing")
    if not mse < zero:
        return Verdict(NO_SKILL, f"validation MSE {mse:.6g} is not below the zero forecast's {zero:.6g}")
    return Verdict(HEALTHY)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


__all__ = ["CONSTANT", "HEALTHY", "MIN_PRED_STD", "NO_SKILL", "Verdict", "assess", "verdict"]

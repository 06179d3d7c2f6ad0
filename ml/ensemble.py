"""The weighted vote of the available forecasters: direction and confidence from raw feature windows.

The mapping from forecasts to a decision, calibrated on validation data:

1. Each model forecasts the forward log return. Its *vote* is that forecast's distance from the model's
   mean validation forecast, in units of the spread of its validation forecasts (`pred_mean`, `pred_std`,
   stored with the model at training), clipped to +-4. This puts models with different output scales
   (trees hug zero, nets less so) on one footing, and keeps a model's constant offset (e.g. the drift of
   its training period, or a tree that stopped after a round or two) from reading as a strong vote.
2. A vote becomes a probability of an up move, p = Phi(vote) (standard normal CDF): a vote of 0 says 0.5,
   a vote one validation spread up says 0.84.
3. The ensemble's `prob_up` is the weighted mean of those p, weights from config and renormalised over the
   models that are actually loaded and usable: a model that failed to load, or that fails ml.skill's rule
   (constant, or not beating the zero forecast on validation), is left out with a warning, never a crash.
   The vote is scale-free, so a model trained on a vol-scaled target (ml.dataset.make_target; its unit is
   its own expected spread, not a log return) votes on the same footing; a demeaned target's vote says
   "better / worse than the average symbol", still positive for LONG. The target is in meta.json's label.
4. confidence = |2 * prob_up - 1|, in [0, 1]. direction = LONG above 0.5, SHORT below, FLAT when the
   confidence is under `flat_below`. With every model agreeing at one validation spread, confidence is
   0.68; the default entry threshold 0.70 therefore asks for agreement on a forecast in about the top
   15% of each model's own range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from ml.models.base import ForecastModel
from ml.skill import verdict

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"xgboost": 0.25, "lightgbm": 0.25, "nhits": 0.30, "patchtst": 0.20}
VOTE_CLIP = 4.0
LONG, FLAT, SHORT = 1, 0, -1
DIRECTION_NAMES = {LONG: "LONG", FLAT: "FLAT", SHORT: "SHORT"}


class EnsembleError(RuntimeError):
    """No usable model: the ensemble refuses to start."""

    def __init__(self, message: str, missing: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.missing = dict(missing or {})  # kind -> why it was left out


@dataclass
class Member:
    kind: str
    model_id: str
    model: ForecastModel
    weight: float
    pred_std: float  # spread of this model's validation forecasts
    pred_mean: float = 0.0  # their mean
    skill: dict | None = None  # ml.skill.assess() of its validation forecasts; None never votes


@dataclass
class Votes:
    forecasts: np.ndarray  # (batch, members) forward log return forecasts
    votes: np.ndarray  # (batch, members) forecast / pred_std, clipped
    prob_up: np.ndarray  # (batch,)
    forecast: np.ndarray  # (batch,) weighted mean forecast
    confidence: np.ndarray  # (batch,)
    direction: np.ndarray  # (batch,) int8: 1 LONG, 0 FLAT, -1 SHORT


@dataclass
class Ensemble:
    members: list[Member]
    missing: dict[str, str] = field(default_factory=dict)  # kind -> why it is not in the ensemble
    flat_below: float = 0.0

    def __post_init__(self) -> None:
        for m in list(self.members):
            found = verdict(m.skill)
            if not found.usable:  # its vote would be noise (or a drift) diluting, or outvoting, the others
                self.missing[m.kind] = f"{m.model_id}: {found}"
                self.members.remove(m)
        if not self.members:
            reasons = "; ".join(f"{k}: {why}" for k, why in self.missing.items()) or "none configured"
            raise EnsembleError(f"no usable model, refusing to start ({reasons})", self.missing)
        total = sum(m.weight for m in self.members)
        if total <= 0:
            raise EnsembleError("ensemble weights of the loaded models sum to zero")
        self.weights = np.array([m.weight / total for m in self.members])
        self.scales = np.array([m.pred_std for m in self.members])
        self.centres = np.array([m.pred_mean for m in self.members])
        if self.missing:
            log.warning(
                "reduced model count: %d of %d models, weights renormalised to %s (missing: %s)",
                len(self.members),
                len(self.members) + len(self.missing),
                {m.kind: round(w, 4) for m, w in zip(self.members, self.weights, strict=True)},
                self.missing,
            )

    @property
    def lookback(self) -> int:
        return max(m.model.lookback for m in self.members)

    @property
    def kinds(self) -> list[str]:
        return [m.kind for m in self.members]

    @property
    def model_ids(self) -> str:
        return ",".join(m.model_id for m in self.members)

    def vote(self, windows: np.ndarray) -> Votes:
        """Score a batch of raw feature windows (batch, >= lookback, N_FEATURES), one call per model."""
        forecasts = np.column_stack([m.model.predict(windows) for m in self.members])
        return self.combine(forecasts)

    def combine(self, forecasts: np.ndarray) -> Votes:
        votes = np.clip((forecasts - self.centres) / self.scales, -VOTE_CLIP, VOTE_CLIP)
        prob = ndtr(votes)
        prob_up = _weighted_sum(prob, self.weights)
        confidence = np.abs(2.0 * prob_up - 1.0)
        direction = np.where(prob_up > 0.5, LONG, np.where(prob_up < 0.5, SHORT, FLAT)).astype(np.int8)
        direction[confidence < self.flat_below] = FLAT
        return Votes(forecasts, votes, prob_up, _weighted_sum(forecasts, self.weights), confidence, direction)


def _weighted_sum(columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row's weighted sum, added column by column in member order. Not `@`: a BLAS product chooses its
    summation order by the batch's size and the CPU, and a row must come out the same in any batch."""
    total = columns[:, 0] * weights[0]
    for j in range(1, len(weights)):
        total = total + columns[:, j] * weights[j]
    return total


def load_ensemble(
    registry_root: str, refs: tuple[str, ...] | list[str], weights: dict[str, float], flat_below: float = 0.0
) -> Ensemble:
    """Load each referenced model (`kind:production` or a version id) from the registry.

    A model that is missing, fails its checks or fails ml.skill's rule is left out with the reason; the rest
    are renormalised.
    """
    from ml.registry import ModelRegistry

    registry = ModelRegistry(registry_root)
    members, missing, targets = [], {}, {}
    for ref in refs:
        kind = ref.split(":")[0].split("-")[0]
        try:
            model, record = registry.load(ref)
        except Exception as err:  # any failure to load degrades the ensemble, it never crashes it
            missing[kind] = f"{ref}: {err}"
            log.warning("model %s left out of the ensemble: %s", ref, err)
            continue
        weight = weights.get(record.kind, 0.0)
        if weight <= 0:
            missing[record.kind] = f"{ref}: weight is 0"
            continue
        training = record.meta.get("training", {})
        targets[record.kind] = (record.meta.get("label") or {}).get("target", "raw")
        members.append(
            Member(
                record.kind,
                record.id,
                model,
                weight,
                float(training.get("pred_std", 0.0)),
                float(training.get("pred_mean", 0.0)),
                record.meta.get("skill"),
            )
        )
    if len(set(targets.values())) > 1:  # votes stay comparable (each in its own spread), meanings do not
        log.warning("ensemble members learned different targets %s: the vote mixes their meanings", targets)
    return Ensemble(members, missing, flat_below)

"""The one small interface every forecaster implements: fit, predict on a batch, save, load.

Inputs are always *windows of raw feature rows*: an array (batch, length, N_FEATURES) of float32, oldest
row first, the newest row (the bar being scored) last. Tabular models (trees) read only the newest row;
sequence models read the last `lookback` rows. Each model owns whatever scaling it needs and fits it on
the training set only, so a saved model is self-contained: the same raw windows in, the same forecast out.

The forecast is the forward log return over the dataset's horizon: ln(close[t + h] / close[t]).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ml.dataset import WindowSet

# progress(done, total, message): long fits report through this; None means silent.
Progress = Callable[[int, int, str], None] | None


@dataclass
class FitReport:
    """What a fit did: the validation loss curve and where it stopped (for the registry's metadata)."""

    best_iteration: int
    val_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


class ModelLoadError(RuntimeError):
    """A saved model that cannot be used: missing files, bad checksum, wrong feature set, corrupt weights."""


class ForecastModel(ABC):
    kind: ClassVar[str]  # "xgboost" | "lightgbm" | "nhits" | "patchtst"
    lookback: int = 1  # rows of each window the model reads (newest last)
    # Whether a window's forecast is the same whatever else is in its batch, on every CPU. A float32 matrix
    # product is not: BLAS picks its kernel (and summation order) by the matrix's shape and the CPU, so a
    # network's forecast for one window can move in the 7th digit with the batch around it. The research
    # path (ml/research.py) gives such models exactly the batches the strategy gives them.
    batch_invariant: ClassVar[bool] = False

    @abstractmethod
    def fit(self, train: WindowSet, val: WindowSet, progress: Progress = None) -> FitReport:
        """Train on `train`, early-stop on `val`. Deterministic for a given seed (CPU)."""

    @abstractmethod
    def predict(self, windows: np.ndarray) -> np.ndarray:
        """(batch, length >= lookback, N_FEATURES) float32 raw features -> (batch,) float64 forecasts."""

    @abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the model's files (native formats or a torch state_dict + JSON; never pickle) into
        `directory`; return their names relative to it."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> ForecastModel:
        """Inverse of save. Raise ModelLoadError with the file's name when a file is missing or corrupt."""

    def params(self) -> dict:
        """Hyper-parameters, JSON-serialisable, recorded in the registry."""
        return {}


def read_model_json(path: Path, kind: str) -> dict:
    """A saved model's JSON description, refused with the file's name when missing, corrupt or of another kind."""
    if not path.is_file():
        raise ModelLoadError(f"{path.name} missing in {path.parent}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path.name} in {path.parent} is corrupt: {err}") from err
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else None
        raise ModelLoadError(f"{path.name} in {path.parent}: expected a {kind} model, found {found!r}")
    return meta

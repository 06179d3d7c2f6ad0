"""Shared torch plumbing for the sequence forecasters (N-HiTS, PatchTST): device, scaling, training, I/O.

Every network here maps a window of *scaled* feature rows, shape (batch, lookback, channels), to the
*scaled* horizon path of cumulative forward log returns, shape (batch, horizon): step j is
ln(close[t+j] / close[t]) / target_scale. It is trained on the whole path (more signal per window than the
label alone); the forecast is the last step, which is the label, times `target_scale`.

Scaling is fitted on the training set only and saved with the weights:
  * features: per-feature mean/std over the training anchors' own rows; standardized values are clipped
    to +-CLIP and non-finite values become 0, so one outlier bar cannot blow up a window;
  * target (`target_scaling`): "std", the standard deviation of the finite training labels, or "mad",
    a robust one: 1.4826 x their median absolute deviation (the std of a normal sample; falls back to
    the std, then 1.0, when the MAD is ~0). Why a robust option: 5-minute crypto returns are extremely
    heavy-tailed. On the real training set (Aug-Nov 2025) the 12-bar labels have a kurtosis of ~2,900,
    the ten largest (the 2025-10-10 crash) carry 44% of the sum of squared labels, and the std is 3.3x
    the MAD estimate: a std-scaled typical label is ~0.3, so a loss of "about 1" is mostly the crash.

Training targets: the scaled horizon paths, optionally clipped elementwise at +-`target_clip` (in
target-scale units; None = no clipping), so a handful of crash samples cannot dominate the gradient.
Only the *training* targets are clipped: validation and test always score the raw labels (except the
"clipped_mse" criterion below, which clips the validation label the same way, by design).

Training: AdamW on shuffled mini-batches (numpy rng seeded by `seed`), MSE, MAE or Huber (`huber_delta`,
in target-scale units) loss on the scaled path, gradient-norm clipping, early stopping on a validation
criterion with `patience`, best weights restored, bounded by `max_epochs` and an optional `max_seconds`
budget. `early_stopping` picks the criterion, always lower-is-better, and its values per epoch are what
`FitReport.val_loss` holds:
  * "mse": the MSE of the scaled *label* (the quantity that is traded on); the zero forecast scores
    mean((y/target_scale)^2), about 1 with the "std" scale;
  * "clipped_mse": the same with the scaled label clipped at +-`target_clip` (needs a `target_clip`),
    so a few outliers in the validation split cannot decide which epoch is kept;
  * "rank_ic": MINUS the Spearman rank correlation of the forecast with the label (val_loss -0.03
    means a rank IC of +0.03). The constant zero forecast has IC 0, so a kept epoch has IC > 0. Rank IC
    ignores the outliers and the forecast's scale and offset, like the ensemble's vote (ml.ensemble),
    but it is a weaker guard: on pure noise some epoch's validation IC is > 0 by chance more often than
    not, so an IC-stopped fit falls back to the zero forecast less often than an MSE-stopped one.
The defaults are the original behaviour (std scale, no clip, MSE stopping) for both nets: the robust
options gave only noise-level test ICs on the real data (ml.models.patchtst says what was tried).
Both networks' output layers are zero-initialised, so training starts from the zero forecast; it counts
as epoch 0 for early stopping (its criterion value is the baseline; it is not in `val_loss`), an epoch is
kept only when it beats the best so far by more than MIN_IMPROVEMENT, and `best_iteration == 0` means
that no epoch beat the zero forecast on validation (the model then forecasts 0, rather than something
worse than 0). Torch's global RNG state is forked during a fit, so seeding does not leak into the caller.

Determinism: on CPU two fits with the same seed and thread count give the same weights. On CUDA some
kernels are not bit-reproducible; `torch.use_deterministic_algorithms` is not switched on because it is
process-global state (and on CUDA demands a cuBLAS workspace setting).

Plain series (`fit_series` / `predict_series`): the same loop, scaling, seeding, early stopping and files
serve the papers' setting. Windows come from a (time, channels) array (ml.models.series.SeriesWindows);
the target is the next `horizon` values of chosen channels (default all), not a cumulative return. Each
channel is standardized with the training rows' mean/std (no clipping, target scale 1), the loss ("mse",
"mae" or "huber") runs over every step and target channel, early stopping watches the validation MSE of
the same, and predict_series returns (windows, horizon, targets) in the series' own units. Feature-name
checks apply to the trading path only. Epoch 0 is the network as built: N-HiTS and the mix head start
from the zero forecast (the training mean, in standardized units), PatchTST's channel-independent head
keeps the paper's default initialisation.

Files: ``model.pt`` (a state_dict, read back with ``weights_only=True``) and ``model.json`` (kind,
hyper-parameters, scaler arrays, target scale, feature names). No pickled Python objects.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from abc import abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.dataset import WindowSet
from ml.features import FEATURE_NAMES, N_FEATURES
from ml.metrics import spearman
from ml.models.base import FitReport, ForecastModel, ModelLoadError, Progress, read_model_json
from ml.models.series import SeriesWindows

CLIP = 10.0  # standardized feature values beyond this are clipped
WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1
PREDICT_CHUNK = 4096  # windows per forward pass at inference: bounds memory, not results
PAD_ROWS = 16  # inference batches are padded to a multiple of this (see TorchForecaster._forward)
DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("mse", "huber", "mae")
TARGET_SCALINGS = ("std", "mad")
EARLY_STOPPING = ("mse", "clipped_mse", "rank_ic")
MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): the MAD of a normal sample times this is its std
MIN_IMPROVEMENT = 1e-9  # an epoch is kept only when it beats the best criterion so far by more than this
# how a model.json written before these keys existed was trained (its params fill the gaps on load)
LEGACY_TRAINING = {"target_scaling": "std", "target_clip": None, "huber_delta": 1.0, "early_stopping": "mse"}


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for CUDA without one is an error, not a fallback."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def feature_indices(names: list[str] | tuple[str, ...]) -> list[int]:
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown feature names {unknown}; known: {list(FEATURE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names repeat: {list(names)}")
    return [FEATURE_NAMES.index(n) for n in names]


class FeatureScaler:
    """Standardize-then-clip of the raw feature columns a model reads (fitted on training rows only)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, columns: list[int], clip: float | None = CLIP):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.columns = list(columns)
        self.clip = clip  # None for plain series: the papers standardize without clipping
        # float32 copies of the selected columns: the transform runs on every batch
        self._mu = self.mean[self.columns].astype(np.float32)
        self._sd = self.std[self.columns].astype(np.float32)

    @classmethod
    def fit(cls, ws: WindowSet, columns: list[int]) -> FeatureScaler:
        return cls.fit_rows(ws.tabular(), columns)

    @classmethod
    def fit_rows(cls, rows: np.ndarray, columns: list[int], clip: float | None = CLIP) -> FeatureScaler:
        """Per-column mean/std of (rows, columns) values, NaN-safe."""
        n_cols = rows.shape[1]
        rows = rows.astype(np.float64)
        rows[~np.isfinite(rows)] = np.nan
        with warnings.catch_warnings():  # an all-NaN column warns; it gets the neutral scale below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(rows, axis=0) if len(rows) else np.zeros(n_cols)
            std = np.nanstd(rows, axis=0) if len(rows) else np.ones(n_cols)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        # a constant (or all-NaN) feature keeps unit scale instead of dividing by zero
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        return cls(mean, std, columns, clip)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """(..., N_FEATURES) raw -> (..., len(columns)) float32 standardized, clipped, finite."""
        x = (raw[..., self.columns].astype(np.float32, copy=False) - self._mu) / self._sd
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0, copy=False)
        return x if self.clip is None else np.clip(x, -self.clip, self.clip, out=x)

    def inverse(self, y: np.ndarray, columns: list[int]) -> np.ndarray:
        """Standardized values of `columns` (last axis) -> their original units, float64."""
        return y * self.std[columns] + self.mean[columns]

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def target_scale(labels: np.ndarray, method: str = "std") -> float:
    """The unit of the scaled target: the std of the finite labels, or ("mad") 1.4826 x their median
    absolute deviation, falling back to the std when the MAD is ~0; 1.0 when neither is usable."""
    if method not in TARGET_SCALINGS:
        raise ValueError(f"target_scaling must be one of {TARGET_SCALINGS}, got {method!r}")
    y = np.asarray(labels, dtype=np.float64)
    y = y[np.isfinite(y)]
    if not len(y):
        return 1.0
    if method == "mad":
        s = MAD_TO_STD * float(np.median(np.abs(y - np.median(y))))
        if math.isfinite(s) and s > 1e-12:
            return s
    s = float(np.std(y))
    return s if math.isfinite(s) and s > 1e-12 else 1.0


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch inside a forked RNG state, so a fit is reproducible without touching the caller's RNG."""
    devices = []
    if device.type == "cuda":  # only touch CUDA when it is used: current_device() initialises it
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class TorchForecaster(ForecastModel):
    """fit/predict/save/load for a network that maps scaled windows to the scaled horizon path.

    Subclasses give `kind`, the feature columns they read (`input_features`), their architecture
    hyper-parameters (`arch_params`) and `build_net()`.
    """

    # architecture keys a model.json from before they existed lacks: the value it was trained with
    LEGACY_ARCH: dict = {}

    def __init__(
        self,
        *,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 30,
        patience: int = 5,
        max_seconds: float | None = None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        target_scaling: str = "std",
        target_clip: float | None = None,
        early_stopping: str = "mse",
        grad_clip: float | None = 1.0,
        device: str = "auto",
        seed: int = 42,
        horizon: int = 12,
        lookback: int = 64,
    ):
        _positive(batch_size=batch_size, max_epochs=max_epochs, patience=patience, horizon=horizon)
        _positive(lookback=lookback, learning_rate=learning_rate, huber_delta=huber_delta)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if target_scaling not in TARGET_SCALINGS:
            raise ValueError(f"target_scaling must be one of {TARGET_SCALINGS}, got {target_scaling!r}")
        if early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
        if target_clip is not None and not target_clip > 0:
            raise ValueError(f"target_clip must be positive or None, got {target_clip}")
        if early_stopping == "clipped_mse" and target_clip is None:
            raise ValueError("early_stopping 'clipped_mse' needs a target_clip (got None)")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.loss = loss
        self.huber_delta = float(huber_delta)
        self.target_scaling = target_scaling
        self.target_clip = None if target_clip is None else float(target_clip)
        self.early_stopping = early_stopping
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.device = device
        self.seed = int(seed)
        self.horizon = int(horizon)
        self.lookback = int(lookback)
        self.net: nn.Module | None = None
        self.scaler: FeatureScaler | None = None
        self.target_scale = 1.0
        # None: the trading model (feature windows -> return). A dict {"n_inputs", "targets"} once
        # fit_series made this a plain series forecaster (input channels -> target channels' next values)
        self.series: dict | None = None

    # -- what a subclass supplies ------------------------------------------------------------------

    @property
    @abstractmethod
    def input_features(self) -> list[str]:
        """Feature names the network reads, in channel order."""

    @abstractmethod
    def arch_params(self) -> dict:
        """Architecture hyper-parameters (JSON-able), also the subclass's constructor keywords."""

    @abstractmethod
    def build_net(self) -> nn.Module:
        """A fresh network. Trading: (batch, lookback, len(input_features)) -> (batch, horizon) scaled
        return path. Series (self.series set): (batch, lookback, n_inputs) -> (batch, horizon, n_targets)."""

    def params(self) -> dict:
        return {
            **self.arch_params(),
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "max_seconds": self.max_seconds,
            "loss": self.loss,
            "huber_delta": self.huber_delta,
            "target_scaling": self.target_scaling,
            "target_clip": self.target_clip,
            "early_stopping": self.early_stopping,
            "grad_clip": self.grad_clip,
            "device": self.device,
            "seed": self.seed,
            "horizon": self.horizon,
            "lookback": self.lookback,
        }

    # -- fit ---------------------------------------------------------------------------------------

    def fit(self, train: WindowSet, val: WindowSet, progress: Progress = None) -> FitReport:
        start = time.perf_counter()
        self._check_dataset(train, "train")
        self._check_dataset(val, "validation")
        self.series = None
        self.scaler = FeatureScaler.fit(train, feature_indices(self.input_features))
        self.target_scale = target_scale(train.labels, self.target_scaling)
        train_s = self._scaled(train)
        # splits of one pool share the flat feature array: scale it once
        shared = val.features is train.features
        val_s = _with_features(val, train_s.features) if shared else self._scaled(val)
        return self._fit_scaled(train_s, val_s, progress, start)

    def fit_series(
        self,
        train: np.ndarray,
        val: np.ndarray,
        *,
        targets: list[int] | None = None,
        progress: Progress = None,
    ) -> FitReport:
        """Train on a plain multivariate series: `train` and `val` are (time, channels) arrays (any
        series, not the trading features); each window's input is `lookback` rows of every channel, its
        target the next `horizon` values of the `targets` columns (default: all). Give `val` its own
        `lookback` rows of history before its first target (as the papers' loaders do). Each channel is
        standardized with the training rows' mean/std (not clipped); the loss (`loss`: mse, mae, huber)
        runs over the whole standardized horizon and early stopping on its validation MSE."""
        start = time.perf_counter()
        if self.early_stopping != "mse":
            raise ValueError(f"{self.kind}: series fits early-stop on 'mse', got {self.early_stopping!r}")
        train, val = _series_array(train, "train"), _series_array(val, "validation")
        n_inputs = train.shape[1]
        if val.shape[1] != n_inputs:
            raise ValueError(f"{self.kind}: train has {n_inputs} channels, validation {val.shape[1]}")
        targets = list(range(n_inputs)) if targets is None else [int(t) for t in targets]
        if not targets or len(set(targets)) != len(targets) or not all(0 <= t < n_inputs for t in targets):
            raise ValueError(
                f"{self.kind}: targets must be distinct channels in [0, {n_inputs}), got {targets}"
            )
        for s, name in ((train, "train"), (val, "validation")):
            if len(s) < self.lookback + self.horizon:
                raise ValueError(
                    f"{self.kind}: the {name} series needs at least lookback + horizon = "
                    f"{self.lookback + self.horizon} rows, has {len(s)}"
                )
        self.series = {"n_inputs": n_inputs, "targets": targets}
        self.scaler = FeatureScaler.fit_rows(train, list(range(n_inputs)), clip=None)
        self.target_scale = 1.0  # the targets are standardized channels already
        sets = [
            SeriesWindows(self.scaler.transform(s), self.lookback, self.horizon, targets)
            for s in (train, val)
        ]
        return self._fit_scaled(*sets, progress, start)

    def _fit_scaled(self, train, val, progress: Progress, start: float) -> FitReport:
        device = resolve_device(self.device)
        with seeded(self.seed, device):
            self.net = self.build_net().to(device)
            report = self._train(train, val, device, progress, start)
        report.seconds = time.perf_counter() - start
        return report

    def _train(self, train: WindowSet, val: WindowSet, device, progress: Progress, start) -> FitReport:
        net = self.net
        opt = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        loss_fn = {"mse": nn.MSELoss(), "mae": nn.L1Loss(), "huber": nn.HuberLoss(delta=self.huber_delta)}[
            self.loss
        ]
        rng = np.random.default_rng(self.seed)
        deadline = None if self.max_seconds is None else start + self.max_seconds
        report = FitReport(best_iteration=0, device=str(device))
        # networks start from an exactly-zero forecast (zero-initialised output layer), and that start
        # is "epoch 0" for early stopping: a fit that only learns noise falls back to the zero forecast
        zero_loss = self._val_criterion(val, device)
        best, best_state, stale = zero_loss, _clone_state(net), 0
        for epoch in range(1, self.max_epochs + 1):
            train_loss, out_of_time = self._train_epoch(train, opt, loss_fn, rng, device, deadline)
            val_loss = self._val_criterion(val, device)
            report.train_loss.append(train_loss)
            report.val_loss.append(val_loss)
            if val_loss < best - MIN_IMPROVEMENT:
                best, best_state, stale = val_loss, _clone_state(net), 0
                report.best_iteration = epoch
            else:
                stale += 1
            if progress is not None:
                msg = (
                    f"epoch {epoch}: train loss {train_loss:.5f}, val loss ({self.early_stopping}) "
                    f"{val_loss:.5f} (zero {zero_loss:.5f})"
                )
                progress(epoch, self.max_epochs, msg)
            if stale >= self.patience or out_of_time:
                break
        net.load_state_dict(best_state)
        net.eval()
        return report

    def _train_epoch(self, ws: WindowSet, opt, loss_fn, rng, device, deadline) -> tuple[float, bool]:
        """One shuffled pass; returns the mean batch loss and whether the time budget ran out."""
        net = self.net
        net.train()
        total, seen = torch.zeros((), device=device), 0
        for xb, _, idx in ws.batches(self.batch_size, self.lookback, rng):
            x = torch.from_numpy(xb).to(device)
            y = self._train_targets(ws.paths(idx))
            y = torch.from_numpy(y).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()
            # accumulate on the device: .item() per step would synchronise CUDA every batch
            total += loss.detach() * len(idx)
            seen += len(idx)
            if deadline is not None and time.perf_counter() > deadline:
                return float(total) / seen, True
        return float(total) / max(seen, 1), False

    def _train_targets(self, paths: np.ndarray) -> np.ndarray:
        """Raw horizon paths -> the network's float32 training targets: scaled, clipped at +-target_clip."""
        y = (paths / self.target_scale).astype(np.float32)
        if self.target_clip is not None:
            np.clip(y, -self.target_clip, self.target_clip, out=y)
        return y

    def _val_criterion(self, ws: WindowSet | SeriesWindows, device) -> float:
        """The early-stopping criterion on an already scaled set, lower is better (module docstring)."""
        if self.series is not None:  # the MSE over every step of the horizon and every target channel
            sq = [
                float(np.sum((self._forward_full(xb, device) - ws.paths(idx)) ** 2))
                for xb, _, idx in ws.batches(PREDICT_CHUNK, self.lookback)
            ]
            return sum(sq) / (len(ws) * self.horizon * len(self.series["targets"]))
        preds = [self._forward(xb, device) for xb, _, _ in ws.batches(PREDICT_CHUNK, self.lookback)]
        pred = np.concatenate(preds) if preds else np.empty(0)
        y = ws.labels / self.target_scale
        if self.early_stopping == "rank_ic":
            ic = spearman(pred, y)
            return 0.0 - ic if math.isfinite(ic) else 0.0  # (0.0 - ic: no "-0.0"); too few to rank: 0
        if self.early_stopping == "clipped_mse":
            y = np.clip(y, -self.target_clip, self.target_clip)
        return float(np.mean((pred - y) ** 2))

    def _forward(self, x_scaled: np.ndarray, device) -> np.ndarray:
        """Scaled windows -> the scaled label forecast (last path step), float64."""
        return self._forward_full(x_scaled, device)[:, -1]

    def _forward_full(self, x_scaled: np.ndarray, device) -> np.ndarray:
        """Scaled windows -> the network's whole scaled output (the horizon), float64."""
        n = len(x_scaled)
        # MKL switches to other kernels (another summation order) for matrices of a few rows; padding
        # the batch to a multiple of PAD_ROWS keeps a window's forecast independent of its batch
        pad = (-n) % PAD_ROWS
        if pad:
            x_scaled = np.concatenate([x_scaled, np.zeros((pad, *x_scaled.shape[1:]), x_scaled.dtype)])
        self.net.eval()
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(x_scaled)).to(device))
        return out[:n].double().cpu().numpy()

    def _scaled(self, ws: WindowSet) -> WindowSet:
        """The same anchors over scaled feature columns, so batches come out ready for the network."""
        return _with_features(ws, self.scaler.transform(ws.features))

    def _check_dataset(self, ws: WindowSet, name: str) -> None:
        if len(ws) == 0:
            raise ValueError(f"{self.kind}: the {name} set is empty")
        if ws.horizon != self.horizon:
            raise ValueError(
                f"{self.kind}: model horizon is {self.horizon} but the {name} set's is {ws.horizon}"
            )
        if ws.features.ndim != 2 or ws.features.shape[1] != N_FEATURES:
            raise ValueError(f"{self.kind}: {name} features must be (rows, {N_FEATURES})")
        if int(ws.rows.min()) < self.lookback - 1:
            raise ValueError(
                f"{self.kind}: {name} anchors start before lookback {self.lookback} rows of history "
                "(pool the dataset with at least the model's lookback)"
            )

    # -- predict -----------------------------------------------------------------------------------

    def predict(self, windows: np.ndarray) -> np.ndarray:
        if self.net is None or self.scaler is None:
            raise RuntimeError(f"{self.kind}: predict called before fit or load")
        if self.series is not None:
            raise RuntimeError(f"{self.kind}: a series model (fit_series) forecasts with predict_series")
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[2] != N_FEATURES:
            raise ValueError(
                f"{self.kind}: windows must be (batch, length, {N_FEATURES}), got shape {windows.shape}"
            )
        if windows.shape[1] < self.lookback:
            raise ValueError(
                f"{self.kind}: windows have {windows.shape[1]} rows, the model needs at least "
                f"lookback={self.lookback}"
            )
        device = next(self.net.parameters()).device
        out = np.empty(len(windows), dtype=np.float64)
        for s in range(0, len(windows), PREDICT_CHUNK):
            x = self.scaler.transform(windows[s : s + PREDICT_CHUNK, -self.lookback :])
            out[s : s + PREDICT_CHUNK] = self._forward(x, device)
        return out * self.target_scale

    def predict_series(self, windows: np.ndarray) -> np.ndarray:
        """(batch, length >= lookback, n_inputs) windows of the raw series -> (batch, horizon, n_targets)
        float64 forecasts of the target channels' next `horizon` values, in the series' own units."""
        if self.net is None or self.scaler is None or self.series is None:
            raise RuntimeError(
                f"{self.kind}: predict_series needs a model fitted with fit_series (or loaded)"
            )
        windows = np.asarray(windows)
        n_inputs = self.series["n_inputs"]
        if windows.ndim != 3 or windows.shape[2] != n_inputs or windows.shape[1] < self.lookback:
            raise ValueError(
                f"{self.kind}: windows must be (batch, >= {self.lookback}, {n_inputs}), got {windows.shape}"
            )
        device = next(self.net.parameters()).device
        out = np.empty((len(windows), self.horizon, len(self.series["targets"])), dtype=np.float64)
        for s in range(0, len(windows), PREDICT_CHUNK):
            x = self.scaler.transform(windows[s : s + PREDICT_CHUNK, -self.lookback :])
            out[s : s + PREDICT_CHUNK] = self._forward_full(x, device)
        return self.scaler.inverse(out, self.series["targets"])

    # -- save / load -------------------------------------------------------------------------------

    def save(self, directory: Path) -> list[str]:
        if self.net is None or self.scaler is None:
            raise RuntimeError(f"{self.kind}: nothing to save, the model is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        meta = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params(),
            "feature_names": list(FEATURE_NAMES),
            "input_features": list(self.input_features),
            "scaler": self.scaler.to_json(),
            "target_scale": self.target_scale,
            "lookback": self.lookback,
            "horizon": self.horizon,
        }
        if self.series is not None:  # channels by position: no trading feature names apply
            meta["series"] = dict(self.series)
            del meta["feature_names"], meta["input_features"]
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return [WEIGHTS_FILE, META_FILE]

    @classmethod
    def load(cls, directory: Path) -> TorchForecaster:
        directory = Path(directory)
        meta = _read_meta(directory / META_FILE, cls.kind)
        try:
            # keys a model.json from before the training options lacks: the behaviour it was trained with
            model = cls(**(LEGACY_TRAINING | cls.LEGACY_ARCH | meta["params"]))
            if "series" in meta:
                model.series = {
                    "n_inputs": int(meta["series"]["n_inputs"]),
                    "targets": [int(t) for t in meta["series"]["targets"]],
                }
                columns, clip = list(range(model.series["n_inputs"])), None
            else:
                columns, clip = feature_indices(model.input_features), CLIP
            model.scaler = FeatureScaler(meta["scaler"]["mean"], meta["scaler"]["std"], columns, clip)
            model.target_scale = float(meta["target_scale"])
            device = resolve_device(model.device)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{META_FILE} in {directory}: invalid content ({e})") from e
        model.net = _read_weights(directory / WEIGHTS_FILE, model.build_net(), device)
        return model


def _read_meta(path: Path, kind: str) -> dict:
    meta = read_model_json(path, kind)
    if "series" not in meta and meta.get("feature_names") != list(FEATURE_NAMES):
        raise ModelLoadError(f"{path.name} in {path.parent}: trained on a different feature set")
    return meta


def _read_weights(path: Path, net: nn.Module, device: torch.device) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"{path.name} missing in {path.parent}")
    try:
        # weights_only: a state_dict is tensors only; anything else in the file is refused, never run
        state = torch.load(path, weights_only=True, map_location=device)
        net.load_state_dict(state)
    except Exception as e:  # torch raises many types for a bad archive; all mean the same here
        raise ModelLoadError(f"{path.name} in {path.parent} is corrupt or does not fit the model: {e}") from e
    return net.to(device).eval()


def _series_array(series: np.ndarray, name: str) -> np.ndarray:
    series = np.asarray(series, dtype=np.float32)
    if series.ndim == 1:  # one channel
        series = series[:, None]
    if series.ndim != 2 or series.shape[1] < 1:
        raise ValueError(f"the {name} series must be (time, channels), got shape {series.shape}")
    return series


def _with_features(ws: WindowSet, features: np.ndarray) -> WindowSet:
    return replace(ws, features=features)  # every other field (the target's paths too) carried over


def _clone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _positive(**values: Any) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v}")

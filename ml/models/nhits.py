"""N-HiTS (Challu et al., 2023, "N-HiTS: Neural Hierarchical Interpolation for Time Series Forecasting").

Architecture, as in the paper:
  * stacks of MLP blocks; stack s has a pooling kernel k_s (`n_pool_kernel_size`, e.g. [8, 4, 1]) and an
    expressiveness ratio r_s (`n_freq_downsample`, e.g. [4, 2, 1]);
  * multi-rate signal sampling: each block max-pools its input along time with kernel k_s (stride k_s,
    ceil mode; `pooling_mode="avg"` averages instead) before its MLP, so early stacks see a coarse window;
  * the MLP emits backcast coefficients (max(L // r_s, 1) of them) and forecast coefficients
    (max(H // r_s, 1)); hierarchical interpolation (linear) stretches them to the lookback L and the
    horizon H, so early stacks can only produce low-frequency shapes and later ones add detail;
  * doubly residual stacking: each block sees the series minus the backcasts of the blocks before it, and
    the forecast is the sum of every block's forecast.

Two uses:
  * any series (fit_series / predict_series, ml.models.torch_common): channel-independent as in the
    paper's multivariate benchmarks, i.e. every channel is a univariate series through the SAME blocks
    (no exogenous inputs), forecasting its own next `horizon` values; the whole horizon is returned.
    Reproducing the paper's long-horizon protocol (not measured here; the data cannot be downloaded in
    this sandbox): standardize each series with its training split's mean/std, then e.g. for horizon 96

        model = NHiTSModel(lookback=5 * 96, horizon=96, n_pool_kernel_size=[2, 2, 1],
                           n_freq_downsample=[24, 12, 1], n_blocks=1, mlp_units=512, mlp_layers=2,
                           dropout=0.0, pooling_mode="max", loss="mae", learning_rate=1e-3,
                           weight_decay=0.0, batch_size=256, grad_clip=None)
        model.fit_series(train, val)
        pred = model.predict_series(test_windows)   # (N, 96, channels)

    with the kernels and ratios from the paper's search space for the data set at hand, and score MSE/MAE
    on the standardized values. The paper trains a fixed number of steps; this loop trains epochs with
    early stopping on the validation MSE.
  * the trading model (fit / predict), below.

Trading model:
  * the series that is backcast is `logret_1` (standardized) over the lookback window;
  * the other 48 features are exogenous inputs. Choice: they are pooled *with* the series (the same
    MaxPool1d over the time axis, kernel k_s) and flattened into each block's MLP input, i.e. a block
    reads (1 + 48) x ceil(L / k_s) values. The reference implementation flattens exogenous inputs at
    full rate; pooling them too keeps the paper's multi-rate idea for every input and makes the coarse
    stacks ~k_s times smaller (a 64 x 49 full-rate input per block would dominate the parameter count).
    The exogenous inputs are not backcast, so they are the same for every block;
  * the forecast is the horizon-H path of cumulative forward log returns (in units of the target scale,
    see ml.models.torch_common), trained on the whole path with MSE (or Huber); the model's prediction
    is its last step, i.e.
    ln(close[t+H] / close[t]);
  * each block's output layer is zero-initialised, so training starts from the zero forecast (and a zero
    backcast), which early stopping treats as epoch 0 (ml.models.torch_common).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ml.features import FEATURE_NAMES
from ml.models.torch_common import TorchForecaster

TARGET_FEATURE = "logret_1"


class NHiTSBlock(nn.Module):
    def __init__(
        self,
        lookback: int,
        horizon: int,
        n_channels: int,
        pool_kernel: int,
        freq_downsample: int,
        mlp_units: int,
        mlp_layers: int,
        dropout: float,
        pooling_mode: str,
    ):
        super().__init__()
        self.lookback, self.horizon = lookback, horizon
        pool = nn.MaxPool1d if pooling_mode == "max" else nn.AvgPool1d
        self.pool = pool(kernel_size=pool_kernel, stride=pool_kernel, ceil_mode=True)
        in_features = n_channels * math.ceil(lookback / pool_kernel)
        self.n_back = max(lookback // freq_downsample, 1)
        self.n_fore = max(horizon // freq_downsample, 1)
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(mlp_layers):
            layers += [nn.Linear(width, mlp_units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = mlp_units
        layers.append(nn.Linear(width, self.n_back + self.n_fore))
        self.mlp = nn.Sequential(*layers)
        # start at backcast = forecast = 0: the fit begins from the zero forecast (see torch_common)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, series: torch.Tensor, exog: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """series (B, L), exog (B, E, L) -> backcast (B, L), forecast (B, H)."""
        x = torch.cat([series.unsqueeze(1), exog], dim=1)
        theta = self.mlp(self.pool(x).flatten(1))
        backcast = _interpolate(theta[:, : self.n_back], self.lookback)
        forecast = _interpolate(theta[:, self.n_back :], self.horizon)
        return backcast, forecast


def _interpolate(knots: torch.Tensor, size: int) -> torch.Tensor:
    if knots.shape[1] == size:  # ratio 1: the coefficients already are the signal
        return knots
    return F.interpolate(knots.unsqueeze(1), size=size, mode="linear", align_corners=False).squeeze(1)


class NHiTSNet(nn.Module):
    """Trading (`target` an int): (B, L, C) scaled windows, channel `target` the backcast series, the rest
    exogenous -> (B, H). Series (`targets` a list): every channel is a univariate series through the same
    blocks, no exogenous inputs (channel-independent) -> (B, H, len(targets)), those channels' forecasts."""

    def __init__(self, blocks: list[NHiTSBlock], target: int | None = None, targets: list[int] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.target = target
        self.targets = None if targets is None else list(targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, C, L): pooling runs over time
        if self.targets is not None:
            b = x.shape[0]
            x = x[:, self.targets]  # a channel's forecast reads only its own history
            f = self._stack(x.flatten(0, 1), x.new_zeros(b * len(self.targets), 0, x.shape[-1]))
            return f.view(b, len(self.targets), -1).transpose(1, 2)
        exog = torch.cat([x[:, : self.target], x[:, self.target + 1 :]], dim=1)
        return self._stack(x[:, self.target], exog)

    def _stack(self, residual: torch.Tensor, exog: torch.Tensor) -> torch.Tensor:
        """Doubly residual stacking: series (N, L), exog (N, E, L) -> forecast (N, H)."""
        forecast = 0
        for block in self.blocks:
            backcast, f = block(residual, exog)
            residual = residual - backcast
            forecast = forecast + f
        return forecast


class NHiTSModel(TorchForecaster):
    """N-HiTS over all 49 features (trading) or any series (fit_series); the training keywords are
    documented in ml.models.torch_common."""

    kind = "nhits"
    # The training keywords (ml.models.torch_common) whose N-HiTS default differs from the shared one.
    TRAINING_DEFAULTS = {"learning_rate": 5e-4, "weight_decay": 1e-2}

    def __init__(
        self,
        *,
        n_pool_kernel_size: tuple[int, ...] | list[int] = (8, 4, 1),
        n_freq_downsample: tuple[int, ...] | list[int] = (4, 2, 1),
        n_blocks: int = 1,
        mlp_units: int = 128,
        mlp_layers: int = 2,
        dropout: float = 0.2,
        pooling_mode: str = "max",
        **training,
    ):
        super().__init__(**(self.TRAINING_DEFAULTS | training))
        self.n_pool_kernel_size = [int(k) for k in n_pool_kernel_size]
        self.n_freq_downsample = [int(r) for r in n_freq_downsample]
        if not self.n_pool_kernel_size or len(self.n_pool_kernel_size) != len(self.n_freq_downsample):
            raise ValueError("n_pool_kernel_size and n_freq_downsample need one entry per stack, same length")
        if min(self.n_pool_kernel_size + self.n_freq_downsample) < 1:
            raise ValueError("pool kernels and downsample ratios must be >= 1")
        if n_blocks < 1 or mlp_units < 1 or mlp_layers < 1 or not 0 <= dropout < 1:
            raise ValueError("n_blocks, mlp_units, mlp_layers must be >= 1 and 0 <= dropout < 1")
        if pooling_mode not in ("max", "avg"):
            raise ValueError(f"pooling_mode must be 'max' or 'avg', got {pooling_mode!r}")
        self.n_blocks = int(n_blocks)
        self.mlp_units = int(mlp_units)
        self.mlp_layers = int(mlp_layers)
        self.dropout = float(dropout)
        self.pooling_mode = pooling_mode

    @property
    def input_features(self) -> list[str]:
        return list(FEATURE_NAMES)

    def arch_params(self) -> dict:
        return {
            "n_pool_kernel_size": self.n_pool_kernel_size,
            "n_freq_downsample": self.n_freq_downsample,
            "n_blocks": self.n_blocks,
            "mlp_units": self.mlp_units,
            "mlp_layers": self.mlp_layers,
            "dropout": self.dropout,
            "pooling_mode": self.pooling_mode,
        }

    def build_net(self) -> nn.Module:
        series = self.series is not None
        blocks = [
            NHiTSBlock(
                self.lookback,
                self.horizon,
                1 if series else len(self.input_features),
                kernel,
                ratio,
                self.mlp_units,
                self.mlp_layers,
                self.dropout,
                self.pooling_mode,
            )
            for kernel, ratio in zip(self.n_pool_kernel_size, self.n_freq_downsample, strict=True)
            for _ in range(self.n_blocks)
        ]
        if series:
            return NHiTSNet(blocks, targets=self.series["targets"])
        return NHiTSNet(blocks, target=self.input_features.index(TARGET_FEATURE))

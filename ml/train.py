"""`qt train CONFIG`: build the dataset, train the configured models, report honest metrics, register them.

Every metric sits beside the naive baselines (zero return, last return) on validation and test; a metric
too good to be true stops the run as suspected leakage. The report folder holds metrics.csv/json,
predictions.png (predicted vs realised, IC by symbol) and the registry ids of the new models.

Every model is registered with ml.skill's verdict on its validation forecasts; one that fails the rule
(constant, or not beating the zero forecast) is neither promoted nor counted in the ensemble's metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from backtests.config import PeriodConfig, UniverseConfig
from ml.dataset import (
    FEATURE_NAMES,
    SplitConfig,
    Splits,
    WindowSet,
    load_symbol_bars,
    make_target,
    pool,
    split_by_time,
    subsample,
    subsample_timestamps,
)
from ml.drift import feature_distribution
from ml.ensemble import DEFAULT_WEIGHTS, Ensemble, EnsembleError, Member
from ml.metrics import baselines, check_leakage, ic_by_symbol, metrics_table, scores
from ml.models.base import ForecastModel
from ml.skill import assess
from quantum_trader.config import ConfigError, StrictModel, load_config

KINDS = ("xgboost", "lightgbm", "nhits", "patchtst")


class DatasetConfig(StrictModel):
    horizon: int = Field(12, ge=1, le=288)
    lookback: int = Field(64, ge=1, le=512)
    split: SplitConfig = SplitConfig()
    max_train_rows: int | None = Field(54_000, ge=100, description="null = every training anchor")
    max_eval_rows: int | None = Field(12_000, ge=100, description="per validation / test split")
    # `rows`: max_eval_rows anchors drawn one by one; `timestamps`: whole timestamps drawn, every symbol kept
    # at each, so the cross-sectional IC ranks full cross-sections (rows leaves ~rows/timestamps per one).
    eval_sample: Literal["rows", "timestamps"] = "rows"
    # The label (ml.dataset.make_target): raw forward log return, vol-scaled and/or cross-sectionally demeaned.
    target: Literal["raw", "vol_scaled", "demeaned", "vol_scaled_demeaned"] = "raw"
    vol_window: int = Field(288, ge=2, le=100_000, description="bars of one-bar returns in the vol estimate")
    vol_floor: float = Field(1e-4, gt=0, lt=1, description="per-bar volatility floor (log-return units)")

    def label(self, interval: str) -> dict:
        """What a model's forecast means: stored with it in the registry (meta.json `label`)."""
        out = {
            "kind": "forward_log_return",
            "horizon": self.horizon,
            "interval": interval,
            "target": self.target,
        }
        if self.target.startswith("vol_scaled"):
            out |= {"vol_window": self.vol_window, "vol_floor": self.vol_floor}
        return out


class ModelSpec(StrictModel):
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(StrictModel):
    name: str = "ensemble"
    catalog: str = "data/catalog"
    universe: UniverseConfig = UniverseConfig()
    period: PeriodConfig = PeriodConfig()
    dataset: DatasetConfig = DatasetConfig()
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {k: ModelSpec() for k in KINDS})
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    registry: str = "models"
    promote: bool = True
    seed: int = 42

    def model_post_init(self, _context) -> None:
        unknown = sorted(set(self.models) - set(KINDS))
        if unknown:
            raise ConfigError(f"models: unknown kind(s) {unknown}; allowed: {list(KINDS)}")
        if not any(spec.enabled for spec in self.models.values()):
            raise ConfigError("models: every model is disabled; enable at least one")


@dataclass
class TrainResult:
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    model_ids: dict[str, str] = field(default_factory=dict)
    splits: Splits | None = None
    out: Path | None = None
    ensemble_missing: dict[str, str] = field(default_factory=dict)  # kind -> why it does not vote
    skill: dict[str, dict] = field(default_factory=dict)  # kind -> ml.skill.assess() on validation
    not_promoted: dict[str, str] = field(default_factory=dict)  # kind -> why promote was refused
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> split -> forecast


def load_train_config(path) -> TrainConfig:
    return load_config(TrainConfig, path)


def build_splits(cfg: TrainConfig) -> tuple[Splits, dict]:
    """Dataset for the config's universe and period, split by time, subsampled as configured."""
    from backtests.runner import resolve_period, select_universe
    from catalog.store import CatalogStore, interval_seconds

    store = CatalogStore(Path(cfg.catalog))
    universe = select_universe(store, cfg)
    start, end = resolve_period(store, cfg, universe)
    bars = load_symbol_bars(cfg.catalog, universe.bar_types, start, end)
    d = cfg.dataset
    pooled = make_target(pool(bars, d.horizon, d.lookback), d.target, d.vol_window, d.vol_floor)
    splits = split_by_time(pooled, d.split, interval_seconds(cfg.universe.interval) * 1_000_000_000)
    splits.train = subsample(splits.train, d.max_train_rows, cfg.seed)
    evals = subsample if d.eval_sample == "rows" else subsample_timestamps
    splits.validation = evals(splits.validation, d.max_eval_rows, cfg.seed + 1)
    splits.test = evals(splits.test, d.max_eval_rows, cfg.seed + 2)
    data = {
        "catalog": str(cfg.catalog),
        "symbols": pooled.symbols,
        "start": str(start),
        "end": str(end),
        "interval": cfg.universe.interval,
        "target": d.target,
        "rows": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "boundaries": {k: str(v) for k, v in splits.boundaries.items()},
    }
    return splits, data


def make_model(kind: str, params: dict, cfg: TrainConfig) -> ForecastModel:
    from ml.registry import model_class

    base = {"seed": cfg.seed}
    if kind in ("nhits", "patchtst"):
        base |= {"horizon": cfg.dataset.horizon, "lookback": cfg.dataset.lookback}
    try:
        return model_class(kind)(**(base | params))
    except TypeError as err:
        raise ConfigError(f"models.{kind}.params: {err}") from None


def last_return(ws: WindowSet) -> np.ndarray:
    """The momentum baseline: the log return of the `horizon` bars up to t, in the target's units (scaled by
    the same volatility known at t, demeaned over the same symbols at t: ml.dataset.make_target)."""
    if ws.last is not None:
        return ws.last
    return ws.log_close[ws.rows] - ws.log_close[ws.rows - ws.horizon]


def evaluate(name: str, pred: dict[str, np.ndarray], splits: Splits) -> dict[str, dict[str, float]]:
    """Each split's scores against the target, with the cross-sectional rank IC beside the pooled one."""
    out = {}
    for split in ("validation", "test"):
        ws = getattr(splits, split)
        if len(ws) == 0:
            continue
        m = scores(pred[split], ws.labels, ws.times)
        check_leakage(name, split, m, len(ws))
        out[split] = m
    return out


def baseline_metrics(splits: Splits) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {"zero": {}, "last": {}}
    for split in ("validation", "test"):
        ws = getattr(splits, split)
        if len(ws):
            for name, m in baselines(last_return(ws), ws.labels, ws.times).items():
                out[name][split] = m
    return out


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> TrainResult:
    from ml.registry import ModelRegistry

    t0 = time.perf_counter()
    splits, data = build_splits(cfg)
    _say(
        progress,
        f"dataset: {data['rows']} rows, {len(data['symbols'])} symbols, {data['start']} .. {data['end']}",
    )
    registry = ModelRegistry(cfg.registry)
    result = TrainResult(splits=splits, out=out)
    preds: dict[str, dict[str, np.ndarray]] = {}
    members = []
    distribution = feature_distribution(splits.train.tabular(), FEATURE_NAMES)  # drift reference, ml/drift.py
    for kind in KINDS:
        spec = cfg.models.get(kind)
        if spec is None or not spec.enabled:
            continue
        model = make_model(kind, spec.params, cfg)
        report = _fit(model, kind, splits, progress)
        preds[kind] = {s: _predict(model, getattr(splits, s)) for s in ("validation", "test")}
        result.metrics[kind] = evaluate(kind, preds[kind], splits)
        pred_std = float(np.std(preds[kind]["validation"]))
        pred_mean = float(np.mean(preds[kind]["validation"]))
        result.skill[kind] = skill = assess(preds[kind]["validation"], splits.validation.labels)
        record = registry.register(
            model,
            metrics=result.metrics[kind],
            data=data,
            label=cfg.dataset.label(cfg.universe.interval),
            training={
                "seconds": report.seconds,
                "best_iteration": report.best_iteration,
                "device": report.device,
                "pred_std": pred_std,
                "pred_mean": pred_mean,
                "val_loss": report.val_loss,
                "seed": cfg.seed,
            },
            skill=skill,
            feature_distribution=distribution,
        )
        result.model_ids[kind] = record.id
        weight = cfg.weights.get(kind, 0.0)
        members.append(Member(kind, record.id, model, weight, pred_std, pred_mean, skill))
        _say(
            progress,
            f"{kind}: registered {record.id} ({report.seconds:.1f} s, best at {report.best_iteration}; "
            f"{skill['status']})",
        )
        if cfg.promote:
            _promote(registry, record.id, kind, result, progress)
    try:
        ensemble = Ensemble([m for m in members if m.weight > 0])
    except EnsembleError as err:  # no model passed ml.skill's rule: nothing to combine, nothing to trade
        _say(progress, f"ensemble: not evaluated ({err})")
        result.ensemble_missing = err.missing
    else:
        preds["ensemble"] = {
            s: ensemble.combine(np.column_stack([preds[m.kind][s] for m in ensemble.members])).forecast
            for s in ("validation", "test")
        }
        result.metrics["ensemble"] = evaluate("ensemble", preds["ensemble"], splits)
        result.ensemble_missing = dict(ensemble.missing)
    result.metrics |= baseline_metrics(splits)
    result.predictions = preds
    write_train_report(cfg, result, preds, data, out, time.perf_counter() - t0)
    return result


def _promote(registry, model_id: str, kind: str, result: TrainResult, progress: bool) -> None:
    from ml.registry import ModelRejected

    try:
        registry.promote(model_id)
    except ModelRejected as err:  # the registry recorded the refusal in its history
        result.not_promoted[kind] = str(err)
        _say(progress, f"{kind}: not promoted: {err}")


def _fit(model: ForecastModel, kind: str, splits: Splits, progress: bool):
    bar = tqdm(desc=f"train {kind}", unit="step", leave=True, disable=not progress)

    def report(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    try:
        return model.fit(splits.train, splits.validation, report)
    finally:
        bar.close()


def _predict(model: ForecastModel, ws: WindowSet, chunk: int = 8192) -> np.ndarray:
    if len(ws) == 0:
        return np.empty(0)
    return np.concatenate(
        [
            model.predict(ws.windows(np.arange(i, min(i + chunk, len(ws))), model.lookback))
            for i in range(0, len(ws), chunk)
        ]
    )


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def write_train_report(
    cfg: TrainConfig, result: TrainResult, preds, data: dict, out: Path, seconds: float
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(result.metrics)
    table.to_csv(out / "metrics.csv")
    summary = {
        "name": cfg.name,
        "model_ids": result.model_ids,
        "promoted": cfg.promote,
        "not_promoted": result.not_promoted,
        "skill": {kind: {k: v[k] for k in ("status", "reason")} for kind, v in result.skill.items()},
        "data": data,
        "metrics": result.metrics,
        "ensemble_missing": result.ensemble_missing,
        "seconds": seconds,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    plot_predictions(preds, result.splits, out / "predictions.png")


def plot_predictions(preds: dict, splits: Splits, path: Path) -> None:
    """Predicted vs realised on the test split (validation if there is none), and rank IC by symbol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "test" if len(splits.test) else "validation"
    ws = getattr(splits, split)
    kinds = list(preds)
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.6 * len(kinds), 7), squeeze=False)
    for j, kind in enumerate(kinds):
        p = preds[kind][split]
        ax = axes[0, j]
        ax.scatter(p, ws.labels, s=2, alpha=0.3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"{kind} ({split})")
        unit = "log return" if ws.target == "raw" else ws.target.replace("_", "-") + " return"
        ax.set_xlabel(f"predicted {unit}")
        if j == 0:
            ax.set_ylabel(f"realised {unit}")
        ic = ic_by_symbol(p, ws.labels, ws.symbol_idx, ws.symbols).sort_values()
        axes[1, j].barh(ic.index, ic.to_numpy(), color=np.where(ic.to_numpy() >= 0, "tab:green", "tab:red"))
        axes[1, j].set_xlabel("rank IC by symbol")
        axes[1, j].tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_metrics(result: TrainResult) -> str:
    table = metrics_table(result.metrics)
    with pd.option_context("display.float_format", "{:.5f}".format, "display.width", 140):
        return str(table)

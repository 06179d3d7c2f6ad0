"""Diagnostics of the production models on data they were not trained on: rank IC by horizon (pooled and
cross-sectional), the GBDT models' own feature importances, and the registry's history.
notebooks/model_diagnostics.ipynb is built on these.

Each model forecasts the log return over its label's horizon; its IC at horizon h compares that one forecast
with the realised ln(close[t + h] / close[t]) for h = 1..N. Where the IC peaks says how far ahead the model's
information reaches, whatever horizon it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ml.dataset import SymbolBars, load_symbol_bars, pool
from ml.features import FEATURE_NAMES
from ml.metrics import cross_sectional_ic, spearman
from ml.models.base import ForecastModel
from ml.registry import MODEL_CLASSES, ModelRecord, ModelRegistry


def production_models(registry: Path | str) -> dict[str, tuple[ForecastModel, ModelRecord]]:
    """kind -> (model, record) for every kind with a production version (each verified on load)."""
    reg = ModelRegistry(registry)
    return {kind: reg.load(f"{kind}:production") for kind in MODEL_CLASSES if reg.production(kind)}


def out_of_sample_start(meta: dict) -> pd.Timestamp:
    """The first bar close after the model's data: its training run read bars closing before `data.end`."""
    return pd.Timestamp(meta["data"]["end"])


def model_bars(catalog: Path | str, meta: dict) -> list[SymbolBars]:
    """Every bar the catalog holds of the model's symbols at its interval (features need the warm-up before the
    out-of-sample period, so nothing is cut here)."""
    from catalog.instruments import instrument_id
    from catalog.store import bar_type_for

    interval = meta["data"]["interval"]
    bar_types = [bar_type_for(instrument_id(s), interval) for s in meta["data"]["symbols"]]
    return load_symbol_bars(catalog, bar_types)


def ic_by_horizon(
    models: dict[str, ForecastModel], bars: list[SymbolBars], start: pd.Timestamp, horizons: list[int]
) -> pd.DataFrame:
    """Per model and horizon h: the rank IC of its forecasts against the realised h-bar log return, pooled over
    every (symbol, bar) and across symbols per bar (ml.metrics.cross_sectional_ic), on bars closing at or
    after `start`. Every horizon scores the same anchors: those whose longest horizon is still in the data."""
    from ml.train import _predict

    lookback = max(m.lookback for m in models.values())
    ws = pool(bars, max(horizons), lookback)
    ws = ws.subset(ws.times >= pd.Timestamp(start).value)
    if len(ws) == 0:
        raise ValueError(
            f"no bar closing after {start} with {max(horizons)} bars after it: the models were trained on all "
            "the catalog holds; point QT_CATALOG at a catalog that goes on after their training data"
        )
    rows = []
    for kind, model in models.items():
        pred = _predict(model, ws)
        for h in horizons:
            actual = ws.log_close[ws.rows + h] - ws.log_close[ws.rows]
            cs = cross_sectional_ic(pred, actual, ws.times)
            rows.append(
                {
                    "model": kind,
                    "horizon": h,
                    "pooled_ic": spearman(pred, actual),
                    "cs_ic": cs["mean"],
                    "cs_t_stat": cs["t_stat"],
                    "n": len(ws),
                    "n_timestamps": cs["n_timestamps"],
                }
            )
    return pd.DataFrame(rows)


def feature_importance(model: ForecastModel) -> pd.Series | None:
    """A GBDT model's total split gain per feature as a share of the whole (summing to 1), largest first;
    None for models without their own importances (the sequence networks)."""
    booster = getattr(model, "_booster", None)  # the trees the model predicts with (ml/models/gbdt.py)
    if model.kind == "xgboost":
        scores = booster.get_score(importance_type="total_gain")  # "f<i>" -> gain; unused features absent
        gain = np.array([scores.get(f"f{i}", 0.0) for i in range(len(FEATURE_NAMES))])
    elif model.kind == "lightgbm":
        gain = np.asarray(booster.feature_importance(importance_type="gain"), dtype=float)
    else:
        return None
    total = gain.sum()
    share = gain / total if total > 0 else gain
    return pd.Series(share, index=list(FEATURE_NAMES), name=model.kind).sort_values(ascending=False)


def registry_history(registry: Path | str) -> pd.DataFrame:
    """Every register / promote / demote / rollback / refusal, oldest first."""
    events = ModelRegistry(registry).history()
    columns = ["ts", "action", "kind", "id", "previous", "reason"]
    frame = pd.DataFrame(events)
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame[columns]


def ic_figure(table: pd.DataFrame, trained_horizons: dict[str, int], title: str):
    """Pooled and cross-sectional rank IC against the horizon, a line per model; a dotted mark at the horizon
    each model was trained on."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, name in zip(axes, ("pooled_ic", "cs_ic"), ("pooled", "cross-sectional"), strict=True):
        for kind, rows in table.groupby("model"):
            line = ax.plot(rows["horizon"], rows[column], marker="o", ms=3, label=kind)[0]
            if kind in trained_horizons:
                ax.axvline(trained_horizons[kind], color=line.get_color(), ls=":", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{name} rank IC")
        ax.set_xlabel("bars ahead")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rank IC")
    axes[0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def importance_figure(importances: dict[str, pd.Series], top: int = 15):
    """The `top` features of each GBDT model by gain share, a panel per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * max(len(importances), 1), 0.3 * top + 1.5))
    axes = np.atleast_1d(fig.subplots(1, max(len(importances), 1)))
    for ax, (kind, share) in zip(axes, importances.items(), strict=False):
        shown = share.head(top)[::-1]
        ax.barh(shown.index, shown.to_numpy() * 100, color="#1f77b4")
        ax.set_title(f"{kind}: gain share (top {top})")
        ax.set_xlabel("% of total gain")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig

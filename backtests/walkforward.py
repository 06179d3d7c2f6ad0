"""`qt walkforward CONFIG`: retrain the ML ensemble on a rolling window, trade it only on the unseen days
that follow, and stitch those out-of-sample windows into one honest track record beside two baselines.

Schedule. The evaluated span is `period`; `schedule.train_days` and `schedule.retrain_every_days` (say 60
and 7) cut it into folds. Fold k has a test start t_k = period.start + train_days + k * retrain_every and
  - trains (ml.train.train, promote: false) on bars closing in [t_k - train_days, t_k) with a `sliding`
    window, or [period.start, t_k) with an `expanding` one. Labels are forward returns inside the loaded
    bars, so no training label reaches t_k; the fold's models are checked for that from what train() saw;
  - backtests the EnsembleStrategy, wired to that fold's models by their explicit registry version ids
    (never an alias: a later fold cannot change an earlier one), on the unseen window [t_k, t_k + 7 d)
    only. The last window is cut at period.end (and dropped if shorter than half a step).
  - holds the fold's models to ml.skill's rule like any other: one that is constant or does not beat the
    zero forecast on the fold's validation split does not vote, and when none may vote the ensemble sits
    the window out in cash (no trades, flat equity), with the reasons in windows.csv and summary.json.

Warm-up. The online features need WARMUP_BARS bars and the sequence models a `lookback` of feature rows
(~363 five-minute bars, 30 h) before the first vote. Rather than lose that much of every 7-day window, each
fold's backtest is fed bars from t_k minus the warm-up (rounded up to whole equity-sample intervals), while
the strategy's `trade_start = t_k` keeps it from entering before t_k. Only the test window counts: equity
samples in [t_k, t_k + step], fills and positions opened in it, and signals whose bar closed in
[t_k, t_k + step). A fold whose account moved before t_k is an error. The momentum baseline gets the same warm-up and
`trade_start`; buy-and-hold simply starts at t_k (it enters on its first bar). The baselines trade the
ensemble fold's universe.

Net of costs. Fees, slippage and funding are inside each backtest's equity. A position still open at the
end of a window is marked to market there and charged an estimated exit (taker fee + slippage on the gross
exposure), so a window never ends with a free exit. Windows are chained: each starts from the starting
balance and its returns compound onto the stitched curve, one curve per strategy.

Forecast quality. Every signal in a window is scored against the realised forward log return over the label
horizon, ln(close[t+h] / close[t]), read from the catalog bars: rank IC and directional accuracy per window
and pooled over all windows.

Report folder: windows.csv (one row per fold), summary.json, equity.png (stitched equity of the ensemble,
buy-and-hold and momentum with the window boundaries, and per-window IC bars), config.yaml, and per fold
fold-NN/{train, ensemble, buy_hold, momentum}/ with the training report and each backtest's own report.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, field_validator, model_validator

from backtests.config import (
    BacktestConfig,
    ComponentConfig,
    PeriodConfig,
    UniverseConfig,
    VenueConfig,
    build_component_config,
)
from ml.dataset import SplitConfig
from ml.ensemble import DEFAULT_WEIGHTS
from ml.train import KINDS, DatasetConfig, ModelSpec, TrainConfig
from quantum_trader.config import ConfigError, StrictModel, load_config
from quantum_trader.jsonable import jsonable

ENSEMBLE_PATH = "strategies.ensemble:EnsembleStrategy"
BASELINE_PATHS = {"buy_hold": "strategies.buy_hold:BuyHold", "momentum": "strategies.momentum:Momentum"}
# Set by the walk-forward for every fold; a config may not set them.
_MANAGED = {"registry", "models", "weights", "trade_start", "signal_source", "bar_types"}
STRATEGIES = ("ensemble", "buy_hold", "momentum")
NS = 1_000_000_000


# ---- config ---------------------------------------------------------------------------------------------
def _default_dataset() -> DatasetConfig:
    # No test split inside a fold: the walk-forward window after it is the test.
    return DatasetConfig(split=SplitConfig(train=0.85, validation=0.15, test=0.0))


class FoldTrainConfig(StrictModel):
    """What each fold trains: ml.train's own dataset and model sections."""

    dataset: DatasetConfig = Field(default_factory=_default_dataset)
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {k: ModelSpec() for k in KINDS})
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    seed: int | None = Field(None, description="null = the top-level seed")

    @model_validator(mode="after")
    def _models(self):
        unknown = sorted(set(self.models) - set(KINDS))
        if unknown:
            raise ValueError(f"models: unknown kind(s) {unknown}; allowed: {list(KINDS)}")
        unknown = sorted(set(self.weights) - set(KINDS))
        if unknown:
            raise ValueError(f"weights: unknown kind(s) {unknown}; allowed: {list(KINDS)}")
        if not any(spec.enabled and self.weights.get(k, 0.0) > 0 for k, spec in self.models.items()):
            raise ValueError("models: no enabled model has a positive weight; the ensemble would be empty")
        return self

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if k in self.models and self.models[k].enabled]


class ScheduleConfig(StrictModel):
    retrain_every_days: float = Field(7.0, gt=0, description="length of each unseen test window")
    window: Literal["sliding", "expanding"] = "sliding"
    train_days: float = Field(60.0, gt=0, description="sliding window length; expanding: the first one")
    warmup_bars: int | None = Field(None, ge=0, description="null = feature warm-up + lookback")
    max_folds: int | None = Field(None, ge=1, description="only the first N folds (a quick look)")


class BaselineSpec(StrictModel):
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)


class BaselinesConfig(StrictModel):
    buy_hold: BaselineSpec = BaselineSpec()
    momentum: BaselineSpec = BaselineSpec()


class WalkForwardReportConfig(StrictModel):
    equity_sample_minutes: int = Field(60, ge=1)
    fold_reports: bool = True
    tearsheet: bool = False


class WalkForwardConfig(StrictModel):
    name: str = "walkforward"
    catalog: str = "data/catalog"
    universe: UniverseConfig = UniverseConfig()
    period: PeriodConfig = PeriodConfig()
    train: FoldTrainConfig = FoldTrainConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    venue: VenueConfig = VenueConfig()
    strategy: dict[str, Any] = Field(default_factory=dict, description="EnsembleStrategyConfig fields")
    baselines: BaselinesConfig = BaselinesConfig()
    report: WalkForwardReportConfig = WalkForwardReportConfig()
    registry: str | None = Field(None, description="fold models; null = <report folder>/models")
    seed: int = 42

    @field_validator("period")
    @classmethod
    def _utc_period(cls, v: PeriodConfig):
        # The backtest runner reads naive times as UTC; a zone given in the file is converted, not refused.
        return PeriodConfig(start=_naive_dt(v.start), end=_naive_dt(v.end))

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: dict[str, Any]):
        managed = sorted(set(v) & _MANAGED)
        if managed:
            raise ValueError(f"{managed} are set by the walk-forward for each fold; remove them")
        from strategies.ensemble import _check_config

        _check_config(_component_config(ENSEMBLE_PATH, v, "strategy"))
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: BaselinesConfig):
        for name, path in BASELINE_PATHS.items():
            spec = getattr(v, name)
            managed = sorted(set(spec.config) & _MANAGED)
            if managed:
                raise ValueError(f"{name}.config: {managed} are set by the walk-forward; remove them")
            _component_config(path, spec.config, f"{name}")
        return v

    @property
    def interval_ns(self) -> int:
        from catalog.store import interval_seconds

        return interval_seconds(self.universe.interval) * NS

    @property
    def warmup_bars(self) -> int:
        from ml.features import WARMUP_BARS

        s = self.schedule.warmup_bars
        return WARMUP_BARS + self.train.dataset.lookback if s is None else s

    @property
    def train_seed(self) -> int:
        return self.seed if self.train.seed is None else self.train.seed


def _component_config(path: str, config: dict, where: str):
    try:
        return build_component_config(ComponentConfig(path=path, config=config), where)
    except ConfigError as err:
        raise ValueError(str(err)) from None


def load_walkforward_config(path) -> WalkForwardConfig:
    return load_config(WalkForwardConfig, path)


# ---- schedule -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fold:
    index: int  # 0-based
    train_start: pd.Timestamp
    train_end: pd.Timestamp  # == test_start: training bars close strictly before it
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def plan_folds(schedule: ScheduleConfig, start: pd.Timestamp, end: pd.Timestamp) -> list[Fold]:
    """Contiguous, non-overlapping test windows [t_k, t_k + step) from start + train_days up to end."""
    step = pd.Timedelta(days=schedule.retrain_every_days)
    span = pd.Timedelta(days=schedule.train_days)
    folds: list[Fold] = []
    t = start + span
    while t < end and (schedule.max_folds is None or len(folds) < schedule.max_folds):
        t_end = min(t + step, end)
        if t_end - t < step / 2:
            break  # a stub at the end of the period: too short to say anything
        train_start = t - span if schedule.window == "sliding" else start
        folds.append(Fold(len(folds), train_start, t, t, t_end))
        t = t_end
    if not folds:
        raise ConfigError(
            f"schedule.train_days: period {start} .. {end} leaves no test window after "
            f"{schedule.train_days:g} training days (need at least {schedule.retrain_every_days / 2:g} more days)"
        )
    return folds


# ---- per-window results ---------------------------------------------------------------------------------
@dataclass
class WindowRun:
    """One strategy's part of one fold: its equity inside the window and its window statistics."""

    equity: pd.DataFrame  # balance, equity, gross_exposure; first row at the window start
    stats: dict


@dataclass
class FoldResult:
    fold: Fold
    model_ids: dict[str, str]
    train_data: dict
    last_label_close: pd.Timestamp
    symbols: list[str]
    runs: dict[str, WindowRun] = field(default_factory=dict)
    signals: pd.DataFrame | None = None  # window signals with the realised forward return
    forecast: dict = field(default_factory=dict)
    models_left_out: dict[str, str] = field(default_factory=dict)  # kind -> why it did not vote


@dataclass
class WalkForwardResult:
    config: WalkForwardConfig
    folds: list[FoldResult]
    windows: pd.DataFrame
    stitched: dict[str, pd.DataFrame]
    summary: dict
    out: Path


@dataclass(frozen=True)
class RayOptions:
    """Run the folds as Ray tasks: a local Ray with `cpus` CPUs, or the cluster at `address` (whose nodes need
    this checkout, the catalog and the report folder at the same paths: a shared filesystem)."""

    cpus: int | None = None
    address: str | None = None


def run_walkforward(
    cfg: WalkForwardConfig, out: Path, progress: bool = True, ray: RayOptions | None = None
) -> WalkForwardResult:
    from backtests.runner import resolve_period, select_universe
    from catalog.store import CatalogStore

    t0 = time.perf_counter()
    # Opened before the report folder is made, so a missing catalog leaves nothing behind.
    store = CatalogStore(Path(cfg.catalog))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    registry = Path(cfg.registry) if cfg.registry else out / "models"
    start, end = resolve_period(store, cfg, select_universe(store, cfg))
    folds = plan_folds(cfg.schedule, start, end)
    _say(
        progress,
        f"walk-forward {cfg.name}: {len(folds)} folds, {cfg.schedule.window} {cfg.schedule.train_days:g}-day "
        f"training window, retrain every {cfg.schedule.retrain_every_days:g} days, test {folds[0].test_start} "
        f".. {folds[-1].test_end}; models {cfg.train.kinds}",
    )
    if ray is None:
        closes = _CloseCache(store, cfg)
        results = [_run_fold(cfg, fold, len(folds), registry, out, closes, progress) for fold in folds]
    else:
        results = _run_folds_on_ray(cfg, folds, registry, out, progress, ray)
    windows = windows_table(results)
    windows.to_csv(out / "windows.csv", index=False)
    stitched = {name: stitch([r.runs[name].equity for r in results], cfg.venue.starting_balance)
                for name in STRATEGIES if name in results[0].runs}  # fmt: skip
    summary = summarize(cfg, results, stitched, time.perf_counter() - t0)
    (out / "summary.json").write_text(json.dumps(jsonable(summary, nan_as_null=True), indent=2))
    resolved = cfg.model_dump(mode="json") | {"resolved_registry": str(registry)}
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    plot_walkforward(stitched, windows, out / "equity.png", cfg.name)
    for name, frame in stitched.items():
        frame.to_csv(out / f"equity_{name}.csv")
    return WalkForwardResult(cfg, results, windows, stitched, summary, out)


def _run_fold(
    cfg: WalkForwardConfig, fold: Fold, n: int, registry: Path, out: Path, closes, progress: bool
) -> FoldResult:
    from backtests.runner import run_backtest
    from ml.train import train

    k = f"fold {fold.index + 1}/{n}"
    fold_dir = out / f"fold-{fold.index + 1:02d}"
    _say(progress, f"{k}: training {', '.join(cfg.train.kinds)} on [{fold.train_start}, {fold.train_end})")
    result = train(fold_train_config(cfg, fold, registry), fold_dir / "train", progress=progress)
    data = _train_data(registry, result.model_ids)
    last_label = check_training_window(cfg, fold, data)
    _say(progress, f"{k}: models {result.model_ids}; last training label closed {last_label}")

    left_out = models_left_out(result.skill, cfg.train.weights)
    fr = FoldResult(fold, dict(result.model_ids), data, last_label, [], models_left_out=left_out)
    ens_cfg = fold_backtest_config(cfg, fold, "ensemble", model_ids=result.model_ids, registry=registry)
    if len(left_out) < len(result.model_ids):
        _say(progress, f"{k}: backtesting the ensemble on [{fold.test_start}, {fold.test_end}) (+ warm-up)")
        _ensemble_window(cfg, fr, ens_cfg, fold_dir / "ensemble", closes, progress)
    else:
        _say(progress, f"{k}: no model may vote, the ensemble sits the window out in cash: {left_out}")
        _sat_out_window(cfg, fr, ens_cfg, fold_dir / "ensemble", closes)
    for name in BASELINE_PATHS:
        if not getattr(cfg.baselines, name).enabled:
            continue
        _say(progress, f"{k}: backtesting baseline {name}")
        run = run_backtest(fold_backtest_config(cfg, fold, name, symbols=fr.symbols), progress=progress)
        fr.runs[name] = _window_run(cfg, fold, run, fold_dir / name)
        _close_engine(run)
    e = fr.runs["ensemble"].stats
    _say(
        progress,
        f"{k}: ensemble {e['total_return']:+.2%} ({e['trades']} trades), rank IC {fr.forecast['rank_ic']:+.4f}"
        + "".join(f", {nm} {r.stats['total_return']:+.2%}" for nm, r in fr.runs.items() if nm != "ensemble"),
    )
    return fr


def _run_folds_on_ray(
    cfg: WalkForwardConfig, folds: list[Fold], registry: Path, out: Path, progress: bool, options: RayOptions
) -> list[FoldResult]:
    """Every fold as one Ray task (one CPU): the folds are independent (each trains on its own window and
    backtests its own models by version id), so they give the same windows as the loop, in fold order. The
    registry serialises their history lines with a lock (ml/registry.py)."""
    import ray
    from tqdm import tqdm

    from backtests.ray_cluster import start_ray

    cfg = cfg.model_copy(update={"catalog": str(Path(cfg.catalog).resolve())})  # a worker's cwd is not ours
    registry, out = registry.resolve(), out.resolve()
    info, started = start_ray(options.cpus, options.address)
    _say(progress, f"folds on Ray ({info['mode']}, {info['cpus']} CPUs, {info['nodes']} node(s))")
    task = ray.remote(num_cpus=1, max_retries=0, max_calls=1)(_fold_on_worker)
    try:
        pending = {task.remote(cfg, fold, len(folds), registry, out): fold.index for fold in folds}
        results: dict[int, FoldResult] = {}
        with tqdm(total=len(folds), desc="folds", unit="fold", disable=not progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    results[pending.pop(ref)] = ray.get(
                        ref
                    )  # a failed fold fails the walk-forward, as in the loop
                    bar.update(1)
    finally:
        if started:
            ray.shutdown()
    return [results[fold.index] for fold in folds]


def _fold_on_worker(cfg: WalkForwardConfig, fold: Fold, n: int, registry: Path, out: Path) -> FoldResult:
    from catalog.store import CatalogStore

    closes = _CloseCache(CatalogStore(Path(cfg.catalog)), cfg)
    return _run_fold(cfg, fold, n, registry, out, closes, progress=False)


def models_left_out(skill: dict[str, dict], weights: dict[str, float]) -> dict[str, str]:
    """The fold's models that will not vote, with why: ml.skill's verdict, or a zero weight."""
    from ml.skill import verdict

    out = {}
    for kind, record in skill.items():
        found = verdict(record)
        if not found.usable:
            out[kind] = str(found)
        elif weights.get(kind, 0.0) <= 0:
            out[kind] = "weight is 0"
    return out


def _ensemble_window(cfg, fr: FoldResult, ens_cfg, report_dir: Path, closes, progress: bool) -> None:
    from backtests.runner import run_backtest

    ens = run_backtest(ens_cfg, progress=progress)
    fr.symbols = [str(i.id) for i in ens.universe.instruments]
    fr.runs["ensemble"] = _window_run(cfg, fr.fold, ens, report_dir)
    fr.signals = forecast_frame(ens.signals.frame(), fr.fold, closes, cfg)
    fr.forecast = forecast_metrics(fr.signals)
    _close_engine(ens)


def _sat_out_window(cfg, fr: FoldResult, ens_cfg, report_dir: Path, closes) -> None:
    """The window of an ensemble with no model allowed to vote: it stays in cash, as the strategy would
    refuse to start; the baselines still trade the universe it would have traded."""
    from backtests.runner import select_universe
    from catalog.store import CatalogStore

    fold = fr.fold
    universe = select_universe(CatalogStore(Path(cfg.catalog)), ens_cfg)
    fr.symbols = [str(i.id) for i in universe.instruments]
    initial = cfg.venue.starting_balance
    sample = pd.Timedelta(minutes=cfg.report.equity_sample_minutes)
    index = pd.date_range(fold.test_start, fold.test_end, freq=sample).union([fold.test_end])
    flat = {"balance": initial, "equity": initial, "gross_exposure": 0.0}
    equity = pd.DataFrame(flat, index=index.rename("ts"))
    stats = window_stats(equity, fold, pd.DataFrame(), pd.DataFrame(), initial, 0.0)
    fr.runs["ensemble"] = WindowRun(equity, stats)
    if cfg.report.fold_reports:
        report_dir.mkdir(parents=True, exist_ok=True)
        report = stats | {"sat_out": True, "models": [], "models_missing": fr.models_left_out}
        (report_dir / "stats.json").write_text(json.dumps(jsonable(report, nan_as_null=True), indent=2))
    fr.signals = forecast_frame(pd.DataFrame(), fold, closes, cfg)
    fr.forecast = forecast_metrics(fr.signals)


def fold_train_config(cfg: WalkForwardConfig, fold: Fold, registry: Path) -> TrainConfig:
    return TrainConfig(
        name=f"{cfg.name}-fold{fold.index + 1:02d}",
        catalog=cfg.catalog,
        universe=cfg.universe,
        period=PeriodConfig(start=_naive(fold.train_start), end=_naive(fold.train_end)),
        dataset=cfg.train.dataset,
        models=cfg.train.models,
        weights=cfg.train.weights,
        registry=str(registry),
        promote=False,
        seed=cfg.train_seed,
    )


def _train_data(registry: Path, model_ids: dict[str, str]) -> dict:
    """What the fold's models were trained on, read back from the registry (the record that ships)."""
    from ml.registry import ModelRegistry

    reg = ModelRegistry(registry)
    datas = {kind: reg.show(mid)["data"] for kind, mid in model_ids.items()}
    first = next(iter(datas.values()))
    if any(d != first for d in datas.values()):
        raise RuntimeError(f"the fold's models disagree on their training data: {datas}")
    return first


def check_training_window(cfg: WalkForwardConfig, fold: Fold, data: dict) -> pd.Timestamp:
    """The close time of the fold's latest training label; refuses a fold that saw its test window."""
    horizon = cfg.train.dataset.horizon
    ends = [pd.Timestamp(v) for k, v in data["boundaries"].items() if k.endswith("_end")]
    last_anchor = max(ends)  # close time of the newest anchor bar
    last_label = last_anchor + pd.Timedelta(horizon * cfg.interval_ns, unit="ns")
    if pd.Timestamp(data["end"]) > fold.test_start or last_label >= fold.test_start:
        raise RuntimeError(
            f"fold {fold.index + 1}: training data reach {data['end']} (last label closes {last_label}), "
            f"at or after the test window start {fold.test_start}"
        )
    return last_label


def warmup_span(cfg: WalkForwardConfig) -> pd.Timedelta:
    """The warm-up before t_k, rounded up to whole equity samples so a sample falls exactly on t_k."""
    sample = cfg.report.equity_sample_minutes * 60 * NS
    need = cfg.warmup_bars * cfg.interval_ns
    return pd.Timedelta(math.ceil(need / sample) * sample, unit="ns")


def fold_backtest_config(
    cfg: WalkForwardConfig,
    fold: Fold,
    which: str,
    model_ids: dict | None = None,
    registry: Path | None = None,
    symbols: list | None = None,
) -> BacktestConfig:
    """The BacktestConfig of one strategy in one fold: the ensemble with the fold's models, or a baseline."""
    trade_start = int(fold.test_start.value)
    start = fold.test_start - warmup_span(cfg)
    notional = cfg.strategy.get("notional_usd")
    if which == "ensemble":
        path = ENSEMBLE_PATH
        config = dict(cfg.strategy) | {
            "registry": str(registry),
            "models": list(model_ids.values()),
            "weights": dict(cfg.train.weights),
            "trade_start": trade_start,
        }
    else:
        path = BASELINE_PATHS[which]
        config = ({"notional_usd": notional} if notional is not None else {}) | getattr(
            cfg.baselines, which
        ).config
        if which == "momentum":
            config["trade_start"] = trade_start
        else:
            start = fold.test_start  # buy-and-hold enters on its first bar: no warm-up to skip
    universe = cfg.universe
    if symbols is not None:  # the baselines trade exactly the ensemble's universe
        from catalog.instruments import symbol_of

        universe = universe.model_copy(
            update={"select": "symbols", "symbols": [symbol_of(s) for s in symbols], "blacklist": []}
        )
    return BacktestConfig(
        name=f"{cfg.name}-fold{fold.index + 1:02d}-{which}",
        catalog=cfg.catalog,
        universe=universe,
        period=PeriodConfig(start=_naive(start), end=_naive(fold.test_end)),
        venue=cfg.venue,
        strategies=[ComponentConfig(path=path, config=config)],
        report={"tearsheet": cfg.report.tearsheet, "equity_sample_minutes": cfg.report.equity_sample_minutes},
        seed=cfg.seed,
    )


def _window_run(cfg: WalkForwardConfig, fold: Fold, run, report_dir: Path) -> WindowRun:
    from backtests.report import write_report

    if cfg.report.fold_reports:
        write_report(run, report_dir)
    equity = window_equity(run.equity.frame(), fold, cfg.venue.starting_balance)
    rate = exit_cost_rate(cfg, run)
    gross_end = float(equity["gross_exposure"].iloc[-1])
    if gross_end > 0:  # positions open at the window end: charge their exit
        equity.iloc[-1, equity.columns.get_loc("equity")] -= gross_end * rate
    fills = run.engine.trader.generate_order_fills_report()
    positions = run.engine.trader.generate_positions_report()
    return WindowRun(equity, window_stats(equity, fold, fills, positions, cfg.venue.starting_balance, rate))


def _close_engine(run) -> None:
    with contextlib.suppress(Exception):  # disposal only frees memory; a failure there changes no result
        run.engine.dispose()


def window_equity(equity: pd.DataFrame, fold: Fold, initial: float) -> pd.DataFrame:
    """The equity samples inside (test_start, test_end], after a row of the starting balance at test_start."""
    before = equity[equity.index < fold.test_start]
    if len(before) and not np.allclose(before[["balance", "equity"]].to_numpy(), initial):
        raise RuntimeError(f"fold {fold.index + 1}: the account moved before its test window started")
    # The window starts flat at the starting balance; a sample taken at test_start itself may already hold
    # the first trades (a decision at t_k fills at t_k), so the samples after it carry them.
    inside = equity[(equity.index > fold.test_start) & (equity.index <= fold.test_end)]
    head = pd.DataFrame(
        {"balance": [initial], "equity": [initial], "gross_exposure": [0.0]}, index=[fold.test_start]
    )
    frame = pd.concat([head, inside])
    frame.index.name = "ts"
    return frame.astype(float)


def exit_cost_rate(cfg: WalkForwardConfig, run) -> float:
    """Cost of closing one USDT of exposure with a market order: taker fee + slippage."""
    fees = [float(i.taker_fee) for i in run.universe.instruments]
    taker = cfg.venue.taker_fee if cfg.venue.taker_fee is not None else (max(fees) if fees else 0.0)
    return taker + cfg.venue.slippage_bps / 10_000


def window_stats(
    equity: pd.DataFrame,
    fold: Fold,
    fills: pd.DataFrame,
    positions: pd.DataFrame,
    initial: float,
    rate: float,
) -> dict:
    from backtests.report import _money, equity_stats

    s = equity_stats(equity, initial, fold.test_start, fold.test_end)
    in_window = (
        fills[(fills["ts_last"] >= fold.test_start) & (fills["ts_last"] <= fold.test_end)]
        if len(fills)
        else fills
    )
    if len(fills) != len(in_window):
        raise RuntimeError(
            f"fold {fold.index + 1}: {len(fills) - len(in_window)} fills outside the test window"
        )
    opened = (
        positions[(positions["ts_opened"] >= fold.test_start) & (positions["ts_opened"] <= fold.test_end)]
        if len(positions)
        else positions
    )
    gross_end = float(equity["gross_exposure"].iloc[-1])
    return {
        "pnl": s["final_equity"] - initial,
        "total_return": s["total_return"],
        "sharpe": s["sharpe"],
        "max_drawdown": s["max_drawdown"],
        "trades": int(len(opened)),
        "fills": int(len(in_window)),
        "fees": float(_money(in_window["commissions"]).sum()) if len(in_window) else 0.0,
        "exit_cost_at_end": gross_end * rate,
        "time_in_market": s["time_in_market"],
    }


# ---- forecast quality -----------------------------------------------------------------------------------
class _CloseCache:
    """Close prices by (instrument, bar close time) from the catalog, read once per symbol."""

    def __init__(self, store, cfg: WalkForwardConfig) -> None:
        self.store, self.cfg = store, cfg
        self._series: dict[str, pd.Series] = {}

    def series(self, instrument_id: str) -> pd.Series:
        if instrument_id not in self._series:
            from catalog.store import bar_type_for

            df = self.store.read_bars_frame(bar_type_for(instrument_id, self.cfg.universe.interval))
            close_time = df["date"] + pd.Timedelta(self.cfg.interval_ns, unit="ns")
            self._series[instrument_id] = pd.Series(df["close"].to_numpy(), index=close_time)
        return self._series[instrument_id]


def forecast_frame(signals: pd.DataFrame, fold: Fold, closes: _CloseCache, cfg) -> pd.DataFrame:
    """The window's signals (bar closed in [test_start, test_end)) with the realised forward log return."""
    cols = ["ts_event", "instrument_id", "direction", "confidence", "forecast"]
    if signals.empty:
        return pd.DataFrame(columns=[*cols, "realised"])
    sig = signals[(signals["ts_event"] >= fold.test_start) & (signals["ts_event"] < fold.test_end)][
        cols
    ].copy()
    ahead = pd.Timedelta(cfg.train.dataset.horizon * cfg.interval_ns, unit="ns")
    realised = np.full(len(sig), np.nan)
    for iid, idx in sig.groupby("instrument_id").indices.items():
        close = closes.series(iid)
        ts = pd.DatetimeIndex(sig["ts_event"].iloc[idx])
        now = close.reindex(ts).to_numpy()
        later = close.reindex(ts + ahead).to_numpy()
        realised[idx] = np.log(later / now)
    sig["realised"] = realised
    return sig.reset_index(drop=True)


def forecast_metrics(frame: pd.DataFrame) -> dict:
    """Pooled rank IC and directional accuracy of the signals, and beside them the cross-sectional rank IC
    (symbols ranked against each other at each bar: mean, t-stat, timestamps; ml.metrics.cross_sectional_ic).
    `realised` is always the raw forward log return, whatever target the models learned: a demeaned model's
    sign is relative to the average symbol, so its directional accuracy here reads an absolute move."""
    from ml.metrics import scores

    ok = frame[np.isfinite(frame["realised"].astype(float)) & np.isfinite(frame["forecast"].astype(float))]
    if len(ok) < 3:
        return {"signals": int(len(frame)), "scored": int(len(ok)), "rank_ic": float("nan"),
                "directional_accuracy": float("nan"), "cs_ic": float("nan"), "cs_ic_t": float("nan"),
                "cs_ic_n": 0}  # fmt: skip
    times = pd.to_datetime(ok["ts_event"], utc=True).astype("int64").to_numpy()
    m = scores(ok["forecast"].to_numpy(float), ok["realised"].to_numpy(float), times)
    return {"signals": int(len(frame)), "scored": int(len(ok))} | {
        k: m[k] for k in ("rank_ic", "directional_accuracy", "cs_ic", "cs_ic_t", "cs_ic_n")
    }


# ---- stitching and the report ---------------------------------------------------------------------------
def stitch(windows: list[pd.DataFrame], initial: float) -> pd.DataFrame:
    """Chain the windows' returns: window k's curve, rescaled to start where window k-1 ended."""
    level, parts = initial, []
    for eq in windows:
        part = eq[["balance", "equity", "gross_exposure"]] * (level / initial)
        if parts:
            part = part.iloc[1:]  # its first row is the previous window's last (same time, same level)
        parts.append(part)
        level = float(part["equity"].iloc[-1])
    frame = pd.concat(parts)
    frame.index.name = "ts"
    return frame


def windows_table(results: list[FoldResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        f = r.fold
        row = {
            "fold": f.index + 1,
            "train_start": f.train_start,
            "train_end": f.train_end,
            "last_train_label": r.last_label_close,
            "test_start": f.test_start,
            "test_end": f.test_end,
            "symbols": len(r.symbols),
            "train_rows": r.train_data["rows"]["train"],
            "validation_rows": r.train_data["rows"]["validation"],
            "models_voting": len(r.model_ids) - len(r.models_left_out),
            "models_left_out": "; ".join(f"{k}: {why}" for k, why in r.models_left_out.items()),
            **{
                k: r.forecast[k]
                for k in ("signals", "scored", "rank_ic", "cs_ic", "cs_ic_t", "directional_accuracy")
            },
        }
        for name, run in r.runs.items():
            row |= {f"{name}_{k}": v for k, v in run.stats.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(cfg: WalkForwardConfig, results: list[FoldResult], stitched: dict, seconds: float) -> dict:
    from backtests.report import equity_stats

    initial = cfg.venue.starting_balance
    start, end = results[0].fold.test_start, results[-1].fold.test_end
    frames = [r.signals for r in results if r.signals is not None and len(r.signals)]
    pooled = pd.concat(frames) if frames else forecast_frame(pd.DataFrame(), None, None, cfg)
    forecast = forecast_metrics(pooled)
    ics = np.array([r.forecast["rank_ic"] for r in results], dtype=float)
    ics = ics[np.isfinite(ics)]
    strategies = {}
    for name, frame in stitched.items():
        s = equity_stats(frame, initial, start, end)
        runs = [r.runs[name].stats for r in results]
        strategies[name] = {
            "pnl": s["final_equity"] - initial,
            **{
                k: s[k] for k in ("final_equity", "total_return", "cagr", "sharpe", "sortino", "max_drawdown")
            },
            "trades": sum(x["trades"] for x in runs),
            "fees": sum(x["fees"] for x in runs),
            "exit_costs_at_window_ends": sum(x["exit_cost_at_end"] for x in runs),
            "positive_windows": sum(x["total_return"] > 0 for x in runs) / len(runs),
        }
    return {
        "name": cfg.name,
        "test_period": {"start": start, "end": end, "days": (end - start).total_seconds() / 86400},
        "schedule": cfg.schedule.model_dump(mode="json"),
        "warmup": {"bars": cfg.warmup_bars, "span": str(warmup_span(cfg))},
        "folds": [
            {
                "fold": r.fold.index + 1,
                "train": [r.fold.train_start, r.fold.train_end],
                "last_train_label": r.last_label_close,
                "test": [r.fold.test_start, r.fold.test_end],
                "model_ids": r.model_ids,
                "models_left_out": r.models_left_out,
                "symbols": r.symbols,
            }
            for r in results
        ],
        "forecast": {
            **forecast,
            "leakage_alarm": leakage_alarm(forecast),
            "rank_ic_mean_of_windows": float(ics.mean()) if len(ics) else None,
            "rank_ic_t_stat": float(ics.mean() / ics.std(ddof=1) * math.sqrt(len(ics)))
            if len(ics) > 1 and ics.std(ddof=1) > 0
            else None,
            "positive_ic_windows": float((ics > 0).mean()) if len(ics) else None,
            "horizon_bars": cfg.train.dataset.horizon,
        },
        "strategies": strategies,
        "seconds": seconds,
    }


def leakage_alarm(forecast: dict) -> str | None:
    """ml.metrics' too-good-to-be-true limits on the out-of-sample signals: a message, or None."""
    from ml.metrics import LeakageSuspected, check_leakage

    try:
        check_leakage("walk-forward ensemble", "out-of-sample windows", forecast, forecast["scored"])
    except LeakageSuspected as err:
        return str(err)
    return None


def plot_walkforward(
    stitched: dict[str, pd.DataFrame], windows: pd.DataFrame, path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ensemble": "#1f77b4", "buy_hold": "#7f7f7f", "momentum": "#ff7f0e"}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=[3, 1])
    for name, frame in stitched.items():
        ax1.plot(frame.index, frame["equity"], lw=1.2 if name == "ensemble" else 0.9, color=colors.get(name),
                 label=name.replace("_", "-"))  # fmt: skip
    bounds = pd.to_datetime(pd.concat([windows["test_start"], windows["test_end"].iloc[-1:]]), utc=True)
    for b in bounds:
        ax1.axvline(b, color="#cccccc", lw=0.7, ls="--", zorder=0)
        ax2.axvline(b, color="#cccccc", lw=0.7, ls="--", zorder=0)
    ax1.set_ylabel("USDT (windows chained)")
    ax1.set_title(f"{title}: out-of-sample windows, stitched")
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    starts = pd.to_datetime(windows["test_start"], utc=True)
    widths = pd.to_datetime(windows["test_end"], utc=True) - starts
    ic = windows["rank_ic"].astype(float).fillna(0.0).to_numpy()
    ax2.bar(starts + widths / 2, ic, width=widths * 0.8, color=np.where(ic >= 0, "tab:green", "tab:red"))
    ax2.axhline(0, color="black", lw=0.6)
    ax2.set_ylabel("rank IC")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    f = summary["forecast"]
    lines = [
        f"test {summary['test_period']['start']} .. {summary['test_period']['end']} "
        f"({summary['test_period']['days']:.1f} days, {len(summary['folds'])} folds)",
        f"forecast: rank IC {_fmt(f['rank_ic'])} pooled, {_fmt(f['rank_ic_mean_of_windows'])} mean of windows "
        f"(t {_fmt(f['rank_ic_t_stat'], '.2f')}), cross-sectional {_fmt(f['cs_ic'])} "
        f"(t {_fmt(f['cs_ic_t'], '.2f')}, {f['cs_ic_n']} bars), directional accuracy "
        f"{_fmt(f['directional_accuracy'])}, {f['scored']} signals",
        f"  {'strategy':<10} {'return':>9} {'sharpe':>7} {'max dd':>8} {'trades':>7} {'fees':>9} {'win wnd':>8}",
    ]
    for name, s in summary["strategies"].items():
        lines.append(
            f"  {name:<10} {s['total_return']:>+9.2%} {_fmt(s['sharpe'], '.2f'):>7} {s['max_drawdown']:>8.2%} "
            f"{s['trades']:>7} {s['fees']:>9.2f} {s['positive_windows']:>8.0%}"
        )
    for fold in summary["folds"]:
        out, n = len(fold["models_left_out"]), len(fold["model_ids"])
        if out:
            sat = ": the ensemble sat the window out in cash" if out == n else ""
            lines.append(f"fold {fold['fold']}: {out} of {n} models left out of the vote{sat} (summary.json)")
    if f.get("leakage_alarm"):
        lines.append(f"WARNING suspected leakage: {f['leakage_alarm']}")
    return "\n".join(lines)


def _fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _naive(ts: pd.Timestamp):
    """UTC wall time without a zone: the form the backtest and train period fields expect."""
    return ts.tz_convert("UTC").tz_localize(None).to_pydatetime()


def _naive_dt(dt):
    if dt is None or dt.tzinfo is None:
        return dt
    return _naive(pd.Timestamp(dt))


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)

"""The ensemble's costs on the research set (100 spot symbols x 90 days, about 2.6M bars).

1. Training time of each model on a seed-sized set (54k train / 12k validation rows, 49 features), with
   the best validation loss beside a longer run of the same model (--long) and the zero-forecast loss.
2. Inference: microseconds per symbol for one batch of 100 symbols, per model and for the ensemble.
3. Backtest: the EnsembleStrategy scoring every bar without trading, the same decisions stored once (`qt
   signals`) and replayed without trading, trading (scoring and replayed), and trading with the Exit Brain and
   the whole risk layer (CHALLENGE_100, moderate, emergency stop), vs the empty strategy on the same catalog in the same run: wall time,
   bars/s, their ratio (target <= 1.5), and the peak memory of each backtest's own `qt backtest` process
   (target <= 4 GB). The models are trained on the
   same 90 days (70/15/15 split), so this measures throughput, not skill: see `qt walkforward` for that.

Prints figures; asserts nothing. `--symbols/--days` shrink it for a quick look.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import write_research_set

from catalog.ingest import ingest
from ml.ensemble import Ensemble, EnsembleError, Member, load_ensemble
from ml.train import KINDS, TrainConfig, build_splits, make_model, train

LONGER = {
    "xgboost": {},
    "lightgbm": {},
    "nhits": {"max_epochs": 60, "patience": 8},
    "patchtst": {"max_epochs": 40, "patience": 6},
}


def train_config(catalog: Path, registry: Path) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "catalog": str(catalog),
            "universe": {"select": "all", "market": "futures"},
            "dataset": {"max_train_rows": 54_000, "max_eval_rows": 12_000},
            "registry": str(registry),
        }
    )


def bench_training(cfg: TrainConfig, out: Path, long: bool) -> None:
    result = train(cfg, out, progress=False)
    splits = result.splits
    zero = float(np.mean(splits.validation.labels**2))
    print(
        f"train: {len(splits.train):,} train / {len(splits.validation):,} validation rows, zero-forecast val MSE {zero:.4e}"
    )
    total = 0.0
    from ml.registry import ModelRegistry

    registry = ModelRegistry(cfg.registry)
    for kind in KINDS:
        meta = registry.show(result.model_ids[kind])
        seconds, val = meta["training"]["seconds"], min(meta["training"]["val_loss"])
        total += seconds
        line = f"train {kind:<9}: {seconds:7.1f} s, best val loss {val:.4e} (scaled units for the nets)"
        if long and LONGER[kind]:
            model = make_model(kind, LONGER[kind], cfg)
            rep = model.fit(splits.train, splits.validation)
            line += f"; longer run {rep.seconds:.0f} s, best val loss {min(rep.val_loss):.4e}"
        print(line, flush=True)
    print(
        f"train: all four {total:.0f} s (target <= 300 s on 2 cores); users' system: 2.5 s / 37 s / ~20 min / ~25 min"
    )
    for kind in KINDS:
        m = result.metrics[kind]["test"]
        print(
            f"test {kind:<9}: rank IC {m['rank_ic']:+.4f}, directional accuracy {m['directional_accuracy']:.4f}"
        )


def bench_inference(registry: Path, splits, symbols: int = 100, repeats: int = 50) -> dict[str, float]:
    """Each model's cost on one batch of `symbols` windows, whether or not it would vote (a model with a
    constant forecast is left out of a trading ensemble, but its cost is what a user pays once it learns
    something). Returns seconds per batch by kind."""
    from ml.registry import ModelRegistry

    reg = ModelRegistry(registry)
    models = [reg.load(f"{k}:latest")[0] for k in KINDS]  # the ones just trained, promoted or not
    windows = splits.test.windows(np.arange(symbols), max(m.lookback for m in models))
    per_batch = {}
    for model in models:
        model.predict(windows)  # warm up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.predict(windows)
        per_batch[model.kind] = (time.perf_counter() - t0) / repeats
        print(
            f"inference {model.kind:<9}: {per_batch[model.kind] / symbols * 1e6:8.1f} µs per symbol (batch of {symbols})"
        )
    # Timing only: unit spreads and a passing skill record make every model vote, whatever it learned.
    passing = {"mse": 0.0, "zero_mse": 1.0, "pred_std": 1.0}
    ensemble = Ensemble([Member(m.kind, m.kind, m, 1.0, 1.0, skill=passing) for m in models])
    t0 = time.perf_counter()
    for _ in range(repeats):
        ensemble.vote(windows)
    batch = (time.perf_counter() - t0) / repeats
    print(
        f"inference ensemble : {batch / symbols * 1e6:8.1f} µs per symbol (batch of {symbols}, four models + vote)"
    )
    return per_batch


def bench_backtest(catalog: Path, registry: Path, per_batch: dict[str, float], out: Path) -> None:
    """Each backtest runs in a process of its own (`qt backtest`), so its peak memory is its own."""
    walls, left_out, batches = {}, [], 0
    ensemble = ("strategies.ensemble:EnsembleStrategy", {"registry": str(registry), "notional_usd": 50})
    # Every bar scored and every Signal published and recorded, but no entry: what the features, the models
    # and the vote cost on their own, apart from Nautilus' cost of the orders the trades send.
    scoring_only = (ensemble[0], {**ensemble[1], "trade_start": "2100-01-01"})
    # The research fast path: the same decisions stored once (`qt signals`) and replayed, without inference.
    replay = (ensemble[0], {**ensemble[1], "signal_source": "catalog"})
    replay_only = (ensemble[0], {**replay[1], "trade_start": "2100-01-01"})
    # The whole risk layer: CHALLENGE_100 exits, moderate sizing and gates, the emergency stop.
    risk_layer = {
        "exit_profile": "challenge_100",
        "risk_profile": "moderate",
        "actors": [{"path": "actors.emergency_stop:EmergencyStop"}],
    }
    try:  # the strategy's own rule: a model that did not beat the zero forecast on validation does not vote
        load_ensemble(str(registry), [f"{k}:production" for k in KINDS], dict.fromkeys(KINDS, 1.0))
    except EnsembleError as err:
        print(f"backtest: the ensemble backtests are skipped: {err}", flush=True)
        return
    _store_signals(_config("signals", catalog, ensemble, {}), out / "signals")
    for name, (path, conf), extra_cfg in [
        ("empty", ("strategies.empty:Empty", {}), {}),
        ("scoring", scoring_only, {}),
        ("replay", replay_only, {}),
        ("ensemble", ensemble, {}),
        ("ensemble replay", replay, {}),
        ("ensemble+risk", ensemble, risk_layer),
    ]:
        stats, peak = _backtest_process(_config(name, catalog, (path, conf), extra_cfg), out / name)
        walls[name] = stats["wall_seconds"]
        extra = ""
        if name != "empty":
            voting = sorted({m.split("-")[0] for m in stats["models"]})
            left_out = [k for k in KINDS if k not in voting]
            batches = pd.read_parquet(out / name / "signals.parquet", columns=["ts_event"])[
                "ts_event"
            ].nunique()
            extra = (
                f", {stats['signals']:,} signals, {stats['entries']:,} entries, voting {voting}, "
                f"fingerprint {stats['fingerprint'][:8]}"
            )
        print(
            f"backtest {name:<15}: {stats['bars']:,} bars, run {walls[name]:.1f} s = "
            f"{stats['bars'] / walls[name]:,.0f} bars/s{extra}, peak RSS of its process {peak:.2f} GiB",
            flush=True,
        )
    for name in ("scoring", "replay", "ensemble", "ensemble replay", "ensemble+risk"):
        print(f"backtest: {name} / empty wall-time ratio {walls[name] / walls['empty']:.2f} (target <= 1.5)")
    if left_out:
        more = batches * sum(per_batch[k] for k in left_out)
        print(
            f"backtest: {left_out} learned nothing on this data and did not vote; voting, they would add about "
            f"{more:.0f} s ({batches:,} batches x their measured batch cost): projected ratio "
            f"{(walls['ensemble'] + more) / walls['empty']:.2f} without and "
            f"{(walls['ensemble+risk'] + more) / walls['empty']:.2f} with the risk layer (a projection, not a measurement)"
        )


def _config(name: str, catalog: Path, strategy: tuple[str, dict], extra: dict) -> dict:
    path, conf = strategy
    return {
        "name": name,
        "catalog": str(catalog),
        "universe": {"select": "all", "market": "futures"},
        "venue": {"starting_balance": 100_000, "default_leverage": 1},
        "strategies": [{"path": path, "config": conf}],
        "report": {"tearsheet": False},
        **extra,
    }


def _store_signals(cfg: dict, out: Path) -> None:
    """`qt signals`: the ensemble's decisions over the whole set, stored in the catalog for the replays."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config-in.yaml"
    config.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "quantum_trader.cli", "signals", str(config), "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    print(f"signals : {done.stdout.splitlines()[0]} in {time.perf_counter() - t0:.1f} s", flush=True)


def _backtest_process(cfg: dict, out: Path) -> tuple[dict, float]:
    """`qt backtest` in a child process: its stats.json and its own peak resident memory in GiB.

    The peak is the child's own (`peak_memory_gib` in stats.json, Linux VmHWM): getrusage's ru_maxrss of a
    child counts the pages it shared with this process between fork and exec, so it reported this
    benchmark's own size (the training sets) as the backtest's.
    """
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config-in.yaml"
    config.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "quantum_trader.cli", "backtest", str(config), "--out", str(out)]
    subprocess.run([*command, "--no-progress"], stdout=subprocess.DEVNULL, check=True)
    stats = json.loads((out / "stats.json").read_text())
    return stats, stats["peak_memory_gib"] or float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--long", action="store_true", help="also train longer runs of the nets to compare")
    ap.add_argument("--skip-backtest", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qt-bench-ml-"))
    write_research_set(tmp / "src", args.symbols, args.days)
    ingest([tmp / "src"], tmp / "catalog", progress=False)
    cfg = train_config(tmp / "catalog", tmp / "models")
    bench_training(cfg, tmp / "train", args.long)
    splits, _ = build_splits(cfg)
    per_batch = bench_inference(tmp / "models", splits, min(100, args.symbols * 10))
    if not args.skip_backtest:
        bench_backtest(tmp / "catalog", tmp / "models", per_batch, tmp / "backtests")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

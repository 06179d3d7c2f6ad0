"""Shared helpers for benchmarks: where the real data is, and the 90-day spot research set."""

import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "binance"
sys.path.insert(0, str(ROOT))
TREES = ("xgboost", "lightgbm")  # the models timed in backtests and live; bench_ml.py times the nets


def require_data() -> Path:
    if not SHARED.is_dir():
        print(f"SKIP: real Binance data not found at {SHARED}; benchmarks need the shared data set")
        sys.exit(0)
    return SHARED


def spot_files(limit: int | None = None) -> list[Path]:
    files = sorted(require_data().glob("*_USDT-5m.feather"))
    return files[:limit] if limit else files


def write_research_set(dest: Path, symbols: int = 100, days: int = 90, common_end: bool = False) -> int:
    """The last `days` of each spot symbol, written in freqtrade's futures layout so that they ingest as
    USDT-M perpetuals: the data's MANIFEST offers them as proxies for the matching perpetuals, and spot itself
    is a cash account that cannot short. The files end on different days (up to 3 apart); with `common_end`
    every symbol's window ends at the earliest of their last candles. Returns the row count."""
    (dest / "futures").mkdir(parents=True, exist_ok=True)
    files = spot_files(symbols)
    end = min(pd.read_feather(f, columns=["date"])["date"].max() for f in files) if common_end else None
    rows = 0
    for f in files:
        df = pd.read_feather(f)
        last = df["date"].max() if end is None else end
        df = df[(df["date"] > last - pd.Timedelta(days=days)) & (df["date"] <= last)].reset_index(drop=True)
        df.to_feather(dest / "futures" / f.name.replace("_USDT-5m.feather", "_USDT_USDT-5m-futures.feather"))
        rows += len(df)
    return rows


def train_timing_trees(catalog: Path, registry: Path, start, end) -> Path:
    """The two trees trained on the period into `registry` (a throwaway), promoted whatever they learned.

    For timing only: on the shared data no model beats the zero forecast, so a strategy would refuse to start;
    the real verdict is printed, and a passing skill record is stamped into this registry's copies so that
    the trees vote (their meta.json is not in the files' checksum)."""
    from ml.registry import META_FILE, ModelRegistry
    from ml.skill import verdict
    from ml.train import KINDS, TrainConfig, train

    cfg = TrainConfig.model_validate({
        "catalog": str(catalog),
        "universe": {"select": "all", "market": "futures"},
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "dataset": {"max_train_rows": 54_000, "max_eval_rows": 12_000},
        "models": {kind: {"enabled": kind in TREES} for kind in KINDS},
        "registry": str(registry),
        "promote": False,
    })  # fmt: skip
    t0 = time.perf_counter()
    result = train(cfg, registry.parent / "train", progress=False)
    reg = ModelRegistry(registry)
    for kind in TREES:
        record = reg.get(result.model_ids[kind])
        meta = json.loads((record.path / META_FILE).read_text())
        print(f"timing models: {kind} trained; its real verdict: {verdict(meta['skill'])}", flush=True)
        meta["skill"] = meta["skill"] | {
            "mse": 0.0,
            "zero_mse": 1.0,
            "pred_std": 1.0,
            "timing_only": "benchmarks",
        }
        (record.path / META_FILE).write_text(json.dumps(meta))
        reg.promote(record.id)
    print(f"timing models: trees trained in {time.perf_counter() - t0:.1f} s", flush=True)
    return registry

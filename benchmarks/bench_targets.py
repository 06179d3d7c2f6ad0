"""Which label is worth learning on 5-minute perpetuals: raw, vol-scaled or cross-sectionally demeaned returns.

Trains the same models (default: XGBoost and LightGBM) on the same period and splits of the real catalog once
per target (`dataset.target`, ml.dataset.make_target) and prints, per target, model and split:

* in the target's own units: pooled rank IC, cross-sectional rank IC (mean, t-stat, timestamps), directional
  accuracy, R2, and the validation verdict of ml.skill (MSE below the zero forecast's), with the zero and
  `last` (momentum) baselines of that target beside the models;
* against the raw forward log return, the one thing every target is finally traded on: the pooled and the
  cross-sectional rank IC of the same forecasts (`raw_ic`, `raw_cs_ic`), so the targets compare on one scale;
* `cs_t_1h`: the cross-sectional t-stat on every `horizon`-th bar only. Consecutive 12-bar labels overlap,
  so the all-bars t-stat is optimistic by about sqrt(horizon); this one is not.

Choose on validation; the test rows are printed once, for the record, and must not feed a choice. Evaluation
uses every validation / test anchor (whole cross-sections). Skips, saying why, when the catalog is absent.
Asserts nothing. `python benchmarks/bench_targets.py [--catalog /tmp/qt19/catalog] [--out DIR]`
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import ROOT

from ml.metrics import cross_sectional_ic, spearman
from ml.train import TrainConfig, last_return, train
from quantum_trader.config import parse_config

DEFAULT_CATALOG = Path("/tmp/qt19/catalog")
TARGETS = ("raw", "vol_scaled", "demeaned")


def config_for(base: dict, catalog: Path, out: Path, target: str, models: list[str], args) -> TrainConfig:
    data = dict(base)
    data["catalog"] = str(catalog)
    data["registry"] = str(out / "registry")
    data["promote"] = False
    data["name"] = f"targets-{target}"
    if args.seed is not None:
        data["seed"] = args.seed
    data["dataset"] = dict(base.get("dataset", {})) | {
        "target": target,
        "max_train_rows": args.max_train_rows,
        "max_eval_rows": None,  # every anchor: full cross-sections on validation and test
    }
    data["models"] = {k: {"enabled": True, "params": {}} for k in models}
    data["weights"] = {k: 1.0 for k in models}
    return parse_config(TrainConfig, data, "bench_targets")


def raw_scores(pred: np.ndarray, ws, horizon: int, interval_ns: int) -> dict:
    """The forecasts against the raw forward return, and the non-overlapping cross-sectional t-stat."""
    raw = ws.forward_returns
    every_h = (ws.times // interval_ns) % horizon == 0
    return {
        "raw_ic": spearman(pred, raw),
        "raw_cs_ic": cross_sectional_ic(pred, raw, ws.times)["mean"],
        "cs_t_1h": cross_sectional_ic(pred[every_h], ws.labels[every_h], ws.times[every_h])["t_stat"],
    }


def rows_of(target: str, result, cfg: TrainConfig) -> list[dict]:
    interval_ns = 300 * 10**9 if cfg.universe.interval == "5m" else None
    if interval_ns is None:
        raise SystemExit("bench_targets reads 5m catalogs only")
    out = []
    for model, splits in result.metrics.items():
        for split, m in splits.items():
            ws = getattr(result.splits, split)
            if model in result.predictions:
                pred = result.predictions[model][split]
            elif model == "zero":
                pred = np.zeros(len(ws))
            else:  # last: the momentum baseline in the target's units
                pred = last_return(ws)
            row = {"target": target, "model": model, "split": split}
            row |= {k: m[k] for k in ("rank_ic", "cs_ic", "cs_ic_t", "cs_ic_n", "directional_accuracy", "r2")}
            row |= raw_scores(pred, ws, cfg.dataset.horizon, interval_ns)
            skill = result.skill.get(model)
            row["val_skill"] = skill["status"] if skill and split == "validation" else ""
            out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    ap.add_argument("--config", type=Path, default=ROOT / "configs/train/ensemble.yaml")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--models", default="xgboost,lightgbm")
    ap.add_argument("--max-train-rows", type=int, default=54_000)
    ap.add_argument("--seed", type=int, help="the config's seed by default (subsample and model seeds)")
    ap.add_argument("--out", type=Path, help="report folder (default: a temporary one)")
    args = ap.parse_args()
    if not (args.catalog / "data").is_dir():
        print(f"skipped: the real catalog is not at {args.catalog} (ingest the 19 perpetuals there first)")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_targets-"))
    base = yaml.safe_load(args.config.read_text())
    rows = []
    for target in args.targets.split(","):
        cfg = config_for(base, args.catalog, out, target, args.models.split(","), args)
        t0 = time.perf_counter()
        result = train(cfg, out / target, progress=True)
        print(
            f"{target}: {time.perf_counter() - t0:.0f} s, rows {result.splits and len(result.splits.train)}"
        )
        rows += rows_of(target, result, cfg)
    table = pd.DataFrame(rows)
    table.to_csv(out / "targets.csv", index=False)
    with pd.option_context("display.float_format", "{:+.4f}".format, "display.width", 200):
        for split in ("validation", "test"):
            print(
                f"\n== {split} =="
                + (" (for the record only: choose on validation)" if split == "test" else "")
            )
            print(table[table["split"] == split].drop(columns="split").to_string(index=False))
    print(f"\nreport: {out / 'targets.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

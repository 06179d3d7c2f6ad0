"""Shared helpers for benchmarks: where the real data is, and the 90-day spot research set."""

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "binance"
sys.path.insert(0, str(ROOT))


def require_data() -> Path:
    if not SHARED.is_dir():
        print(f"SKIP: real Binance data not found at {SHARED}; benchmarks need the shared data set")
        sys.exit(0)
    return SHARED


def spot_files(limit: int | None = None) -> list[Path]:
    files = sorted(require_data().glob("*_USDT-5m.feather"))
    return files[:limit] if limit else files


def write_research_set(dest: Path, symbols: int = 100, days: int = 90) -> int:
    """The last `days` of each spot symbol, written in freqtrade's futures layout so that they ingest as
    USDT-M perpetuals: the data's MANIFEST offers them as proxies for the matching perpetuals, and spot itself
    is a cash account that cannot short. Returns the row count."""
    (dest / "futures").mkdir(parents=True, exist_ok=True)
    rows = 0
    for f in spot_files(symbols):
        df = pd.read_feather(f)
        df = df[df["date"] > df["date"].max() - pd.Timedelta(days=days)].reset_index(drop=True)
        df.to_feather(dest / "futures" / f.name.replace("_USDT-5m.feather", "_USDT_USDT-5m-futures.feather"))
        rows += len(df)
    return rows

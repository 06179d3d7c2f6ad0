"""Backtest throughput: the empty strategy vs the EMA-cross baseline on the same catalog, in one run.

Default: the 100-symbol, 90-day spot research set (about 2.6M bars). Prints bars/s and the wall-time
ratio (EMA / empty); asserts nothing.
"""

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from common import write_research_set

from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from catalog.ingest import ingest

STRATEGIES = {
    "empty": ("strategies.empty:Empty", {}),
    "ema_cross": (
        "strategies.ema_cross:EmaCross",
        {"fast_period": 48, "slow_period": 192, "notional_usd": 50},
    ),
}


def run(catalog: Path, name: str) -> tuple[float, int, float]:
    path, conf = STRATEGIES[name]
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all", "market": "futures"},
            "venue": {"starting_balance": 100_000, "default_leverage": 1},
            "strategies": [{"path": path, "config": conf}],
            "report": {"tearsheet": False},
        }
    )
    t0 = time.perf_counter()
    result = run_backtest(cfg, progress=False)
    total = time.perf_counter() - t0
    return result.wall_seconds, result.bars, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--catalog", type=Path, help="reuse a catalog (e.g. from bench_ingest.py --keep)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qt-bench-bt-"))
    catalog = args.catalog
    if catalog is None:
        write_research_set(tmp / "src", args.symbols, args.days)
        catalog = tmp / "catalog"
        ingest([tmp / "src"], catalog, progress=False)
    results = {}
    for name in STRATEGIES:
        wall, bars, total = run(catalog, name)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        results[name] = wall
        print(f"backtest {name:<9}: {bars:,} bars, run {wall:.1f} s = {bars / wall:,.0f} bars/s "
              f"(with loading {total:.1f} s), peak RSS so far {peak / 2**30:.2f} GiB")  # fmt: skip
    print(f"backtest: ema_cross / empty wall-time ratio {results['ema_cross'] / results['empty']:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

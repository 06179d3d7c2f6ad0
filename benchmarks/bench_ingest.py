"""Ingest throughput: the 100-symbol, 90-day spot research set (about 2.6M rows) into a fresh catalog.

Target: 2.6M rows in 30 s or less on 2 cores. Prints figures; asserts nothing.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import write_research_set

from catalog.ingest import ingest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="keep the catalog here (the backtest benchmark can reuse it)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qt-bench-ingest-"))
    rows = write_research_set(tmp / "src", args.symbols, args.days)
    catalog = args.keep or tmp / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    t0 = time.perf_counter()
    summary = ingest([tmp / "src"], catalog, workers=args.workers, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ingest([tmp / "src"], catalog, workers=args.workers, progress=False)
    again = time.perf_counter() - t0
    written = sum(r.rows for r in summary.results)
    print(f"ingest: {args.symbols} symbols x {args.days} days = {rows:,} rows, {written:,} bars written")
    print(f"ingest: first run {first:.1f} s = {rows / first:,.0f} rows/s (target 2.6M rows <= 30 s)")
    print(f"ingest: idempotent re-run {again:.1f} s (same files, nothing rewritten)")
    print(f"ingest: errors {len(summary.errors)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Feature throughput on the 100-symbol, 90-day spot research set (about 2.6M rows).

Batch: compute_features per symbol, target 2.6M rows in 10 s or less on 2 cores.
Online: OnlineFeatures updating 100 symbols together (target well under 10 µs per symbol-bar), and one
symbol alone. Prints figures; asserts nothing.
"""

import argparse
import time

import numpy as np
import pandas as pd
from common import spot_files

from ml.features import OnlineFeatures, compute_features

OHLCV = ["open", "high", "low", "close", "volume"]


def load(symbols: int, days: int) -> list[pd.DataFrame]:
    frames = []
    for f in spot_files(symbols):
        df = pd.read_feather(f, columns=["date", *OHLCV])
        frames.append(df[df["date"] > df["date"].max() - pd.Timedelta(days=days)].reset_index(drop=True))
    return frames


def bench_batch(frames: list[pd.DataFrame]) -> None:
    rows = sum(len(f) for f in frames)
    t0 = time.perf_counter()
    for frame in frames:
        compute_features(frame)
    took = time.perf_counter() - t0
    print(f"batch: {len(frames)} symbols, {rows:,} rows in {took:.2f} s = {rows / took:,.0f} rows/s")
    print(f"batch: 2.6M rows would take {2.6e6 / (rows / took):.1f} s on one core (target <= 10 s)")


def bench_online_together(frames: list[pd.DataFrame], steps: int) -> None:
    tails = [f[OHLCV].to_numpy()[-steps:] for f in frames if len(f) >= steps]
    bars = np.stack(tails, axis=1)  # (steps, symbols, 5)
    n = bars.shape[1]
    slots = np.arange(n)
    online = OnlineFeatures(n_slots=n)
    t0 = time.perf_counter()
    for step in bars:
        online.update(slots, *step.T)
    took = time.perf_counter() - t0
    per = took / (steps * n) * 1e6
    print(
        f"online: {n} symbols x {steps} bars together: {per:.2f} µs per symbol-bar, "
        f"{took / steps * 1e3:.2f} ms per update (target well under 10 µs)"
    )


def bench_online_single(frame: pd.DataFrame, steps: int) -> None:
    bars = frame[OHLCV].to_numpy()[-steps:]
    online = OnlineFeatures(n_slots=1)
    t0 = time.perf_counter()
    for bar in bars:
        online.update_one(0, *bar)
    took = time.perf_counter() - t0
    print(f"online: one symbol x {len(bars)} bars: {took / len(bars) * 1e6:.0f} µs per bar (update_one)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--steps", type=int, default=2000, help="bars replayed by the online benchmarks")
    args = ap.parse_args()
    frames = load(args.symbols, args.days)
    bench_batch(frames)
    bench_online_together(frames, args.steps)
    bench_online_single(frames[0], args.steps)


if __name__ == "__main__":
    main()

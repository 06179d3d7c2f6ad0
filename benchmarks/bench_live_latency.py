"""Live latency on loopback: what a 100-symbol bar close costs the live node, through the unchanged Nautilus
Binance adapter and the fake exchange (live/fake_exchange).

- Data: the last `--days` of the research set's spot symbols (as USDT-M proxies, see common.py), ingested.
- Models: the two trees, trained on the days before the replay (timing only: common.train_timing_trees); the
  nets' cost per batch is bench_ml.py's inference figure.
- Node: `qt live` with configs/live/ensemble_challenge100.yaml (EnsembleStrategy, CHALLENGE_100 exits, the
  moderate risk profile and its gates, the emergency stop) on all the symbols, no Redis, warm-up 400 bars,
  against the fake with speed 0; the benchmark closes `--steps` bars, one every `--pause` seconds.
- Figures: the strategy's own per-batch latency (`EnsembleStrategy.batch_latency`): from its batch alert
  firing to the last order of the batch submitted (features, trees, vote, gates, order submission), and that
  plus how late the alert fired. The wait for the other symbols' klines before the alert (`batch_delay_ms`,
  500 ms by default) is a setting, not work, and is not in these figures.

Prints figures; asserts nothing. The machine is shared: note the load.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from common import ROOT, TREES, require_data, train_timing_trees, write_research_set

from catalog.ingest import ingest
from catalog.instruments import symbol_of
from catalog.store import CatalogStore
from live.fake_exchange.server import FakeBinance

WARMUP_BARS = 400
KEYS = {"BINANCE_FUTURES_TESTNET_API_KEY": "bench", "BINANCE_FUTURES_TESTNET_API_SECRET": "bench"}


def live_config(symbols: list[str], registry: Path, fake, batch_delay_ms: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "live" / "ensemble_challenge100.yaml").read_text())
    cfg.pop("message_bus", None)  # streams need Redis; this node runs without
    strategy = cfg["strategies"][0]["config"]
    strategy |= {"models": [f"{k}:production" for k in TREES], "batch_delay_ms": batch_delay_ms}
    strategy["weights"] = {k: strategy["weights"][k] for k in TREES}
    return cfg | {
        "name": "bench_live_latency",
        "trader_id": "BENCH-001",
        "symbols": symbols,
        "leverage": {"default": 5},
        "models": str(registry),
        "endpoints": {"http": fake.http_url, "ws": fake.ws_url},
        "redis": {"enabled": False},
        "flatten_on_stop": True,
        "warmup_bars": WARMUP_BARS,
        "reconciliation": {"startup_delay_secs": 0},
        "timeouts": {"connection": 30, "reconciliation": 30, "disconnection": 5, "post_stop": 1},
    }


def wait_for(log: Path, text: str, node: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the node never logged {text!r} (exit {node.poll()}):\n{tail}")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--days", type=int, default=4, help="days of data: training, warm-up and the replay")
    ap.add_argument("--steps", type=int, default=150, help="bar closes replayed live")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between closes (> the batch delay)")
    ap.add_argument("--batch-delay-ms", type=int, default=500)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    require_data()
    work = Path(tempfile.mkdtemp(prefix="qt-bench-latency-"))
    load = os.getloadavg()[0]
    print(f"live latency: {args.symbols} symbols, {args.steps} closes; load average {load:.1f} on "
          f"{os.cpu_count()} cores; work {work}", flush=True)  # fmt: skip
    rows = write_research_set(work / "src", args.symbols, args.days, common_end=True)
    catalog = work / "catalog"
    ingest([work / "src"], catalog, progress=False)
    store = CatalogStore(catalog)
    symbols = sorted(symbol_of(i.id) for i in store.instruments())
    last = max(pd.read_feather(f)["date"].max() for f in (work / "src" / "futures").glob("*.feather"))
    replay_start = (last - pd.Timedelta(minutes=5 * args.steps)).floor("5min")
    print(f"data: {rows:,} candles of {len(symbols)} symbols; the replay starts {replay_start}", flush=True)
    first = replay_start - pd.Timedelta(days=args.days)
    registry = train_timing_trees(catalog, work / "models", first, replay_start)

    fake = FakeBinance(catalog, symbols, start=replay_start, speed=0)
    with fake.start_in_thread() as threaded:
        cfg_path = work / "live.yaml"
        cfg_path.write_text(yaml.safe_dump(live_config(symbols, registry, fake, args.batch_delay_ms)))
        log = work / "node.log"
        env = os.environ | KEYS | {"PYTHONPATH": str(ROOT)}
        with open(log, "w") as out:
            node = subprocess.Popen(
                [sys.executable, "-m", "quantum_trader.cli", "live", str(cfg_path), "--duration", "3600"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        try:
            t0 = time.perf_counter()
            wait_for(log, "Warm-up done", node, timeout=300)
            print(f"node: started and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
            step_s = []
            for i in range(args.steps):
                t1 = time.perf_counter()
                threaded.step()
                step_s.append(time.perf_counter() - t1)
                time.sleep(args.pause)
                if (i + 1) % 50 == 0:
                    print(f"replay: {i + 1}/{args.steps} closes", flush=True)
            state = threaded.state()
            node.send_signal(signal.SIGINT)
            node.wait(timeout=120)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
    text = log.read_text(errors="replace")
    found = re.search(r"Batch latency over .*", text)
    print(f"fake: {len(symbols)} klines per close sent in {pd.Series(step_s).median() * 1e3:.1f} ms (median); "
          f"{len(state['fills'])} fills, {len(state['positions'])} positions open before the stop")  # fmt: skip
    print(f"node exit {node.returncode}; {text.count('[ERROR]')} ERROR lines")
    print(f"live latency: {found.group(0) if found else 'no batch latency line: see ' + str(log)}")
    print(f"load average now {os.getloadavg()[0]:.1f} (was {load:.1f})")
    if args.keep or not found:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

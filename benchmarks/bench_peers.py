"""`qt backtest` against its peers on the same bars, in one run: bare Nautilus and freqtrade.

Default: the 19 shared USDT-M perpetuals, the 90 days to 2026-02-19 (bars closing in 2025-11-21..2026-02-19,
about 455k bars), EMA 12/26 long/short, 1,000 USDT per entry. Every run is its own process (fair memory and
GC), timed from start to exit; peak = that process' own max RSS.

- qt EMA: `qt backtest` with strategies.ema_cross:EmaCross 12/26, notional_usd 1000 and the project's
  truthful defaults (fees, funding, 2 bps slippage, liquidation guard, leverage 5), universe select all,
  tearsheet off, and 100,000 USDT so that no entry is refused for margin (with the default 10,000 the account
  runs dry and refuses most entries; the margin rejections are printed and should be 0). The runner's venue
  is NETTING. qt empty: the same with strategies.empty:Empty, the floor.
- bare Nautilus: benchmarks/peers/bare_nautilus.py, the same EMA with a 2% stop-market on each position,
  HEDGING (as the auditors' harness), analyzer off. bare NETTING: the same script with OmsType.NETTING, the OMS
  `qt backtest` and the live node use (NETTING gives the live node the backtest's position ids and its restart
  recovery, see README), with the project's snapshot memo; it is the like-for-like yardstick.
- qt ensemble+risk: `qt backtest` of configs/backtests/ensemble_challenge100.yaml (EnsembleStrategy,
  CHALLENGE_100 exits, moderate risk profile, emergency stop, 10,000 USDT at 5x) on the same bars, with the
  two trees (XGBoost, LightGBM) trained on the period itself. For timing only: on these bars no model beats
  the zero forecast, so the strategy would refuse to start; the benchmark stamps a passing skill record into
  its own temporary registry (the real verdict is printed) so that the trees vote. The nets' cost per batch
  is measured by bench_ml.py. Skipped with --no-ensemble.
- freqtrade: `freqtrade backtesting` in its own venv (installed once under --freqtrade-venv), the same EMA
  with a 2% stoploss, futures, isolated margin, leverage 1 (benchmarks/peers/freqtrade_peer.py). Skipped, with
  the reason, where it cannot be installed or run.

All three enter at each cross of the EMAs (a stopped-out symbol waits for the next), so trades ~ crosses, and
all three read the same candles: the period's rows of the shared files, written in freqtrade's layout to a
temp folder that freqtrade reads and the project's ingest turns into the catalog (or --catalog DIR).
"run s" is each engine's own loop (engine.run; freqtrade's Backtesting.backtest, after its indicators);
"process s" is the whole command. Prints figures; asserts nothing. The machine is shared: note the load.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from common import ROOT, SHARED, TREES, require_data, train_timing_trees
from peers import freqtrade_peer

from catalog.ingest import ingest
from catalog.store import CatalogStore

END = pd.Timestamp("2026-02-19", tz="UTC")
STEP = pd.Timedelta("5min")
QT_RUNS = {
    "qt EMA": ("strategies.ema_cross:EmaCross", {"fast_period": 12, "slow_period": 26, "notional_usd": 1000}),
    "qt empty": ("strategies.empty:Empty", {}),
}


def write_period_set(dest: Path, symbols: int | None, start: pd.Timestamp, end: pd.Timestamp) -> int:
    """The perpetuals' candles closing in [start, end] (and their funding and mark rows around it), in
    freqtrade's futures layout. Returns the candle count."""
    (dest / "futures").mkdir(parents=True, exist_ok=True)
    files = sorted((SHARED / "futures").glob("*_USDT_USDT-5m-futures.feather"))[:symbols]
    rows = 0
    for candles in files:
        df = pd.read_feather(candles)
        df = df[(df["date"] >= start - STEP) & (df["date"] <= end - STEP)].reset_index(drop=True)
        df.to_feather(dest / "futures" / candles.name)
        rows += len(df)
        pair = candles.name.removesuffix("-5m-futures.feather")
        for extra in (f"{pair}-1h-funding_rate.feather", f"{pair}-1h-mark.feather"):
            if (SHARED / "futures" / extra).exists():
                ex = pd.read_feather(SHARED / "futures" / extra)
                ex = ex[(ex["date"] >= start - pd.Timedelta("1D")) & (ex["date"] <= end)]
                ex.reset_index(drop=True).to_feather(dest / "futures" / extra)
    return rows


def timed(cmd: list[str], log: Path, cwd: Path = ROOT) -> tuple[float, float, int]:
    """Runs `cmd` with the worktree on PYTHONPATH; (wall seconds, peak RSS GiB, exit code)."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 2**20, proc.returncode


def failure(rc: int, log: Path) -> dict:
    """The error: the log's last line that names one (else its last line)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln] or lines or ["(no output)"]
    return {"error": f"exit {rc}: {errors[-1][-200:]} (log {log})"}


def peer_config(name: str, catalog: Path, start, end) -> dict:
    path, conf = QT_RUNS[name]
    return {
        "name": f"peers-{name.replace(' ', '_')}",
        "catalog": str(catalog),
        "universe": {"select": "all", "market": "futures", "interval": "5m"},
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "venue": {
            "starting_balance": 100_000
        },  # 10,000 runs dry: 17k trades pay about 24k in fees and slippage
        "strategies": [{"path": path, "config": conf}],
        "report": {"tearsheet": False},
    }


def ensemble_config(registry: Path, catalog: Path, start, end) -> dict:
    """configs/backtests/ensemble_challenge100.yaml on these bars, voting with the two trees."""
    cfg = yaml.safe_load((ROOT / "configs" / "backtests" / "ensemble_challenge100.yaml").read_text())
    strategy = cfg["strategies"][0]["config"]
    strategy |= {"registry": str(registry), "models": [f"{k}:production" for k in TREES]}
    strategy["weights"] = {k: strategy["weights"][k] for k in TREES}
    return cfg | {
        "name": "peers-ensemble",
        "catalog": str(catalog),
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "report": {"tearsheet": False},
    }


def run_qt(name: str, cfg: dict, work: Path) -> dict:
    slug = name.replace(" ", "_").replace("+", "_")
    (work / f"{slug}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    out = work / f"report-{slug}"
    cli = "import sys; from quantum_trader.cli import main; sys.exit(main())"
    cmd = [
        sys.executable,
        "-c",
        cli,
        "backtest",
        str(work / f"{slug}.yaml"),
        "--out",
        str(out),
        "--no-progress",
    ]
    wall, peak, rc = timed(cmd, work / f"{slug}.log")
    if rc:
        return failure(rc, work / f"{slug}.log")
    stats = json.loads((out / "stats.json").read_text())
    orders = pd.read_csv(out / "orders.csv")
    if orders.empty:  # no orders: the report wrote no columns
        orders = pd.DataFrame({"tags": [], "status": []})
    guard = orders["tags"].astype(str).str.contains("LIQUIDATION")
    return {
        "run_s": stats["wall_seconds"], "process_s": wall, "peak_gib": peak, "bars": stats["bars"],
        "trades": stats["trades"], "orders": len(orders), "guard_stops": int(guard.sum()),
        "guard_cancelled": int((guard & (orders["status"] == "CANCELED")).sum()),
        "margin_rejections": stats.get("margin_rejections", 0),
    }  # fmt: skip


def run_bare(catalog: Path, work: Path, start, end, oms: str = "HEDGING") -> dict:
    script = Path(__file__).parent / "peers" / "bare_nautilus.py"
    result = work / f"bare-{oms}.json"
    cmd = [sys.executable, str(script), str(catalog), start.isoformat(), end.isoformat(), str(result), oms]
    wall, peak, rc = timed(cmd, work / f"bare-{oms}.log")
    if rc:
        return failure(rc, work / f"bare-{oms}.log")
    return json.loads(result.read_text()) | {"process_s": wall, "peak_gib": peak}


def run_freqtrade(python: Path, catalog: Path, src: Path, work: Path, start, end) -> dict:
    instruments = sorted(CatalogStore(catalog).instruments(), key=lambda i: str(i.id))
    instruments = [i for i in instruments if str(i.id).endswith("-PERP.BINANCE")]
    freqtrade_peer.prepare(work, instruments)
    timerange = f"{start:%Y%m%d}-{end:%Y%m%d}"
    wall, peak, rc = timed(
        freqtrade_peer.command(python, work, src, timerange), work / "freqtrade.log", cwd=work
    )
    result = work / "ft_result.json"
    if rc or not result.exists():
        return failure(rc, work / "freqtrade.log")
    return json.loads(result.read_text()) | {"process_s": wall, "peak_gib": peak}


def progress(name: str, result: dict) -> dict:
    if "error" in result:
        print(f"{name} SKIPPED: {result['error']}", flush=True)
    else:
        print(f"{name}: {result['process_s']:.1f} s, {result['trades']:,} trades", flush=True)
    return result


def print_table(results: dict) -> None:
    bare = results.get("bare Nautilus", {})
    print(f"\n{'run':<16} {'run s':>7} {'process s':>9} {'trades':>7} {'orders':>7} {'bars':>8} "
          f"{'peak GiB':>8} {'x bare run':>10} {'x bare process':>14}")  # fmt: skip
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<16} skipped: {r['error']}")
            continue
        x_run = f"{r['run_s'] / bare['run_s']:.2f}" if bare.get("run_s") else "-"
        x_proc = f"{r['process_s'] / bare['process_s']:.2f}" if bare.get("process_s") else "-"
        bars = f"{r['bars']:,}" if "bars" in r else "-"
        print(f"{name:<16} {r['run_s']:>7.1f} {r['process_s']:>9.1f} {r['trades']:>7,} {r['orders']:>7,} "
              f"{bars:>8} {r['peak_gib']:>8.2f} {x_run:>10} {x_proc:>14}")  # fmt: skip


def print_ratios(results: dict) -> None:
    qt, bare, ft = (results.get(k, {}) for k in ("qt EMA", "bare Nautilus", "freqtrade"))
    netting = results.get("bare NETTING", {})
    if "run_s" in qt and "run_s" in bare:
        print(f"qt EMA / bare Nautilus: {qt['run_s'] / bare['run_s']:.2f} (engine.run), "
              f"{qt['process_s'] / bare['process_s']:.2f} (process); target <= 1.1")  # fmt: skip
    if "run_s" in qt and "run_s" in netting:
        print(f"qt EMA / bare NETTING: {qt['run_s'] / netting['run_s']:.2f} (engine.run), "
              f"{qt['process_s'] / netting['process_s']:.2f} (process); "
              f"Nautilus NETTING / HEDGING: {netting['run_s'] / bare['run_s']:.2f}")  # fmt: skip
    if "run_s" in qt and "run_s" in ft:
        print(f"qt EMA / freqtrade: {qt['process_s'] / ft['process_s']:.2f} (process), "
              f"{qt['run_s'] / ft['run_s']:.2f} (engine.run / freqtrade's trade loop)")  # fmt: skip
    ens = results.get("qt ensemble+risk", {})
    if "run_s" in ens and "run_s" in ft:
        print(f"qt ensemble+risk / freqtrade EMA: {ens['process_s'] / ft['process_s']:.2f} (process), "
              f"{ens['run_s'] / ft['run_s']:.2f} (engine.run / freqtrade's trade loop); target <= 1.0")  # fmt: skip
    if "left_open" in ft:
        print(f"freqtrade {ft['version']}: trades include {ft['left_open']} left open at the end (force-exited); "
              "its orders are entries and exits (a backtest's stoploss is no order)")  # fmt: skip
    if "guard_stops" in qt:
        print(f"qt EMA orders: {qt['orders']:,}, of them {qt['guard_stops']:,} liquidation-guard stops "
              f"({qt['guard_cancelled']:,} cancelled); margin rejections {qt['margin_rejections']}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=90, help="the last N days to 2026-02-19")
    ap.add_argument("--symbols", type=int, help="the first N perpetuals by name (default all 19)")
    ap.add_argument("--catalog", type=Path, help="use this catalog instead of ingesting the period")
    ap.add_argument("--freqtrade-venv", type=Path, default=freqtrade_peer.DEFAULT_VENV)
    ap.add_argument("--no-freqtrade", action="store_true", help="skip freqtrade")
    ap.add_argument("--no-ensemble", action="store_true", help="skip the ensemble row")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, reports, configs)")
    args = ap.parse_args()
    require_data()
    start = END - pd.Timedelta(days=args.days)
    work = Path(tempfile.mkdtemp(prefix="qt-bench-peers-"))
    load = os.getloadavg()[0]
    print(f"peers: {args.symbols or 'all'} perpetuals, bars closing {start:%Y-%m-%d}..{END:%Y-%m-%d}; "
          f"load average {load:.1f} on {os.cpu_count()} cores; work {work}", flush=True)  # fmt: skip

    python, ft_note = None, "--no-freqtrade"
    if not args.no_freqtrade:
        python, ft_note = freqtrade_peer.ensure_freqtrade(args.freqtrade_venv)
        print(f"freqtrade {ft_note}" if python else f"freqtrade SKIPPED: {ft_note}", flush=True)

    rows = write_period_set(work / "src", args.symbols, start, END)
    catalog = args.catalog
    if catalog is None:
        catalog = work / "catalog"
        t0 = time.perf_counter()
        summary = ingest([work / "src"], catalog, progress=False)
        print(f"ingest: {rows:,} candles of {len(summary.results)} symbols in {time.perf_counter() - t0:.1f} s "
              f"({len(summary.errors)} errors)", flush=True)  # fmt: skip

    results: dict[str, dict] = {}
    for name in QT_RUNS:
        results[name] = progress(name, run_qt(name, peer_config(name, catalog, start, END), work))
    if not args.no_ensemble:
        registry = train_timing_trees(catalog, work / "models", start, END)
        cfg = ensemble_config(registry, catalog, start, END)
        results["qt ensemble+risk"] = progress("qt ensemble+risk", run_qt("qt ensemble+risk", cfg, work))
    results["bare Nautilus"] = progress("bare Nautilus", run_bare(catalog, work, start, END))
    results["bare NETTING"] = progress("bare NETTING", run_bare(catalog, work, start, END, "NETTING"))
    if python is not None:
        results["freqtrade"] = progress(
            "freqtrade", run_freqtrade(python, catalog, work / "src", work, start, END)
        )
    else:
        results["freqtrade"] = {"error": ft_note}

    print_table(results)
    print_ratios(results)
    print(f"load average now {os.getloadavg()[0]:.1f} (was {load:.1f})")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`qt`: the one command-line entry point. Each subcommand is a thin shell over a library function."""

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from quantum_trader.config import ConfigError

EXIT_USAGE = 2
# The files a backtest's report line points at; a report clears its files first, so one there is this run's.
_SHOWN_REPORT_FILES = ("stats.json", "equity.png", "exits.png", "tearsheet.html", "per_symbol.csv")
# Errors that explain themselves (bad models, no models, suspected leakage): a message, not a traceback.
_REPORTED_ERRORS = {"ModelLoadError", "EnsembleError", "LeakageSuspected", "RegistryError"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:
        if type(err).__name__ not in _REPORTED_ERRORS:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE if type(err).__name__ != "LeakageSuspected" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qt", description="Quantum Trader: ML trading on NautilusTrader")
    sub = parser.add_subparsers(dest="command", required=True)
    _data_commands(sub.add_parser("data", help="ingest, check, generate and download market data"))

    bt = sub.add_parser("backtest", help="run a backtest from a YAML config")
    bt.add_argument("config", type=Path)
    bt.add_argument("--catalog", type=Path, help="override the config's catalog path")
    bt.add_argument("--out", type=Path, help="report folder (default runs/<name>-<time>)")
    bt.add_argument("--no-progress", action="store_true")
    bt.set_defaults(func=cmd_backtest)

    tr = sub.add_parser("train", help="train the configured models, print metrics, register them")
    tr.add_argument("config", type=Path)
    tr.add_argument("--catalog", type=Path, help="override the config's catalog path")
    tr.add_argument("--registry", type=Path, help="override the config's registry folder")
    tr.add_argument("--out", type=Path, help="report folder (default runs/train-<name>-<time>)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    sg = sub.add_parser(
        "signals",
        help="compute a backtest config's ensemble signals in batch and store them in its catalog for replay",
    )
    sg.add_argument("config", type=Path, help="a backtest config with one EnsembleStrategy")
    sg.add_argument("--catalog", type=Path, help="override the config's catalog path")
    sg.add_argument("--replace", action="store_true", help="delete the universe's stored signals first")
    sg.add_argument("--no-progress", action="store_true")
    sg.set_defaults(func=cmd_signals)

    wf = sub.add_parser("walkforward", help="retrain on a rolling window, trade each unseen window, stitch")
    wf.add_argument("config", type=Path)
    wf.add_argument("--catalog", type=Path, help="override the config's catalog path")
    wf.add_argument("--out", type=Path, help="report folder (default runs/walkforward-<name>-<time>)")
    wf.add_argument("--ray", action="store_true", help="run the folds as Ray tasks (a local Ray by default)")
    wf.add_argument("--cpus", type=int, help="with --ray: CPUs of the local Ray (default: all)")
    wf.add_argument("--address", help="with --ray: join this Ray cluster instead of starting a local one")
    wf.add_argument("--no-progress", action="store_true")
    wf.set_defaults(func=cmd_walkforward)

    sw = sub.add_parser(
        "sweep", help="a grid of trading-rule parameters over a backtest config, each point a Ray task"
    )
    sw.add_argument("config", type=Path, help="a sweep config (configs/sweeps/)")
    sw.add_argument("--address", help="join this Ray cluster (default: start a local Ray)")
    sw.add_argument(
        "--cpus", type=int, help="local Ray's CPUs, one backtest each (default: the config's, or all)"
    )
    sw.add_argument("--catalog", type=Path, help="override the backtest config's catalog path")
    sw.add_argument("--out", type=Path, help="report folder (default runs/sweep-<name>-<time>)")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    lv = sub.add_parser("live", help="run the live (or paper) Binance USDT-M node from a YAML config")
    lv.add_argument("config", type=Path)
    lv.add_argument(
        "--mainnet",
        action="store_true",
        help="trade on Binance mainnet (the config must say environment: live)",
    )
    lv.add_argument("--duration", type=float, help="stop gracefully after this many seconds (demos, tests)")
    lv.set_defaults(func=cmd_live)

    pa = sub.add_parser(
        "parity", help="replay a recorded live session as a backtest; compare its signals and order intents"
    )
    pa.add_argument("run_dir", type=Path, help="a run folder written by `qt live` with `record:`")
    pa.add_argument(
        "--out", type=Path, help="where the replay's catalog and records go (default RUN_DIR/parity)"
    )
    pa.set_defaults(func=cmd_parity)

    from quantum_trader.cli_models import add_models_commands

    add_models_commands(sub)

    from quantum_trader.cli_rl import add_rl_commands

    add_rl_commands(sub)

    demo = sub.add_parser("demo", help="the main job on generated data: generate, backtest, report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    demo.add_argument("--symbols", type=int, help="override the config's data.symbols")
    demo.add_argument("--days", type=float, help="override the config's data.days")
    demo.add_argument("--seed", type=int, help="override the config's data.seed")
    demo.set_defaults(func=cmd_demo)

    fx = sub.add_parser(
        "fake-exchange", help="serve a local fake Binance USDT-M venue that replays a catalog (tests, demos)"
    )
    fx.add_argument("--catalog", type=Path, required=True)
    fx.add_argument("--symbols", nargs="+", help="symbols such as BTCUSDT (default: every perpetual)")
    fx.add_argument(
        "--start", help="replay start; earlier bars are history (default: 200 bars in, at most half-way)"
    )
    fx.add_argument("--end", help="replay end (default: the catalog's last bar)")
    fx.add_argument(
        "--speed", type=float, default=300, help="x real time; 300 closes a 5m bar a second; 0 steps"
    )
    fx.add_argument("--port", type=int, default=18765, help="0 picks a free port")
    fx.add_argument("--host", default="127.0.0.1")
    fx.add_argument("--balance", type=float, default=10_000, help="USDT wallet balance")
    fx.add_argument("--state-file", type=Path, help="keep the account in this JSON file across restarts")
    fx.add_argument("--no-align", action="store_true", help="keep catalog timestamps (default: start at now)")
    fx.add_argument(
        "--behind",
        type=int,
        default=0,
        help="start this many bars before the wall-clock bar (stepped replays)",
    )
    fx.set_defaults(func=cmd_fake_exchange)
    return parser


def _data_commands(data: argparse.ArgumentParser) -> None:
    sub = data.add_subparsers(dest="data_command", required=True)
    ing = sub.add_parser("ingest", help="Binance kline zips/CSV, freqtrade data dirs, OHLCV CSV/Parquet")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument("--catalog", type=Path, required=True)
    ing.add_argument("--market", choices=["futures", "spot"], help="override the market inferred from paths")
    ing.add_argument("--symbol", help="override the symbol inferred from file names (one-symbol inputs)")
    ing.add_argument("--interval", help="override the interval inferred from file names")
    ing.add_argument("--on-conflicting-duplicates", choices=["error", "keep_last"], default="error")
    ing.add_argument("--on-invalid-rows", choices=["drop", "error"], default="drop")
    ing.add_argument("--on-high-low", choices=["repair", "drop", "error"], default="repair")
    ing.add_argument("--workers", type=int, default=2)
    ing.set_defaults(func=cmd_ingest)

    chk = sub.add_parser("check", help="per-symbol data-quality report of a catalog")
    chk.add_argument("--catalog", type=Path, required=True)
    chk.add_argument("--strict", action="store_true", help="exit 1 if any symbol has gaps or issues")
    chk.set_defaults(func=cmd_check)

    gen = sub.add_parser("generate", help="write a realistic generated market into a catalog")
    gen.add_argument("--symbols", type=int, default=10)
    gen.add_argument("--days", type=float, default=30)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--start", default="2025-01-01")
    gen.add_argument("--catalog", type=Path, required=True)
    gen.set_defaults(func=cmd_generate)

    dl = sub.add_parser("download", help="fetch Binance public kline archives (checksums verified)")
    dl.add_argument("--symbols", nargs="+", required=True)
    dl.add_argument("--start", required=True)
    dl.add_argument("--end", required=True)
    dl.add_argument("--dest", type=Path, required=True)
    dl.add_argument("--interval", default="5m")
    dl.add_argument("--market", choices=["futures", "spot"], default="futures")
    dl.add_argument("--base-url", help="mirror of the public data site (default: Binance's)")
    dl.set_defaults(func=cmd_download)


def cmd_ingest(args) -> int:
    from catalog.ingest import ingest
    from catalog.quality import QualityPolicy

    policy = QualityPolicy(
        on_conflicting_duplicates=args.on_conflicting_duplicates,
        on_invalid_rows=args.on_invalid_rows,
        on_high_low=args.on_high_low,
    )
    overrides = {
        k: v
        for k, v in {"market": args.market, "symbol": args.symbol, "interval": args.interval}.items()
        if v
    }
    summary = ingest(args.paths, args.catalog, policy=policy, overrides=overrides, workers=args.workers)
    _print_table(summary.table())
    for r in summary.results:
        for line in r.roundings:
            print(f"warning: {r.symbol}: {line}", file=sys.stderr)
    for r in summary.errors:
        print(f"error: {r.symbol}: {r.error}", file=sys.stderr)
    rows = sum(r.rows for r in summary.results)
    print(f"{rows:,} new rows from {len(summary.results)} symbols into {args.catalog}")
    return 1 if summary.errors else 0


def cmd_check(args) -> int:
    from catalog.check import check_catalog

    table = check_catalog(args.catalog)
    _print_table(table)
    issues = table[table["issues"] != ""] if len(table) else table
    print(f"{len(table)} series checked, {len(issues)} with issues")
    return 1 if args.strict and len(issues) else 0


def cmd_generate(args) -> int:
    from catalog.ingest import write_generated

    summary = write_generated(args.symbols, args.days, args.seed, args.catalog, start=args.start)
    print(f"generated {args.symbols} symbols x {args.days:g} days ({sum(r.rows for r in summary.results):,} bars) "
          f"into {args.catalog}")  # fmt: skip
    return 0


def cmd_download(args) -> int:
    from catalog.download import DEFAULT_BASE_URL, DownloadError, download_klines

    try:
        res = download_klines(
            args.symbols, args.start, args.end, args.dest, interval=args.interval, market=args.market,
            base_url=args.base_url or DEFAULT_BASE_URL,
        )  # fmt: skip
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"downloaded {len(res.downloaded)}, already present {len(res.skipped)}, not on server {len(res.missing)}"
    )
    return 0


def cmd_backtest(args) -> int:
    from backtests.config import load_backtest_config
    from backtests.report import write_report
    from backtests.runner import run_backtest
    from backtests.sandbox import with_run_local_registry

    cfg = _with_paths(load_backtest_config(args.config), catalog=args.catalog)
    out = _report_folder(args, cfg.name)
    cfg = with_run_local_registry(cfg, out)
    run = run_backtest(cfg, progress=not args.no_progress)
    stats = write_report(run, out)
    _print_stats(stats)
    shown = [name for name in _SHOWN_REPORT_FILES if (out / name).exists()]
    print(f"report: {out}/ ({', '.join(shown)}, orders/fills/positions)")
    if stats.get("tearsheet_error"):
        print(f"error: {stats['tearsheet_error']}; the rest of the report is written", file=sys.stderr)
        return 1
    return 0


def cmd_signals(args) -> int:
    from backtests.config import load_backtest_config
    from backtests.signals import write_backtest_signals

    cfg = _with_paths(load_backtest_config(args.config), catalog=args.catalog)
    count, start, end = write_backtest_signals(cfg, replace=args.replace, progress=not args.no_progress)
    print(f"{count:,} signals from {start} to {end} written to {cfg.catalog}")
    print("replay them: the same config with `signal_source: catalog` in the EnsembleStrategy's config")
    return 0


def cmd_train(args) -> int:
    from ml.train import format_metrics, load_train_config, train

    cfg = _with_paths(load_train_config(args.config), catalog=args.catalog, registry=args.registry)
    out = _report_folder(args, f"train-{cfg.name}")
    result = train(cfg, out, progress=not args.no_progress)
    print(format_metrics(result))
    print(f"models: {result.model_ids}")
    promoted = [kind for kind in result.model_ids if kind not in result.not_promoted]
    if cfg.promote and promoted:
        print(f"promoted to production: {', '.join(promoted)}")
    for why in result.not_promoted.values():
        print(f"not promoted: {why}")
    print(f"report: {out}/ (metrics.csv, metrics.json, predictions.png)")
    return 0


def cmd_walkforward(args) -> int:
    from backtests.walkforward import RayOptions, format_summary, load_walkforward_config, run_walkforward

    cfg = _with_paths(load_walkforward_config(args.config), catalog=args.catalog)
    out = _report_folder(args, f"walkforward-{cfg.name}")
    ray = RayOptions(args.cpus, args.address) if args.ray or args.address else None
    result = run_walkforward(cfg, out, progress=not args.no_progress, ray=ray)
    print(format_summary(result.summary))
    print(f"report: {out}/ (windows.csv, summary.json, equity.png, fold-NN/ with each fold's reports)")
    return 0


def cmd_sweep(args) -> int:
    """Exit codes: 0 every point ran, 1 some points failed (their errors are in results.csv), 2 bad input."""
    from backtests.sweep import format_top, load_sweep_config, run_sweep

    cfg = load_sweep_config(args.config)
    if args.cpus is not None and args.cpus < 1:
        raise ConfigError(f"--cpus must be at least 1, got {args.cpus}")
    overrides = {
        "address": args.address,
        "cpus": args.cpus,
        "catalog": str(args.catalog) if args.catalog else None,
    }
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    out = _report_folder(args, f"sweep-{cfg.name}")
    summary = run_sweep(cfg, out, progress=not args.no_progress)
    import pandas as pd

    print(format_top(pd.read_csv(out / "results.csv"), cfg))
    ray, best = summary["ray"], summary["best"]
    print(f"{summary['points']} points, {summary['failed']} failed, {summary['wall_seconds']:.1f} s on Ray "
          f"({ray['mode']}, {ray['cpus']} CPUs)")  # fmt: skip
    if best:
        print(f"best by {cfg.objective}: point {best['point']} {best['params']}")
    for path in summary["no_effect"]:
        print(f"warning: {path} changed no trade at any of its values")
    print(f"note: {summary['warning']}")
    print(
        f"report: {out}/ (results.csv, sweep.png, summary.json"
        + (", points/NNN/)" if cfg.keep_reports else ")")
    )
    return 1 if summary["failed"] else 0


def cmd_live(args) -> int:
    """Exit codes: 0 clean stop, 2 config or usage error, 3 CRITICAL health (the node did not start trading)."""
    from live.config import load_live_config
    from live.node import run

    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be positive seconds, got {args.duration}")
    cfg = load_live_config(args.config)

    def report(line: str) -> None:
        print(line, file=sys.stderr if line.startswith("CRITICAL") else sys.stdout, flush=True)

    return run(cfg, mainnet=args.mainnet, duration=args.duration, report=report)


def cmd_parity(args) -> int:
    """Exit codes: 0 identical, 1 a difference (the first one is printed), 2 not a recorded session."""
    from live.parity import run_parity

    result = run_parity(args.run_dir, args.out)
    for line in result.lines():
        print(line)
    return 0 if result.identical else 1


def cmd_demo(args) -> int:
    from backtests.demo import run_demo

    run_demo(args.out, args.config, symbols=args.symbols, days=args.days, seed=args.seed)
    return 0


def cmd_fake_exchange(args) -> int:
    from live.fake_exchange.server import FakeBinance, serve

    if args.speed < 0:
        raise ValueError(f"--speed must be >= 0, got {args.speed:g}")
    fake = FakeBinance(
        args.catalog, args.symbols, args.start, args.end, speed=args.speed, balance=args.balance,
        align_to_now=not args.no_align, state_file=args.state_file, behind_bars=args.behind,
    )  # fmt: skip
    logging.getLogger("live.fake_exchange").setLevel(logging.INFO)
    serve(fake, args.host, args.port)
    return 0


def _with_paths(cfg, **paths):
    """The config with the paths given on the command line in place of its own."""
    return cfg.model_copy(update={k: str(v) for k, v in paths.items() if v})


def _report_folder(args, label: str) -> Path:
    return args.out or Path("runs") / f"{label}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def _print_table(df) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False) if len(df) else "(nothing)")


def _print_stats(stats: dict) -> None:
    keys = [
        "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "win_rate", "profit_factor",
        "trades", "fees", "funding", "turnover", "exposure_avg", "liquidations", "bars", "bars_per_second",
    ]  # fmt: skip
    for k in keys:
        v = stats.get(k)
        print(f"  {k:<16} {v:,.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    if stats.get("exits_by_reason"):
        print("  exits by reason   count        pnl    avg R")
        for reason, row in stats["exits_by_reason"].items():
            print(f"    {reason:<18} {row['count']:>4.0f} {row['pnl']:>10.2f} {row['avg_r']:>+8.2f}")
    for key, count in (stats.get("risk_events") or {}).items():
        print(f"  risk {key:<48} {count}")


if __name__ == "__main__":
    sys.exit(main())

"""`qt demo`: generate a market, backtest the configured strategies on it, and say where the reports are."""

from pathlib import Path

from pydantic import Field

from backtests.config import load_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from catalog.ingest import write_generated
from quantum_trader.config import StrictModel, load_config


class DemoData(StrictModel):
    symbols: int = Field(10, ge=1, le=200)
    days: float = Field(30, gt=1)
    seed: int = 7
    start: str = "2025-01-01"


class DemoConfig(StrictModel):
    data: DemoData = DemoData()
    train: str | None = None  # a train config; its models go to <out>/models
    backtests: list[str] = Field(min_length=1)


def run_demo(out: Path, config_path: Path = Path("configs/demo.yaml"), **overrides) -> list[Path]:
    cfg = load_config(DemoConfig, config_path)
    data = cfg.data.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    catalog = out / "catalog"
    if catalog.exists():
        import shutil

        shutil.rmtree(catalog)  # the demo's catalog is disposable; same seed gives the same market
    steps = 3 if cfg.train else 2
    print(
        f"1/{steps} generating {data.symbols} symbols x {data.days:g} days of 5m candles (seed {data.seed})"
    )
    write_generated(data.symbols, data.days, data.seed, catalog, start=data.start)
    registry = out / "models"
    if cfg.train:
        _train(cfg.train, catalog, registry, out, steps)
    reports = []
    for i, path in enumerate(cfg.backtests, 1):
        bt = _with_paths(load_backtest_config(path), catalog, registry)
        print(f"{steps}/{steps} backtest {i}/{len(cfg.backtests)}: {bt.name}")
        stats = write_report(run_backtest(bt), out / bt.name)
        print(
            f"    return {stats['total_return']:+.2%}  max drawdown {stats['max_drawdown']:.2%}  "
            f"trades {stats['trades']}  fees {stats['fees']:.2f}  funding {stats['funding']:+.2f}"
        )
        if stats.get("exits_by_reason"):
            exits = ", ".join(f"{r} {v['count']:.0f}" for r, v in stats["exits_by_reason"].items())
            print(f"    exits by reason: {exits}")
        if stats.get("risk_events"):
            print(
                f"    risk events: {sum(stats['risk_events'].values())} ({len(stats['risk_events'])} kinds)"
            )
        reports.append(out / bt.name)
    shown = ("equity.png", "exits.png", "tearsheet.html", "stats.json")
    print("reports:")
    for report in reports:
        print(f"  {report}/  ({', '.join(name for name in shown if (report / name).exists())})")
    return reports


def _train(config_path: str, catalog: Path, registry: Path, out: Path, steps: int) -> None:
    from ml.train import format_metrics, load_train_config, train

    if registry.exists():
        import shutil

        shutil.rmtree(registry)  # models of an earlier demo market would not fit this one
    cfg = load_train_config(config_path).model_copy(
        update={"catalog": str(catalog), "registry": str(registry)}
    )
    print(f"2/{steps} training the ensemble ({', '.join(k for k, m in cfg.models.items() if m.enabled)})")
    result = train(cfg, out / f"train-{cfg.name}")
    print(format_metrics(result))


def _with_paths(bt, catalog: Path, registry: Path):
    """The demo's own catalog, and its own registry for strategies that load models."""
    strategies = [
        s.model_copy(update={"config": s.config | {"registry": str(registry)}})
        if "registry" in s.config
        else s
        for s in bt.strategies
    ]
    return bt.model_copy(update={"catalog": str(catalog), "strategies": strategies})

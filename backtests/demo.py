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
    backtests: list[str] = Field(min_length=1)


def run_demo(out: Path, config_path: Path = Path("configs/demo.yaml"), **overrides) -> list[Path]:
    cfg = load_config(DemoConfig, config_path)
    data = cfg.data.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    catalog = out / "catalog"
    if catalog.exists():
        import shutil

        shutil.rmtree(catalog)  # the demo's catalog is disposable; same seed gives the same market
    print(f"1/2 generating {data.symbols} symbols x {data.days:g} days of 5m candles (seed {data.seed})")
    write_generated(data.symbols, data.days, data.seed, catalog, start=data.start)
    reports = []
    for i, path in enumerate(cfg.backtests, 1):
        bt = load_backtest_config(path).model_copy(update={"catalog": str(catalog)})
        print(f"2/2 backtest {i}/{len(cfg.backtests)}: {bt.name}")
        stats = write_report(run_backtest(bt), out / bt.name)
        print(
            f"    return {stats['total_return']:+.2%}  max drawdown {stats['max_drawdown']:.2%}  "
            f"trades {stats['trades']}  fees {stats['fees']:.2f}  funding {stats['funding']:+.2f}"
        )
        reports.append(out / bt.name)
    print("reports:\n" + "\n".join(f"  {r}/  (equity.png, tearsheet.html, stats.json)" for r in reports))
    return reports

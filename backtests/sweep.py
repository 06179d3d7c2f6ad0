"""`qt sweep CONFIG`: a grid of trading-rule parameters over one backtest config, each point a backtest run as a
Ray task, collected into a results table, a plot and a summary.

Meant for the research fast path: a base config with `signal_source: catalog` trades decisions stored once by
`qt signals`, so a point costs a backtest without inference, and thresholds, exit and risk profile fields,
sizing and venue settings can be compared on the same decisions. Ray (SPEC section 11: an existing
distributed engine, not a home-made pool) runs the points: a local Ray with `cpus` workers by default, or the
cluster at `address`. A point that fails is a row with its error; the others still run.

Picking the best point of a grid on one window overfits that window: the summary says so, and the chosen
point should be checked on later data (a later period, or `qt walkforward`) before it is trusted.
"""

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from backtests.config import BacktestConfig
from backtests.ray_cluster import start_ray
from backtests.sweep_grid import Point, expand_grid
from quantum_trader.config import StrictModel, load_config, read_yaml_mapping

# The stats of a point's report (backtests/report.py) that the table keeps, in this order.
STATS = (
    "total_return", "sharpe", "sortino", "max_drawdown", "calmar", "trades", "win_rate", "profit_factor",
    "fees", "funding", "turnover", "exposure_avg", "liquidations", "entries", "final_equity",
)  # fmt: skip
OVERFIT_WARNING = (
    "The best point of a grid is chosen on the same window it is scored on, so its figures overstate what it "
    "will do next: check it on a later period (or with `qt walkforward`) before trusting it."
)


class PlotConfig(StrictModel):
    x: str | None = Field(None, description="grid path on the heatmap's x axis (default: the first)")
    y: str | None = Field(None, description="grid path on its y axis (default: the second)")


class SweepConfig(StrictModel):
    name: str = "sweep"
    backtest: str = Field(
        description="the base backtest config file; each point changes the grid's paths in it"
    )
    grid: dict[str, list[Any]] = Field(description="dotted path into the backtest config -> values to try")
    objective: Literal[STATS] = "sharpe"  # type: ignore[valid-type]
    direction: Literal["max", "min"] = "max"
    max_runs: int = Field(100, ge=1, description="refuse a grid with more points than this")
    cpus: int | None = Field(None, ge=1, description="local Ray's CPUs (one per point); null = all of them")
    address: str | None = Field(None, description="join this Ray cluster instead of starting a local one")
    catalog: str | None = Field(None, description="override the backtest config's catalog")
    seed: int | None = Field(None, description="every point's backtest seed; null = the backtest config's")
    keep_reports: bool = Field(True, description="write each point's backtest report under points/NNN/")
    points_per_worker: int = Field(
        1,
        ge=1,
        description="backtests a Ray worker process runs before a fresh one replaces it: 1 isolates every "
        "point (a reused worker kept about 0.33 GiB more after each real-data replay); more saves the imports "
        "(seconds a point) where the backtests are small",
    )
    plot: PlotConfig = PlotConfig()

    @model_validator(mode="after")
    def _plot_axes_in_grid(self):
        for axis in ("x", "y"):
            path = getattr(self.plot, axis)
            if path is not None and path not in self.grid:
                raise ValueError(f"plot.{axis}: {path!r} is not a grid path; allowed: {sorted(self.grid)}")
        return self


def load_sweep_config(path) -> SweepConfig:
    return load_config(SweepConfig, path)


def sweep_points(cfg: SweepConfig) -> list[Point]:
    """The grid applied to the base config, with the sweep's own overrides (catalog, seed, no tearsheet)."""
    base = read_yaml_mapping(cfg.backtest, "backtest config")
    # Nautilus' tearsheet costs seconds a point and is not what a sweep compares.
    base["report"] = {**(base.get("report") or {}), "tearsheet": False}
    # Absolute, so a worker whose working directory is not the driver's (a cluster node) finds it.
    catalog = cfg.catalog or base.get("catalog") or BacktestConfig.model_fields["catalog"].default
    base["catalog"] = str(Path(catalog).resolve())
    if cfg.seed is not None:
        base["seed"] = cfg.seed
    return expand_grid(base, cfg.grid, cfg.max_runs)


def run_point(config: dict, report_dir: str | None) -> dict:
    """One backtest: its stats, `fingerprint`, `wall_seconds`, or `error`. Runs inside a Ray worker; a failure
    is returned, not raised, so the sweep keeps the other points."""
    from backtests.config import parse_backtest_config
    from backtests.report import write_report  # the engine is the workers' business, not the driver's
    from backtests.runner import run_backtest

    started = time.perf_counter()
    try:
        run = run_backtest(parse_backtest_config(config), progress=False)
        if report_dir is None:
            with tempfile.TemporaryDirectory(prefix="qt-sweep-") as scratch:
                stats = write_report(run, Path(scratch), plots=False)
        else:
            stats = write_report(run, Path(report_dir))
    except Exception as err:  # any failure of one point is that point's row, the sweep goes on
        return {
            "error": _one_line(f"{type(err).__name__}: {err}"),
            "wall_seconds": time.perf_counter() - started,
        }
    row = {k: stats.get(k) for k in STATS}
    return row | {"fingerprint": stats["fingerprint"], "wall_seconds": time.perf_counter() - started}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_on_ray(
    points: list[Point], reports: Path | None, progress: bool, points_per_worker: int = 1
) -> dict[int, dict]:
    """Every runnable point as a Ray task (one CPU each); results by point index as the tasks finish."""
    import ray
    from tqdm import tqdm

    # By default a fresh worker process per point (max_calls=1): a reused worker kept about 0.33 GiB more after
    # each real-data replay (peak 1.17, 1.54, 1.86, 2.16 GiB over its first four points), so a long sweep would
    # run out of memory; a new process also leaves no state of one point to the next. It costs the imports.
    task = ray.remote(num_cpus=1, max_retries=0, max_calls=points_per_worker)(run_point)
    pending = {}
    for p in points:
        if p.config is not None:
            folder = str(reports / f"{p.index:03d}") if reports is not None else None
            pending[task.remote(p.config, folder)] = p.index
    results = {}
    with tqdm(total=len(pending), desc="sweep", unit="run", file=sys.stderr, disable=not progress) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except Exception as err:  # the worker died (memory, a crash): that point's error
                    results[index] = {"error": _one_line(f"{type(err).__name__}: {err}")}
                bar.update(1)
    return results


# ---- the sweep ---------------------------------------------------------------------------------------------


def run_sweep(
    cfg: SweepConfig, out: Path, progress: bool = True, echo: Callable[[str], None] = print
) -> dict:
    """Runs the sweep into `out` (results.csv, sweep.png, summary.json, points/NNN/) and returns the summary."""
    points = sweep_points(cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ray_info, started = start_ray(cfg.cpus, cfg.address)
    echo(
        f"sweep {cfg.name}: {len(points)} points on Ray ({ray_info['mode']}, {ray_info['cpus']} CPUs, "
        f"{ray_info['nodes']} node(s))"
    )
    try:
        reports = out.resolve() / "points" if cfg.keep_reports else None
        results = run_on_ray(points, reports, progress, cfg.points_per_worker)
    finally:
        if started:
            import ray

            ray.shutdown()
    wall = time.perf_counter() - t0
    table = results_table(points, results, cfg)
    table.to_csv(out / "results.csv", index=False)
    summary = sweep_summary(cfg, table, results, ray_info, wall, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot_sweep(table, cfg, out / "sweep.png")
    return summary


def results_table(points: list[Point], results: dict[int, dict], cfg: SweepConfig) -> pd.DataFrame:
    """One row per point, best first by the objective; failed points last, with their error. No timings, so the
    same config and data give the same table."""
    rows = []
    for p in points:
        got = results.get(p.index, {}) if p.config is not None else {"error": _one_line(p.error or "")}
        row = {"point": p.index, **{k: _cell(v) for k, v in p.params.items()}}
        row |= {k: got.get(k) for k in STATS} | {
            "fingerprint": got.get("fingerprint"),
            "error": got.get("error"),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    key = pd.to_numeric(table[cfg.objective], errors="coerce")
    table["_key"] = -key if cfg.direction == "max" else key
    table = table.sort_values(["_key", "point"], na_position="last", kind="stable").drop(columns="_key")
    return table.reset_index(drop=True)


def _cell(value: Any) -> Any:
    """A grid value as a table cell: numbers and text as they are, lists and mappings as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def sweep_summary(
    cfg: SweepConfig, table: pd.DataFrame, results: dict, ray_info: dict, wall: float, out: Path
) -> dict:
    ok = table[table["error"].isna()]
    best, worst = (_point_row(ok.iloc[i], cfg) if len(ok) else None for i in (0, -1))
    return {
        "name": cfg.name,
        "backtest": cfg.backtest,
        "objective": cfg.objective,
        "direction": cfg.direction,
        "grid": cfg.grid,
        "points": len(table),
        "failed": int(table["error"].notna().sum()),
        "best": best,
        "worst": worst,
        "no_effect": params_without_effect(table, list(cfg.grid)),
        "ray": ray_info,
        "wall_seconds": wall,
        "point_seconds": {str(i): r.get("wall_seconds") for i, r in sorted(results.items())},
        "reports": str(out / "points") if cfg.keep_reports else None,
        "warning": OVERFIT_WARNING,
    }


def _point_row(row: pd.Series, cfg: SweepConfig) -> dict:
    return {"point": int(row["point"]), "params": {k: _plain(row[k]) for k in cfg.grid}} | {
        k: _plain(row[k]) for k in STATS
    }


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value for JSON and printing: numpy scalars unwrapped, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def params_without_effect(table: pd.DataFrame, params: list[str]) -> list[str]:
    """Grid paths whose values never changed a trade: among the points that agree on every other path, all
    fills were the same. (With a risk profile, for instance, the strategy's `entry_threshold` is the profile's
    `entry_confidence`, so sweeping `entry_threshold` changes nothing.)"""
    ok = table[table["fingerprint"].notna()]
    idle = []
    for p in params:
        others = [q for q in params if q != p]
        groups = ok.groupby(others, dropna=False) if others else [(None, ok)]
        if len(ok) and all(g["fingerprint"].nunique() == 1 for _, g in groups) and ok[p].nunique() > 1:
            idle.append(p)
    return idle


def plot_sweep(table: pd.DataFrame, cfg: SweepConfig, path: Path) -> None:
    """Left: the objective over two grid paths as a heatmap (the best over the other paths), or over one as a
    line. Right: every point's return against its drawdown, labelled by point number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["error"].isna()].copy()
    ok[cfg.objective] = pd.to_numeric(ok[cfg.objective], errors="coerce")
    params = list(cfg.grid)
    x = cfg.plot.x or params[0]
    y = cfg.plot.y or next((p for p in params if p != x), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    if ok.empty:
        left.set_axis_off()
        left.text(0.5, 0.5, "no point ran", ha="center")
    elif y is None:
        _objective_line(left, ok, x, cfg)
    else:
        _objective_heatmap(fig, left, ok, x, y, cfg)
    right.scatter(
        100 * ok["max_drawdown"].astype(float), 100 * ok["total_return"].astype(float), color="#1f77b4"
    )
    for _, row in ok.iterrows():
        right.annotate(f" {row['point']}", (100 * row["max_drawdown"], 100 * row["total_return"]), fontsize=8)
    returns = ok["total_return"].astype(float)
    if len(returns) and returns.min() < 0 < returns.max():  # a zero line that does not squash the points
        right.axhline(0, color="black", lw=0.6)
    right.set_xlabel("max drawdown %")
    right.set_ylabel("total return %")
    right.set_title("each point (point number)")
    right.grid(alpha=0.3)
    failed = len(table) - len(ok)
    fig.suptitle(f"sweep {cfg.name}: {len(table)} points" + (f", {failed} failed" if failed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _objective_heatmap(fig, ax, ok: pd.DataFrame, x: str, y: str, cfg: SweepConfig) -> None:
    how = "max" if cfg.direction == "max" else "min"
    grid = ok.pivot_table(index=y, columns=x, values=cfg.objective, aggfunc=how, dropna=False)
    image = ax.imshow(
        grid.to_numpy(dtype=float), cmap="RdYlGn" if how == "max" else "RdYlGn_r", aspect="auto"
    )
    ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], rotation=30)
    ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
    for (r, c), value in pd.DataFrame(grid.to_numpy()).stack().items():
        ax.annotate(f"{value:.3g}", (c, r), ha="center", va="center", fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    rest = [p for p in cfg.grid if p not in (x, y)]
    ax.set_title(f"{cfg.objective}" + (f" ({how} over {', '.join(rest)})" if rest else ""))
    fig.colorbar(image, ax=ax)


def _objective_line(ax, ok: pd.DataFrame, x: str, cfg: SweepConfig) -> None:
    ax.plot([str(v) for v in ok[x]], ok[cfg.objective], marker="o")
    ax.set_xlabel(x)
    ax.set_ylabel(cfg.objective)
    ax.grid(alpha=0.3)


def format_top(table: pd.DataFrame, cfg: SweepConfig, rows: int = 10) -> str:
    cols = [
        "point",
        *cfg.grid,
        "total_return",
        "sharpe",
        "max_drawdown",
        "trades",
        "win_rate",
        "profit_factor",
    ]
    cols += [c for c in ("fees", cfg.objective) if c not in cols] + ["error"]
    shown = table[cols].head(rows)
    if shown["error"].isna().all():
        shown = shown.drop(columns="error")
    with pd.option_context(
        "display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format
    ):
        return shown.to_string(index=False)

"""What a catalog holds, as frames and figures for research (notebooks/catalog_quality.ipynb): the quality
report per series is `qt data check`'s own (catalog/check.py); this adds the prices, funding and returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from catalog.instruments import symbol_of
from catalog.store import CatalogStore, interval_of, interval_seconds


def close_panel(catalog: Path | str, interval: str | None = None) -> pd.DataFrame:
    """Close prices of every traded-price (LAST) series, a column per symbol, indexed by bar close time; a
    symbol's bars missing at a time are NaN. `interval` picks one bar interval when the catalog holds several
    (default: the most common one)."""
    store = CatalogStore(Path(catalog))
    bar_types = store.bar_types()
    if not bar_types:
        return pd.DataFrame()
    intervals = pd.Series([interval_of(bt) for bt in bar_types])
    interval = interval or intervals.mode().iloc[0]
    step = pd.Timedelta(seconds=interval_seconds(interval))
    columns = {}
    for bt in bar_types:
        if interval_of(bt) == interval:
            frame = store.read_bars_frame(bt)
            columns[symbol_of(bt.instrument_id)] = pd.Series(
                frame["close"].to_numpy(), index=frame["date"] + step
            )
    return pd.DataFrame(columns).sort_index()


def funding_panel(catalog: Path | str) -> pd.DataFrame:
    """Funding rates of every funding series, a column per symbol, indexed by funding time (empty when the
    catalog holds none: generated markets and spot data have no funding)."""
    store = CatalogStore(Path(catalog))
    columns = {}
    for iid in store.funding_instrument_ids():
        frame = store.read_funding_frame(iid)
        columns[symbol_of(iid)] = pd.Series(frame["rate"].to_numpy(), index=frame["date"])
    return pd.DataFrame(columns).sort_index()


def normalised(panel: pd.DataFrame) -> pd.DataFrame:
    """Each column divided by its first price, so symbols of any price level share one axis."""
    first = panel.apply(lambda column: column.dropna().iloc[0] if column.notna().any() else np.nan)
    return panel / first


def log_returns(panel: pd.DataFrame) -> pd.DataFrame:
    """Bar-to-bar log returns per column; a return across a gap (a NaN bar) is NaN, not a multi-bar jump."""
    return np.log(panel).diff()


def return_stats(returns: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: bars, mean and std of the bar return, excess kurtosis, and the largest move either way."""
    return pd.DataFrame(
        {
            "bars": returns.count(),
            "mean": returns.mean(),
            "std": returns.std(),
            "excess_kurtosis": returns.kurt(),
            "min": returns.min(),
            "max": returns.max(),
        }
    )


def coverage_table(check: pd.DataFrame) -> pd.DataFrame:
    """Per symbol, from `check_catalog`'s table: the span of its traded-price bars, the bars present and missing
    inside it, the coverage, the gap count and largest gap, and which other series (mark, funding) it has. A
    symbol with a mark or funding series but no traded-price bars is listed with 0 bars: it cannot be traded."""
    frame = check.assign(symbol=check["instrument"].map(symbol_of))
    bars = frame[frame["kind"] == "ohlcv"].set_index("symbol")
    rows = []
    for symbol, series in frame.groupby("symbol"):
        others = ", ".join(sorted(set(series["kind"]) - {"ohlcv"}))
        if symbol in bars.index:
            b = bars.loc[symbol]
            present, missing = int(b["rows"]), int(b["missing_bars"])
            first, last, gaps, largest = b["first"], b["last"], int(b["gaps"]), b["largest_gap"]
        else:
            present = missing = gaps = 0
            first = last = largest = None
        total = present + missing
        rows.append(
            {"symbol": symbol, "first": pd.Timestamp(first) if first else pd.NaT,
             "last": pd.Timestamp(last) if last else pd.NaT, "bars": present, "missing_bars": missing,
             "coverage": present / total if total else 0.0, "gaps": gaps, "largest_gap": largest, "also": others}
        )  # fmt: skip
    return pd.DataFrame(rows).set_index("symbol")


def coverage_figure(coverage: pd.DataFrame, title: str):
    """A line per symbol from its first to its last traded-price bar (listings show as late starts), red where
    the series has gaps; each label gives the bars and the coverage. Symbols without traded-price bars are
    named in red."""
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    table = coverage.sort_index(ascending=False)
    fig = Figure(figsize=(11, max(2.5, 0.35 * len(table) + 1.2)))
    ax = fig.subplots()
    labels = []
    for y, (symbol, row) in enumerate(table.iterrows()):
        if row["bars"] == 0:
            labels.append(f"{symbol}: no bars ({row['also']} only)")
            continue
        ax.plot([row["first"], row["last"]], [y, y], lw=6, color="#d62728" if row["gaps"] else "#1f77b4")
        gaps = f", {row['gaps']} gaps, largest {row['largest_gap']}" if row["gaps"] else ""
        labels.append(f"{symbol}  {row['bars']:,} bars, {row['coverage']:.2%}{gaps}")
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    for tick, bars in zip(ax.get_yticklabels(), table["bars"], strict=True):
        tick.set_color("#d62728" if bars == 0 else "black")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.set_title(title + " (red: gaps or no bars)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def panel_figure(panel: pd.DataFrame, title: str, ylabel: str, every: str | None = "1h", log: bool = False):
    """A line per column (resampled to the last value of each `every`, so years of 5-minute bars stay light);
    `log` for prices, whose moves are multiplicative (a 20x run would flatten every other line)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    shown = panel.resample(every).last() if every and len(panel) else panel
    fig = Figure(figsize=(11, 5))
    ax = fig.subplots()
    colours = colormaps["tab20" if shown.shape[1] > 10 else "tab10"].colors
    for i, column in enumerate(shown):
        ax.plot(shown.index, shown[column], lw=0.9, label=column, color=colours[i % len(colours)])
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if 0 < shown.shape[1] <= 20:
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def returns_figure(returns: pd.DataFrame, title: str, bins: int = 200):
    """The pooled bar-return distribution on a log count scale (fat tails show as a slow decay), beside a
    normal of the same std, and the std per symbol."""
    from matplotlib.figure import Figure

    pooled = returns.to_numpy().ravel()
    pooled = pooled[np.isfinite(pooled)]
    fig = Figure(figsize=(11, 4.5))
    hist_ax, std_ax = fig.subplots(1, 2, width_ratios=[2, 1])
    if len(pooled):
        counts, edges, _ = hist_ax.hist(pooled, bins=bins, color="#1f77b4", alpha=0.8, label="bar returns")
        centres, sigma = (edges[:-1] + edges[1:]) / 2, pooled.std()
        if sigma > 0:
            normal = len(pooled) * (edges[1] - edges[0]) * np.exp(-0.5 * (centres / sigma) ** 2)
            hist_ax.plot(
                centres,
                normal / (sigma * np.sqrt(2 * np.pi)),
                color="#d62728",
                lw=1,
                label="normal, same std",
            )
        hist_ax.set_yscale("log")
        hist_ax.legend(loc="upper right")
    hist_ax.set_title(title)
    hist_ax.set_xlabel("log return per bar")
    std = returns.std().sort_values()
    std_ax.barh(std.index.astype(str), std.to_numpy() * 100, color="#ff7f0e")
    std_ax.set_title("std per bar (%)")
    std_ax.tick_params(axis="y", labelsize=7)
    for ax in (hist_ax, std_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

"""Research on a finished run folder (backtests/report.py wrote it): its tables, and its signals joined to what
the market did next and to whether they traded. notebooks/run_analysis.ipynb is built on these.

A signal is the decision made at the close of its bar (`ts_event`). Its outcome is the log return over the
`horizon` bars AFTER that close, ln(close[t + h] / close[t]), counted in bars as the training label is
(ml/dataset.py), so an outcome never contains the bar the decision saw. Its confidence is |2 * prob_up - 1|
(ml/ensemble.py): a calibrated ensemble is right on a share (1 + confidence) / 2 of its directional calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SIDES = {"LONG": 1, "SHORT": -1, "FLAT": 0}


@dataclass
class RunFolder:
    """The tables of one report folder that research reads."""

    path: Path
    stats: dict
    config: dict
    equity: pd.DataFrame  # index ts; balance, equity, gross_exposure
    exits: pd.DataFrame  # one row per exit fill (ExitEvent)
    signals: pd.DataFrame  # one row per Signal; trace_id "" when no entry was sent on it
    per_symbol: pd.DataFrame  # index symbol; trades, wins, realized_pnl, fees, funding, net_pnl
    risk_events: pd.DataFrame


def load_run(path: Path | str) -> RunFolder:
    """A report folder's tables; refuses a folder without stats.json, naming what writes one."""
    path = Path(path)
    if not (path / "stats.json").is_file():
        raise FileNotFoundError(
            f"no backtest report at {path}: stats.json missing (`make demo` or `qt backtest CONFIG --out DIR` "
            "writes one)"
        )
    signals_file = path / "signals.parquet"
    return RunFolder(
        path=path,
        stats=json.loads((path / "stats.json").read_text()),
        config=yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {},
        equity=_csv(path / "equity.csv", index_col="ts", parse_dates=["ts"]),
        exits=_csv(path / "exits.csv"),
        signals=pd.read_parquet(signals_file) if signals_file.is_file() else pd.DataFrame(),
        per_symbol=_csv(path / "per_symbol.csv", index_col="symbol"),
        risk_events=_csv(path / "risk_events.csv"),
    )


def _csv(path: Path, **kwargs) -> pd.DataFrame:
    """An empty frame for a table with no rows: pandas cannot read a CSV that has no header."""
    if not path.is_file() or path.stat().st_size <= 1:
        return pd.DataFrame()
    return pd.read_csv(path, **kwargs)


def signal_horizon(registry: Path | str, signals: pd.DataFrame) -> tuple[int, str]:
    """(horizon in bars, bar interval) of the label the signals' models forecast, from their registry metadata;
    refuses models that disagree, since their signals then forecast different things."""
    from ml.registry import ModelRegistry

    if signals.empty:
        raise ValueError("this run has no signals: only the ensemble strategy publishes them")
    ids = sorted({m for ids in signals["model_ids"].unique() for m in str(ids).split(",") if m})
    if not ids:
        raise ValueError(
            "the signals name no model (model_ids is empty): no horizon to measure outcomes over"
        )
    reg = ModelRegistry(registry)
    labels = {i: reg.get(i).meta["label"] for i in ids}
    found = {(int(label["horizon"]), str(label["interval"])) for label in labels.values()}
    if len(found) != 1:
        raise ValueError(f"the signals' models forecast different labels: {labels}")
    return found.pop()


def forward_log_returns(close: pd.Series, horizon: int) -> pd.Series:
    """ln(close[t + horizon] / close[t]) for each bar t (index: bar close time), NaN for the last `horizon`
    bars, whose future is not in the data."""
    log_close = np.log(close.astype(float))
    return log_close.shift(-horizon) - log_close


def load_closes(catalog: Path | str, instrument_ids, interval: str) -> dict[str, pd.Series]:
    """instrument id -> close prices indexed by bar close time (a catalog stores bars by open time)."""
    from catalog.store import CatalogStore, bar_type_for, interval_seconds

    store = CatalogStore(Path(catalog))
    step = pd.Timedelta(seconds=interval_seconds(interval))
    out = {}
    for iid in instrument_ids:
        frame = store.read_bars_frame(bar_type_for(str(iid), interval))
        out[str(iid)] = pd.Series(frame["close"].to_numpy(), index=frame["date"] + step, name=str(iid))
    return out


def join_outcomes(
    signals: pd.DataFrame, closes: dict[str, pd.Series], horizon: int, exits: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The signals with what followed them:

    - `outcome`: the log return over the `horizon` bars after the signal's bar (NaN where the data ends first,
      or where the catalog has no bar closing at the signal's time);
    - `side`: +1 LONG, -1 SHORT, 0 FLAT; `hit`: whether a directional call's sign matched the outcome (NaN for
      FLAT calls and for outcomes that are NaN or exactly 0);
    - `traded`: an entry was sent on it (it carries a trace id); `trade_pnl`: the summed PnL of the exit fills
      of the position it opened (NaN when it did not trade, 0 while that position had no exit).
    """
    out = signals.copy()
    out["outcome"] = np.nan
    for iid, rows in out.groupby("instrument_id").groups.items():
        if str(iid) in closes:
            forward = forward_log_returns(closes[str(iid)], horizon)
            out.loc[rows, "outcome"] = forward.reindex(out.loc[rows, "ts_event"]).to_numpy()
    out["side"] = out["direction"].map(SIDES).astype("int8")
    directional = (out["side"] != 0) & np.isfinite(out["outcome"]) & (out["outcome"] != 0)
    out["hit"] = np.where(directional, np.sign(out["outcome"]) == out["side"], np.nan)
    out["traded"] = out["trace_id"].fillna("") != ""
    pnl = (
        exits.groupby("trace_id")["pnl"].sum() if exits is not None and len(exits) else pd.Series(dtype=float)
    )
    out["trade_pnl"] = np.where(out["traded"], out["trace_id"].map(pnl).fillna(0.0), np.nan)
    return out


def calibration(joined: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Directional calls with a known outcome, binned by confidence into `bins` equal widths of [0, 1]: per bin
    the count, the mean confidence, the hit rate, the hit rate a calibrated ensemble would have there
    ((1 + confidence) / 2) and the mean outcome in the call's direction. Empty bins are left out."""
    calls = joined[joined["hit"].notna()]
    edges = np.linspace(0.0, 1.0, bins + 1)
    grouped = calls.groupby(pd.cut(calls["confidence"], edges, include_lowest=True), observed=True)
    table = pd.DataFrame(
        {
            "count": grouped.size(),
            "confidence": grouped["confidence"].mean(),
            "hit_rate": grouped["hit"].mean(),
            "directional_return": grouped.apply(
                lambda g: float((g["side"] * g["outcome"]).mean()), include_groups=False
            ),
        }
    )
    table["calibrated_hit_rate"] = (1 + table["confidence"]) / 2
    table.index.name = "confidence_bin"
    return table[table["count"] > 0]


def calibration_figure(tables: dict[str, pd.DataFrame], title: str):
    """Hit rate against mean confidence per bin (one line per table, e.g. all calls and the traded ones; a
    marker's area grows with its bin's calls), beside the calibrated line, over the calls per bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6))
    rate_ax, count_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    rate_ax.plot([0, 1], [0.5, 1.0], color="grey", ls="--", lw=1, label="calibrated: (1 + confidence) / 2")
    rate_ax.axhline(0.5, color="black", lw=0.6)
    width = 0.8 / max(len(tables), 1) / 10
    biggest = max((int(t["count"].max()) for t in tables.values() if len(t)), default=1)
    for i, (name, table) in enumerate(tables.items()):
        # a bin of 6 calls swings far more than one of 6,000: the marker's area says how many it holds
        line = rate_ax.plot(table["confidence"], table["hit_rate"], lw=1, label=name)[0]
        sizes = 10 + 190 * table["count"] / biggest
        rate_ax.scatter(table["confidence"], table["hit_rate"], s=sizes, color=line.get_color(), zorder=3)
        count_ax.bar(
            table["confidence"] + (i - (len(tables) - 1) / 2) * width, table["count"], width, label=name
        )
    rate_ax.set_ylabel("directional hit rate")
    rate_ax.set_title(title)
    rate_ax.legend(loc="upper left")
    rate_ax.grid(alpha=0.3)
    count_ax.set_xlabel("confidence (bin mean)")
    count_ax.set_ylabel("calls (log)")
    count_ax.set_yscale("log")
    count_ax.set_xlim(0, 1.03)
    count_ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def outcome_summary(joined: pd.DataFrame) -> pd.DataFrame:
    """Per direction and traded or not: calls, hit rate, mean outcome in the call's direction, mean confidence."""
    frame = joined.assign(directional_return=joined["side"] * joined["outcome"])
    grouped = frame.groupby(["direction", "traded"])
    return pd.DataFrame(
        {
            "signals": grouped.size(),
            "with_outcome": grouped["outcome"].count(),
            "hit_rate": grouped["hit"].mean(),
            "directional_return": grouped["directional_return"].mean(),
            "confidence": grouped["confidence"].mean(),
        }
    )


def per_symbol_figure(per_symbol: pd.DataFrame, title: str):
    """Net PnL per symbol (realised PnL net of fees, plus funding), worst first."""
    from matplotlib.figure import Figure

    table = per_symbol.sort_values("net_pnl")
    fig = Figure(figsize=(9, max(2.5, 0.35 * len(table) + 1)))
    ax = fig.subplots()
    colours = ["#2ca02c" if v >= 0 else "#d62728" for v in table["net_pnl"]]
    ax.barh(table.index.astype(str), table["net_pnl"], color=colours)
    for y, (pnl, trades) in enumerate(zip(table["net_pnl"], table["trades"], strict=True)):
        ax.annotate(f" {pnl:+.1f} ({int(trades)} trades)", (pnl, y), va="center", fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("net PnL (USDT)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig

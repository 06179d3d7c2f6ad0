"""Everything a finished backtest writes into its run folder.

Statistics come from two sources, each the honest one for its purpose:
- the equity curve (balance + unrealised PnL sampled on a clock by EquityRecorder) for returns, Sharpe and
  Sortino (daily returns, 365 days a year), drawdown, Calmar and exposure;
- the closed positions for trade-level win rate and profit factor (Nautilus' own ProfitFactor uses daily
  returns); realised PnL there is net of commissions, and funding is reported beside it.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from nautilus_trader.model.identifiers import Venue

from backtests.clm_report import clm_summary, plot_clm
from backtests.runner import RunArtifacts
from catalog.instruments import VENUE, symbol_of
from quantum_trader.events import ExitEvent, ModelEvent, RiskEvent, SizingEvent
from quantum_trader.trace import trace_of
from strategies.base import ENTRY_TAG, LIQUIDATION_TAG

DAYS_PER_YEAR = 365
# Written only by a run with the continuous-learning actor (actors/clm.py).
CLM_FILES = ("model_events.csv", "shadow_signals.parquet", "clm.png")
# Every file a report may write. A report first removes these from its folder, so that a file of an earlier
# run there (the tearsheet of a run that had one) cannot pass for this run's; other files are the user's.
REPORT_FILES = (
    "orders.csv", "account.csv", "fills.csv", "positions.csv", "equity.csv", "signals.parquet", "funding.csv",
    "exits.csv", "risk_events.csv", "exits_by_reason.csv", "stats.json", "fingerprint.txt", "per_symbol.csv",
    "sizing_events.csv", "config.yaml", "equity.png", "exits.png", "tearsheet.html", "tearsheet.error.txt",
    *CLM_FILES,
)  # fmt: skip


def _money(values: pd.Series) -> pd.Series:
    """'5.81 USDT' or ['1.0 USDT'] -> 5.81."""
    return values.astype(str).str.extract(r"(-?[\d.]+(?:e-?\d+)?)")[0].astype(float).fillna(0.0)


def equity_stats(equity: pd.DataFrame, initial: float, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    eq = pd.concat([pd.Series([initial], index=[start]), equity["equity"]])
    eq = eq[~eq.index.duplicated(keep="last")].sort_index()
    final = float(eq.iloc[-1])
    days = max((end - start).total_seconds() / 86400, 1e-9)
    daily = eq.resample("1D").last().ffill().pct_change().dropna()
    drawdown = eq / eq.cummax() - 1
    total_return = final / initial - 1
    cagr = (final / initial) ** (DAYS_PER_YEAR / days) - 1 if final > 0 else -1.0
    max_dd = float(drawdown.min())
    std = daily.std(ddof=1)
    downside = math.sqrt(float((np.minimum(daily, 0) ** 2).mean())) if len(daily) else 0.0
    exposure = equity["gross_exposure"] / equity["equity"].where(equity["equity"] > 0)
    return {
        "starting_balance": initial,
        "final_equity": final,
        "total_return": total_return,
        "cagr": cagr,
        "sharpe": float(daily.mean() / std * math.sqrt(DAYS_PER_YEAR)) if std and std > 0 else None,
        "sortino": float(daily.mean() / downside * math.sqrt(DAYS_PER_YEAR)) if downside > 0 else None,
        "max_drawdown": max_dd,
        "calmar": cagr / abs(max_dd) if max_dd < 0 else None,
        "exposure_avg": float(exposure.mean()) if len(exposure) else 0.0,
        "time_in_market": float((equity["gross_exposure"] > 0).mean()) if len(equity) else 0.0,
        "days": days,
    }


def trade_stats(positions: pd.DataFrame) -> dict:
    closed = positions[positions["ts_closed"].notna()] if len(positions) else positions
    pnl = _money(closed["realized_pnl"]) if len(closed) else pd.Series(dtype=float)
    wins, losses = pnl[pnl > 0].sum(), pnl[pnl < 0].sum()
    return {
        "trades": len(closed),
        "win_rate": float((pnl > 0).mean()) if len(pnl) else None,
        "profit_factor": float(wins / -losses) if losses < 0 else None,
        "realized_pnl": float(pnl.sum()),
        "open_positions_at_end": int(len(positions) - len(closed)),
    }


def fill_stats(fills: pd.DataFrame, initial: float) -> dict:
    if fills.empty:
        return {"fills": 0, "fees": 0.0, "turnover_usd": 0.0, "turnover": 0.0}
    notional = fills["filled_qty"].astype(float) * fills["avg_px"].astype(float)
    return {
        "fills": len(fills),
        "fees": float(_money(fills["commissions"]).sum()),
        "turnover_usd": float(notional.sum()),
        "turnover": float(notional.sum() / initial),
    }


def liquidation_count(fills: pd.DataFrame, exits: pd.DataFrame) -> int:
    """Orders of the liquidation guard that filled, plus the Exit Brain's stops that a gap filled at or beyond
    the liquidation price, which it reports as liquidations."""
    guards = (
        set(fills.index[fills["tags"].astype(str).str.contains(LIQUIDATION_TAG)]) if len(fills) else set()
    )
    if exits.empty:
        return len(guards)
    gapped = exits[(exits["reason"] == "liquidation") & ~exits["order_id"].isin(guards)]
    return len(guards) + gapped["order_id"].nunique()


def with_trace_column(orders: pd.DataFrame) -> pd.DataFrame:
    """An orders or fills report with `trace_id`: the trace tag of each order (quantum_trader/trace.py), "" for
    none, so a notebook joins a decision to its orders, fills and exits (exits.csv and risk_events.csv carry
    it too)."""
    if "tags" in orders:
        orders["trace_id"] = [trace_of(t) if isinstance(t, list) else "" for t in orders["tags"]]
    return orders


def entry_traces(orders: pd.DataFrame) -> pd.DataFrame:
    """The entry orders' (instrument_id, ts_init, trace_id): an entry is created in the same handler, at the
    same clock time, as the Signal it acts on."""
    if orders.empty or "trace_id" not in orders:
        return pd.DataFrame(columns=["instrument_id", "ts_init", "trace_id"])
    entry = orders["tags"].map(lambda t: isinstance(t, list) and ENTRY_TAG in t) & (orders["trace_id"] != "")
    rows = orders.loc[entry, ["instrument_id", "ts_init", "trace_id"]].astype({"ts_init": "int64"})
    return rows.drop_duplicates(["instrument_id", "ts_init"])


def with_signal_traces(signals: pd.DataFrame, entries: pd.DataFrame) -> pd.DataFrame:
    """`trace_id` for the traded signals (the ones an entry was sent on), "" for the rest."""
    if signals.empty:
        return signals.assign(trace_id=pd.Series(dtype="str"))
    keys = pd.DataFrame(
        {"instrument_id": signals["instrument_id"].astype(str), "ts_init": signals["ts_init"].astype("int64")}
    )
    traces = keys.merge(entries, on=["instrument_id", "ts_init"], how="left")["trace_id"]
    signals["trace_id"] = traces.fillna("").to_numpy()
    return signals


def fingerprint(fills: pd.DataFrame) -> str:
    """sha256 over the trades: same config and seed must give the same value."""
    cols = ["ts_last", "instrument_id", "side", "filled_qty", "avg_px", "type"]
    if fills.empty:
        return hashlib.sha256(b"").hexdigest()
    rows = (
        fills.reset_index()[["client_order_id", *cols]]
        .astype(str)
        .sort_values(["ts_last", "client_order_id"])
    )
    text = "\n".join("|".join(r) for r in rows.to_numpy().tolist())
    return hashlib.sha256(text.encode()).hexdigest()


def per_symbol(positions: pd.DataFrame, fills: pd.DataFrame, funding: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    closed = positions[positions["ts_closed"].notna()] if len(positions) else positions
    for iid, group in closed.groupby("instrument_id") if len(closed) else []:
        pnl = _money(group["realized_pnl"])
        rows.setdefault(symbol_of(iid), {}).update(
            trades=len(group), wins=int((pnl > 0).sum()), realized_pnl=float(pnl.sum())
        )
    for iid, group in fills.groupby("instrument_id") if len(fills) else []:
        rows.setdefault(symbol_of(iid), {})["fees"] = float(_money(group["commissions"]).sum())
    for iid, group in funding.groupby("instrument_id") if len(funding) else []:
        rows.setdefault(symbol_of(iid), {})["funding"] = float(group["amount"].sum())
    df = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    df.index.name = "symbol"
    for col in ("trades", "wins", "realized_pnl", "fees", "funding"):
        if col not in df:
            df[col] = 0.0
    df["net_pnl"] = df["realized_pnl"] + df["funding"]
    return df.sort_values("net_pnl")


def account_report(account) -> pd.DataFrame:
    """One row per account state: balance, locked, free and the summed margins.

    Nautilus' own account report puts every state's list of per-instrument margins in a cell, as dicts: with
    100 symbols and about 10 states per trade that was 2.5 GiB of Python objects for a 90-day run, more than
    the whole backtest. Each state keeps its per-instrument margins in Nautilus (`Account.events`).
    """
    rows = []
    for state in account.events if account is not None else []:
        margins = state.margins
        for balance in state.balances:
            rows.append(
                (
                    state.ts_event,
                    balance.total.as_double(),
                    balance.locked.as_double(),
                    balance.free.as_double(),
                    balance.currency.code,
                    sum(m.initial.as_double() for m in margins),
                    sum(m.maintenance.as_double() for m in margins),
                    len(margins),
                    state.is_reported,
                )
            )
    columns = ["ts_event", "total", "locked", "free", "currency"]
    columns += ["margin_initial", "margin_maintenance", "margined_instruments", "reported"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.index = pd.to_datetime(frame.pop("ts_event"), utc=True)
    return frame.sort_index(kind="stable")


def peak_memory_gib() -> float | None:
    """This process' peak resident memory since it started its program (Linux VmHWM), in GiB; None
    elsewhere. Unlike getrusage's ru_maxrss, it excludes what a forking parent had before the exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return None


def equity_figure(equity: pd.DataFrame, title: str):
    """Equity and balance over drawdown, as a matplotlib Figure made without pyplot: no backend is chosen, so
    the report saves it headless and a notebook shows it inline (backtests/analysis.py)."""
    from matplotlib.figure import Figure

    eq = equity["equity"]
    dd = eq / eq.cummax() - 1
    fig = Figure(figsize=(11, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax1.plot(eq.index, eq.values, color="#1f77b4", lw=1.2, label="equity (mark-to-market)")
    ax1.plot(equity.index, equity["balance"], color="#999999", lw=0.8, label="balance")
    ax1.set_ylabel("USDT")
    ax1.set_title(title)
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.fill_between(dd.index, dd.values * 100, 0, color="#d62728", alpha=0.5)
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_equity(equity: pd.DataFrame, title: str, path: Path) -> None:
    equity_figure(equity, title).savefig(path, dpi=110)


def signal_stats(signals: pd.DataFrame, strategies: list) -> dict:
    if signals.empty:
        return {}
    ensembles = [s.ensemble for s in strategies if getattr(s, "ensemble", None) is not None]
    return {
        "signals": len(signals),
        "signals_by_direction": signals["direction"].value_counts().to_dict(),
        "signal_confidence_mean": float(signals["confidence"].mean()),
        "entries": sum(getattr(s, "entries", 0) for s in strategies),
        # A replay runs no model: the ids its stored decisions carry say which models made them.
        "models": [m.model_id for e in ensembles for m in e.members]
        or sorted({m for ids in signals["model_ids"].unique() for m in str(ids).split(",") if m}),
        "models_missing": {k: v for e in ensembles for k, v in e.missing.items()},
    }


def exits_by_reason(exits: pd.DataFrame) -> pd.DataFrame:
    """Per exit reason: the number of exit fills, their PnL (net of the exit fee) and their average R."""
    if exits.empty:
        return pd.DataFrame(columns=["count", "pnl", "avg_r"]).rename_axis("reason")
    grouped = exits.groupby("reason")
    table = pd.DataFrame(
        {"count": grouped.size(), "pnl": grouped["pnl"].sum(), "avg_r": grouped["r_multiple"].mean()}
    )
    return table.sort_values("count", ascending=False)


def risk_event_counts(risk: pd.DataFrame) -> dict:
    """'source/action/code' -> count, e.g. 'safety_governor/veto/confidence': 12."""
    if risk.empty:
        return {}
    keys = risk["source"] + "/" + risk["action"] + "/" + risk["code"]
    return {str(k): int(v) for k, v in keys.value_counts().sort_index().items()}


def exits_figure(table: pd.DataFrame, risk_counts: dict, title: str):
    """Exit count and PnL by reason (`exits_by_reason`), and the risk events; a Figure made without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.2])
    count_ax, pnl_ax, risk_ax = (
        fig.add_subplot(grid[0, 0]),
        fig.add_subplot(grid[0, 1]),
        fig.add_subplot(grid[1, :]),
    )
    reasons = list(table.index)
    count_ax.barh(reasons, table["count"], color="#1f77b4")
    count_ax.set_title("exits by reason (average R in brackets)")
    for y, (count, avg_r) in enumerate(zip(table["count"], table["avg_r"], strict=True)):
        count_ax.annotate(f" {int(count)} ({avg_r:+.2f}R)", (count, y), va="center", fontsize=8)
    pnl_ax.barh(reasons, table["pnl"], color=["#2ca02c" if v >= 0 else "#d62728" for v in table["pnl"]])
    pnl_ax.set_title("PnL by exit reason (USDT)")
    pnl_ax.axvline(0, color="black", lw=0.6)
    labels = list(risk_counts)
    risk_ax.barh(labels, list(risk_counts.values()), color="#ff7f0e")
    risk_ax.set_xscale("log")
    risk_ax.set_title("risk events (source/action/code), log scale")
    for y, value in enumerate(risk_counts.values()):
        risk_ax.annotate(f" {value}", (value, y), va="center", fontsize=8)
    for ax in (count_ax, pnl_ax, risk_ax):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_exits(table: pd.DataFrame, risk_counts: dict, title: str, path: Path) -> None:
    exits_figure(table, risk_counts, title).savefig(path, dpi=110)


def write_report(run: RunArtifacts, out: Path, plots: bool = True) -> dict:
    """Writes the report into `out` and returns its stats; `tearsheet_error` among them says why the tearsheet
    asked for is missing. `plots=False` leaves out equity.png and exits.png (a sweep's points that are not kept:
    drawing them took as long as the backtest of a small one)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    engine, cfg = run.engine, run.config
    # Each table is written as soon as it is built, and the orders and the account are let go at once: with
    # tens of thousands of trades, holding all of them at the same time set the run's peak memory.
    orders = with_trace_column(engine.trader.generate_orders_report())
    orders.to_csv(out / "orders.csv")
    entries = entry_traces(orders)
    del orders
    account_report(engine.kernel.cache.account_for_venue(Venue(str(VENUE)))).to_csv(out / "account.csv")
    fills = with_trace_column(engine.trader.generate_order_fills_report())
    fills.to_csv(out / "fills.csv")
    positions = engine.trader.generate_positions_report()
    positions.to_csv(out / "positions.csv")
    equity = run.equity.frame()
    funding = pd.DataFrame([p.__dict__ for p in run.funding.payments]) if run.funding else pd.DataFrame()
    equity.to_csv(out / "equity.csv")
    signals = with_signal_traces(run.signals.frame(), entries)
    signals.to_parquet(out / "signals.parquet", index=False)
    funding.to_csv(out / "funding.csv", index=False)
    exits = run.events.frame(ExitEvent)
    risk = run.events.frame(RiskEvent)
    exits.to_csv(out / "exits.csv", index=False)
    risk.to_csv(out / "risk_events.csv", index=False)
    run.events.frame(SizingEvent).to_csv(out / "sizing_events.csv", index=False)  # RL sizer (ml/rl) only
    exit_table = exits_by_reason(exits)
    exit_table.to_csv(out / "exits_by_reason.csv")
    risk_counts = risk_event_counts(risk)
    model_events = run.events.frame(ModelEvent)
    shadow = run.signals.frame(shadow=True)
    if len(model_events) or len(shadow):  # a run with the continuous-learning actor (actors/clm.py)
        model_events.to_csv(out / "model_events.csv", index=False)
        shadow.to_parquet(out / "shadow_signals.parquet", index=False)

    initial = cfg.venue.starting_balance
    stats = {
        "name": cfg.name,
        "period": {"start": str(run.start), "end": str(run.end)},
        "symbols": [str(i.id) for i in run.universe.instruments],
        "universe_ranking": run.universe.ranking_note,
        "bars": run.bars,
        **equity_stats(equity, initial, run.start, run.end),
        **trade_stats(positions),
        **fill_stats(fills, initial),
        "liquidations": liquidation_count(fills, exits),
        "funding": float(funding["amount"].sum()) if len(funding) else 0.0,
        "funding_payments": len(funding),
        "margin_rejections": sum(getattr(s, "margin_rejections", 0) for s in run.strategies),
        "short_refusals": sum(getattr(s, "short_refusals", 0) for s in run.strategies),
        "order_rate_refusals": sum(getattr(s, "order_rate_refusals", 0) for s in run.strategies),
        **signal_stats(signals, run.strategies),
        "exits_by_reason": exit_table.to_dict(orient="index"),
        "risk_events": risk_counts,
        **({"model_lifecycle": clm_summary(model_events, len(shadow))} if len(model_events) else {}),
        "fingerprint": fingerprint(fills),
        "wall_seconds": run.wall_seconds,
        "peak_memory_gib": peak_memory_gib(),  # includes the report tables built above
        "bars_per_second": run.bars / run.wall_seconds if run.wall_seconds > 0 else None,
    }
    _write_stats(stats, out)
    (out / "fingerprint.txt").write_text(stats["fingerprint"] + "\n")
    per_symbol(positions, fills, funding).to_csv(out / "per_symbol.csv")
    resolved = cfg.model_dump(mode="json") | {
        "resolved_symbols": stats["symbols"],
        "resolved_period": stats["period"],
    }
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    if plots and len(equity):
        plot_equity(equity, f"{cfg.name}: equity and drawdown", out / "equity.png")
    if plots and len(model_events):
        plot_clm(equity, model_events, f"{cfg.name}: continuous learning", out / "clm.png")
    if plots and (len(exit_table) or risk_counts):
        plot_exits(exit_table, risk_counts, f"{cfg.name}: exits and risk events", out / "exits.png")
    if cfg.report.tearsheet and (error := _tearsheet(engine, out / "tearsheet.html", cfg.name)):
        stats["tearsheet_error"] = error
        _write_stats(stats, out)
    return stats


def _write_stats(stats: dict, out: Path) -> None:
    (out / "stats.json").write_text(json.dumps(stats, indent=2, default=str))


def _tearsheet(engine, path: Path, title: str) -> str | None:
    """Why the tearsheet could not be written, or None. It comes last: a failure loses none of the report."""
    from nautilus_trader.analysis.tearsheet import create_tearsheet

    try:
        create_tearsheet(engine, output_path=str(path), title=title)
    except Exception as err:
        path.unlink(missing_ok=True)  # whatever it wrote before failing is not a tearsheet
        error = f"tearsheet failed: {err!r}"
        path.with_suffix(".error.txt").write_text(error + "\n")
        return error
    return None

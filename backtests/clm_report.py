"""The continuous-learning part of a backtest report: a summary of the ModelEvents and a timeline plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

MARKS = {  # action -> (colour, label) of its vertical line on the timeline
    "retrain_done": ("tab:blue", "retrain done"),
    "promoted": ("tab:green", "promoted"),
    "promotion_refused": ("tab:red", "refused"),
    "drift_alarm": ("tab:orange", "drift alarm"),
    "rollback": ("tab:purple", "rollback"),
}


def clm_summary(events: pd.DataFrame, shadow_rows: int) -> dict:
    """Counts per action, the promotions and refusals with their reasons, for stats.json."""
    decisions = events[events["action"].isin(["promoted", "promotion_refused", "rollback"])]
    return {
        "events": {str(k): int(v) for k, v in events["action"].value_counts().items()},
        "shadow_signals": int(shadow_rows),
        "decisions": [
            {
                "at": str(row.ts_event),
                "action": row.action,
                "kind": row.kind,
                "model_id": row.model_id,
                "ic": row.ic,
                "production_ic": row.baseline_ic,
                "n": row.n,
                "reason": row.reason,
            }
            for row in decisions.itertuples()
        ],
    }


def plot_clm(equity: pd.DataFrame, events: pd.DataFrame, title: str, path: Path) -> None:
    """Equity with the retrains, promotions, refusals and drift alarms marked; below, production's rank IC at
    each performance check and the drift statistic (mean or max feature PSI) of each drift check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (eq_ax, ic_ax, psi_ax) = plt.subplots(3, 1, figsize=(11, 8), sharex=True, height_ratios=[2, 1, 1])
    if len(equity):
        eq_ax.plot(equity.index, equity["equity"], color="black", lw=1)
    seen = set()
    for action, (colour, label) in MARKS.items():
        for ts in events.loc[events["action"] == action, "ts_event"]:
            eq_ax.axvline(ts, color=colour, lw=1.2, alpha=0.8, label=None if label in seen else label)
            seen.add(label)
    eq_ax.set_ylabel("equity (USDT)")
    if seen:
        eq_ax.legend(loc="best", fontsize=8)
    perf = events[events["action"] == "performance"]
    ic_ax.plot(perf["ts_event"], perf["ic"], marker=".", lw=0.8, label="production rank IC")
    for action, marker in (("promoted", "^"), ("promotion_refused", "v")):
        rows = events[events["action"] == action]
        ic_ax.scatter(
            rows["ts_event"],
            rows["ic"],
            marker=marker,
            color=MARKS[action][0],
            label=f"candidate IC ({action})",
        )
    ic_ax.axhline(0, color="grey", lw=0.5)
    ic_ax.set_ylabel("rank IC")
    ic_ax.legend(loc="best", fontsize=7)
    drift = events[events["action"].isin(["drift_check", "drift_alarm"])]
    psi_ax.bar(drift["ts_event"], drift["psi"], width=0.3, color="tab:orange")
    psi_ax.set_ylabel("drift statistic (PSI)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

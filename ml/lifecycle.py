"""Model lifecycle decisions: the ledger of matured predictions and the rule that promotes a shadow candidate.

Ledger. Production and shadow forecasts are recorded per (instrument, bar close). A prediction *matures* when
`horizon` more bars of its instrument have closed: its realised label is then known, the same forward log
return ln(close[t+h] / close[t]) the models were trained on. Only matured predictions are ever scored, so a
performance number never reads a return that had not happened yet.

Metric. Rank IC of a forecast against the realised label on the SAME matured rows for both models: the mean
cross-sectional rank IC (ml.metrics.cross_sectional_ic, symbols ranked against each other at each bar close)
when the rows hold at least `min_names` symbols at a time, else the pooled Spearman IC (ml.metrics.spearman).
The hit rate is the share of rows whose forecast sign matches the realised sign (zero forecasts count as misses).

Promotion rule (`decide`): a candidate kind is promoted only when
1. at least `min_predictions` of its shadow predictions have matured, on rows production also scored,
2. its IC exceeds production's IC on those rows by more than `margin` (a production kind that did not vote
   counts as IC 0), and
3. its recorded validation skill passes ml.skill's rule (the registry refuses it otherwise too).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml.metrics import cross_sectional_ic, spearman
from ml.skill import verdict


class PredictionLedger:
    """Forecasts waiting for their label, and the matured rows with it. `source` names who forecast
    (e.g. "production" or "shadow"), `values` one number per model or ensemble (kind -> forecast)."""

    def __init__(self, horizon: int, keep: int = 200_000) -> None:
        self.horizon = horizon
        self._pending: dict[tuple[str, int], dict[str, float]] = {}
        self._closes: dict[str, deque] = {}
        self._matured: deque[dict] = deque(maxlen=keep)

    def add(self, source: str, instrument: str, ts: int, values: dict[str, float]) -> None:
        row = self._pending.setdefault((instrument, int(ts)), {})
        for name, value in values.items():
            row[f"{source}:{name}"] = float(value)

    def observe_close(self, instrument: str, ts: int, close: float) -> None:
        """A bar of `instrument` closed at `ts`: the prediction made `horizon` bars earlier matures."""
        closes = self._closes.setdefault(instrument, deque(maxlen=self.horizon + 1))
        closes.append((int(ts), math.log(close)))
        if len(closes) <= self.horizon:
            return
        (then, log_then), (_, log_now) = closes[0], closes[-1]
        for key in [k for k in self._pending if k[0] == instrument and k[1] < then]:
            del self._pending[key]  # made at a bar this instrument's history no longer reaches (a gap)
        row = self._pending.pop((instrument, then), None)
        if row is not None:
            matured = {
                "instrument": instrument,
                "ts": then,
                "matured_ts": int(ts),
                "realised": log_now - log_then,
            }
            self._matured.append(matured | row)

    def matured(self, since_ts: int | None = None, matured_since: int | None = None) -> pd.DataFrame:
        """Matured rows: predictions made at or after `since_ts`, and / or matured at or after `matured_since`."""
        frame = pd.DataFrame(list(self._matured))
        if since_ts is not None and len(frame):
            frame = frame[frame["ts"] >= since_ts]
        if matured_since is not None and len(frame):
            frame = frame[frame["matured_ts"] >= matured_since]
        return frame

    def __len__(self) -> int:
        return len(self._matured)


def rank_ic(forecast: np.ndarray, realised: np.ndarray, ts: np.ndarray, min_names: int = 3) -> float:
    """Cross-sectional rank IC when there are `min_names` symbols per bar close, else pooled Spearman."""
    ok = np.isfinite(forecast) & np.isfinite(realised)
    forecast, realised, ts = forecast[ok], realised[ok], ts[ok]
    if len(forecast) == 0:
        return float("nan")
    if pd.Series(ts).value_counts().max() >= min_names:
        ic = cross_sectional_ic(forecast, realised, ts, min_names)["mean"]
        if math.isfinite(ic):
            return ic
    return spearman(forecast, realised)


def hit_rate(forecast: np.ndarray, realised: np.ndarray) -> float:
    ok = np.isfinite(forecast) & np.isfinite(realised)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.sign(forecast[ok]) == np.sign(realised[ok])))


def score(frame: pd.DataFrame, column: str, min_names: int = 3) -> dict:
    """IC, hit rate and row count of one forecast column of a matured frame."""
    if column not in frame or not len(frame):
        return {"ic": float("nan"), "hit_rate": float("nan"), "n": 0}
    rows = frame[np.isfinite(frame[column].to_numpy(dtype=float))]
    f, r = rows[column].to_numpy(dtype=float), rows["realised"].to_numpy(dtype=float)
    return {"ic": rank_ic(f, r, rows["ts"].to_numpy(), min_names), "hit_rate": hit_rate(f, r), "n": len(rows)}


@dataclass
class Decision:
    kind: str
    promote: bool
    reason: str
    candidate: dict = field(default_factory=dict)  # score() of the candidate on the shared rows
    production: dict = field(default_factory=dict)  # score() of production on the same rows

    @property
    def ready(self) -> bool:
        """Whether enough predictions matured for a decision either way."""
        return self.reason != "waiting"


def decide(
    frame: pd.DataFrame,
    kind: str,
    candidate_skill: dict | None,
    min_predictions: int = 100,
    margin: float = 0.0,
    min_names: int = 3,
) -> Decision:
    """Whether the shadow candidate of `kind` replaces production (see the module docstring)."""
    shadow, live = f"shadow:{kind}", f"production:{kind}"
    shared = frame
    if len(frame) and shadow in frame:
        shared = frame[np.isfinite(frame[shadow].to_numpy(dtype=float))]
        if "production:ensemble" in shared:  # rows production scored too
            shared = shared[np.isfinite(shared["production:ensemble"].to_numpy(dtype=float))]
    else:
        shared = frame.iloc[0:0]
    if len(shared) < min_predictions:
        return Decision(kind, False, "waiting", {"n": len(shared)})
    cand = score(shared, shadow, min_names)
    prod = score(shared, live, min_names)
    prod_ic = prod["ic"] if math.isfinite(prod["ic"]) else 0.0  # no production model: the zero forecast's
    against = (
        f"production's {prod_ic:.4f}"
        if math.isfinite(prod["ic"])
        else "the zero forecast's 0 (no production)"
    )
    found = verdict(candidate_skill)
    if not found.usable:
        return Decision(kind, False, f"validation skill: {found}", cand, prod)
    if not math.isfinite(cand["ic"]) or cand["ic"] <= prod_ic + margin:
        return Decision(
            kind,
            False,
            f"IC {cand['ic']:.4f} does not beat {against} by more than {margin:g}",
            cand,
            prod,
        )
    return Decision(
        kind,
        True,
        f"IC {cand['ic']:.4f} beats {against} by more than {margin:g}",
        cand,
        prod,
    )


__all__ = ["Decision", "PredictionLedger", "decide", "hit_rate", "rank_ic", "score"]

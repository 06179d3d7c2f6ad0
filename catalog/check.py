"""`qt data check`: the data-quality report of what a catalog holds, one row per series."""

from pathlib import Path

import pandas as pd
from nautilus_trader.model.enums import price_type_to_str

from catalog.instruments import symbol_of
from catalog.quality import inspect_funding, inspect_ohlcv
from catalog.store import CatalogStore, interval_of

_ISSUE_FIELDS = ("gaps", "duplicates_dropped", "conflicting_duplicates", "out_of_order", "nan_rows",
                 "nonpositive_rows", "high_low_violations")  # fmt: skip


def check_catalog(catalog_dir: Path) -> pd.DataFrame:
    store = CatalogStore(Path(catalog_dir))
    rows = []
    for bar_type in store.bar_types(price_type=None):
        kind = "mark" if price_type_to_str(bar_type.spec.price_type) == "MARK" else "ohlcv"
        frame = store.read_bars_frame(bar_type)
        report = inspect_ohlcv(frame, interval_of(bar_type), symbol_of(bar_type.instrument_id), kind=kind)
        rows.append(_row(str(bar_type.instrument_id), kind, interval_of(bar_type), report.to_dict()))
    for iid in store.funding_instrument_ids():
        funding = store.read_funding_frame(iid)
        if len(funding):
            report = inspect_funding(funding, symbol_of(iid))
            rows.append(_row(iid, "funding", report.interval, report.to_dict()))
    return pd.DataFrame(rows)


def _row(instrument: str, kind: str, interval: str, q: dict) -> dict:
    issues = [f"{k}={q[k]}" for k in _ISSUE_FIELDS if q.get(k)]
    return {
        "instrument": instrument, "kind": kind, "interval": interval, "rows": q["rows_in"],
        "first": q.get("first"), "last": q.get("last"), "gaps": q.get("gaps", 0),
        "missing_bars": q.get("missing_bars", 0), "largest_gap": q.get("largest_gap"), "issues": " ".join(issues),
    }  # fmt: skip

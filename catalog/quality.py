"""Data-quality rules for OHLCV, mark-price and funding frames.

`clean_ohlcv` and `clean_funding` take a frame as `catalog.readers` produces it and return a
clean frame plus a `QualityReport`. Nothing disappears silently: every row removed or repaired
is counted, and `rows_in == rows_out + dropped + duplicates_dropped` always holds.

Rules, applied in this order (each row is counted under the first rule it breaks):

1. Order. Rows are sorted by `date` (stably, so equal timestamps keep their input order).
   `out_of_order` counts the fewest rows that would have to move to put the input in order.
2. Exact duplicates (same `date`, same values) are dropped, keeping one: `duplicates_dropped`.
   Overlapping files (a monthly archive plus its daily ones) produce these.
3. Invalid rows: a missing `date`, a NaN or infinite value (`nan_rows`), or a price <= 0 or a
   negative volume (`nonpositive_rows`). Policy `on_invalid_rows`: "drop" (default, counted in
   `dropped`) or "error". Zero volume is valid (quiet markets, mark-price candles).
4. Conflicting duplicates: the same `date` with different values. Policy
   `on_conflicting_duplicates`: "error" (default; nobody can tell which row is right) or
   "keep_last" (the last row in input order wins; the others count in `conflicting_duplicates`
   and `dropped`).
5. High/low: every bar must satisfy high >= max(open, close) >= min(open, close) >= low
   (`high_low_violations`). Policy `on_high_low`: "repair" (default: high = max(o, h, l, c),
   low = min(o, h, l, c); counted in `repaired`), "drop" or "error".
6. Funding only: |rate| > `max_abs_funding_rate` (default 0.05, i.e. 5% per funding interval,
   beyond any cap Binance applies) always raises: it almost surely means a unit error.

Funding only, before the rules: a funding time within `FUNDING_TIME_TOLERANCE` of a whole hour is
moved onto that hour (`snapped_to_hour`). Binance stamps funding a few ms late; that is its
convention, not a defect, so it does not make a report not ok.

Reported but never changed:

- Gaps: consecutive bars more than one interval apart. `gaps` counts them, `missing_bars` counts
  the bars that would fill them and `largest_gap` is the longest stretch without a bar (from the
  end of one bar to the open of the next). Gaps are not filled: exchanges have real outages and
  a symbol trades only after its listing. Funding: Binance moves symbols between 8h, 4h and 1h
  funding, so unless an interval is given, a spacing is a gap when it is longer than both
  spacings beside it, and the missing count is measured in the longer of those two.
- Misaligned bars: an OHLCV/mark `date` that is not a multiple of the interval since the epoch
  (weekly bars: since a Monday), counted in `misaligned`.

`ok()` is True when the input needed no change (nothing reordered, dropped, repaired or
misaligned); gaps alone do not make a report not ok. `inspect_ohlcv` / `inspect_funding` report
what cleaning would do under the most lenient policy (keep_last, drop, repair) and change
nothing; only an implausible funding rate still raises, since no policy can clean it.

A refused rule raises `DataQualityError`, whose message names the symbol, the rule, the count and
the first offending timestamps.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from catalog.readers import OHLCV_COLUMNS, infer_interval, interval_to_timedelta

PRICE_COLUMNS = ("open", "high", "low", "close")
FUNDING_COLUMNS = ("rate",)
DEFAULT_FUNDING_INTERVAL = "8h"
_SHOWN = 5  # offending timestamps named in an error message
_MONDAY_OFFSET = pd.Timedelta(days=4)  # 1970-01-01 was a Thursday; Binance weeks open on Monday
# Binance stamps a funding time 1-5 ms after the hour it settles (fundingTime 1735689600003). Left there,
# 8h + 1 ms reads as a gap and a backtest settles the funding a bar late. Funding times are whole hours
# (8h, 4h and 1h funding alike); one second is far above the stamps' jitter and far below any interval.
FUNDING_TIME_TOLERANCE = pd.Timedelta(seconds=1)


class DataQualityError(ValueError):
    """Data that breaks a rule the policy refuses to fix."""

    def __init__(
        self,
        symbol: str,
        kind: str,
        rule: str,
        count: int,
        timestamps: list[str],
        hint: str = "",
        unit: str = "row",
    ):
        shown = ", ".join(timestamps[:_SHOWN]) + (", ..." if len(timestamps) > _SHOWN else "")
        message = f"{symbol} {kind}: {count} {unit}(s) break rule '{rule}'; first at {shown}"
        super().__init__(message + (f". {hint}" if hint else ""))
        self.symbol, self.kind, self.rule, self.count, self.timestamps = symbol, kind, rule, count, timestamps


@dataclass(frozen=True)
class QualityPolicy:
    on_conflicting_duplicates: str = "error"  # "error" | "keep_last"
    on_invalid_rows: str = "drop"  # "drop" | "error"  (NaN, non-positive price, negative volume)
    on_high_low: str = "repair"  # "repair" | "drop" | "error"
    max_abs_funding_rate: float = 0.05

    def __post_init__(self) -> None:
        _check_choice("on_conflicting_duplicates", self.on_conflicting_duplicates, ("error", "keep_last"))
        _check_choice("on_invalid_rows", self.on_invalid_rows, ("drop", "error"))
        _check_choice("on_high_low", self.on_high_low, ("repair", "drop", "error"))
        if not self.max_abs_funding_rate > 0:
            raise ValueError(f"max_abs_funding_rate must be > 0, not {self.max_abs_funding_rate}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"QualityPolicy.{name} must be one of {allowed}, not {value!r}")


# What `inspect_*` assume: every fixable problem fixed, so the report counts them all.
LENIENT = QualityPolicy(on_conflicting_duplicates="keep_last", on_invalid_rows="drop", on_high_low="repair")


@dataclass
class QualityReport:
    """What cleaning found and did, for one (symbol, kind, interval)."""

    symbol: str
    kind: str
    interval: str
    rows_in: int
    rows_out: int = 0
    duplicates_dropped: int = 0
    conflicting_duplicates: int = 0
    out_of_order: int = 0
    nan_rows: int = 0
    nonpositive_rows: int = 0
    high_low_violations: int = 0
    repaired: int = 0
    dropped: int = 0
    gaps: int = 0
    missing_bars: int = 0
    largest_gap: pd.Timedelta | None = None
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    misaligned: int = 0
    snapped_to_hour: int = 0  # funding times moved onto the whole hour they were stamped within a second of
    notes: list[str] = field(default_factory=list)  # what was done, in words, for the CLI

    def ok(self) -> bool:
        changed = self.dropped + self.repaired + self.duplicates_dropped + self.out_of_order
        return changed == 0 and self.misaligned == 0

    def to_dict(self) -> dict:
        """JSON-ready: timestamps as ISO strings, the largest gap as a string and in seconds."""
        out = asdict(self)
        out["first"] = self.first.isoformat() if self.first is not None else None
        out["last"] = self.last.isoformat() if self.last is not None else None
        out["largest_gap"] = str(self.largest_gap) if self.largest_gap is not None else None
        out["largest_gap_s"] = self.largest_gap.total_seconds() if self.largest_gap is not None else None
        out["ok"] = self.ok()
        return out


# --------------------------------------------------------------------------- shared steps


class _Cleaner:
    """One cleaning pass: holds the frame being cleaned and the report being filled."""

    def __init__(
        self, df: pd.DataFrame, columns: tuple[str, ...], report: QualityReport, policy: QualityPolicy
    ):
        missing = [c for c in ("date", *columns) if c not in df.columns]
        if missing:
            raise ValueError(f"{report.symbol} {report.kind}: frame lacks columns {missing}")
        self.columns, self.report, self.policy = columns, report, policy
        self.df = _standardise(df, columns)

    def refuse(self, rule: str, mask: np.ndarray | pd.Series, hint: str = "", unit: str = "row") -> None:
        rows = self.df.loc[np.asarray(mask)]
        stamps = [str(t) for t in rows["date"].head(_SHOWN + 1)]
        raise DataQualityError(self.report.symbol, self.report.kind, rule, len(rows), stamps, hint, unit)

    def drop(self, mask: np.ndarray | pd.Series) -> int:
        count = int(np.asarray(mask).sum())
        if count:
            self.df = self.df.loc[~np.asarray(mask)].reset_index(drop=True)
        return count

    def sort(self) -> None:
        dates = self.df["date"]
        if dates.is_monotonic_increasing:
            return
        self.report.out_of_order = _rows_out_of_order(dates)
        self.df = self.df.sort_values("date", kind="stable", na_position="last").reset_index(drop=True)
        self.report.notes.append(f"sorted {self.report.out_of_order} out-of-order row(s)")

    def drop_exact_duplicates(self) -> None:
        if _strictly_increasing(self.df["date"]):
            return
        shared = self.df["date"].duplicated(keep=False).to_numpy()
        # Only rows that share a timestamp can be exact duplicates; hashing just those is fast.
        repeated = np.zeros(len(shared), dtype=bool)
        repeated[shared] = self.df.loc[shared].duplicated(keep="first").to_numpy()
        count = self.drop(repeated)
        self.report.duplicates_dropped = count
        if count:
            self.report.notes.append(f"dropped {count} exact duplicate row(s)")

    def handle_invalid(self, nonpositive: np.ndarray | None) -> None:
        values = self.df[list(self.columns)].to_numpy(dtype="float64")
        nan = self.df["date"].isna().to_numpy() | ~np.isfinite(values).all(axis=1)
        bad_sign = np.zeros(len(nan), dtype=bool) if nonpositive is None else nonpositive & ~nan
        for rule, mask, counter in (
            ("no NaN, infinite value or missing date", nan, "nan_rows"),
            ("prices > 0 and volume >= 0", bad_sign, "nonpositive_rows"),
        ):
            if not mask.any():
                continue
            if self.policy.on_invalid_rows == "error":
                self.refuse(rule, mask, "Policy on_invalid_rows='error'; use 'drop' to remove such rows")
            setattr(self.report, counter, int(mask.sum()))
            self.report.notes.append(f"dropped {int(mask.sum())} row(s) breaking '{rule}'")
        self.report.dropped += self.drop(nan | bad_sign)

    def handle_conflicts(self) -> None:
        dates = self.df["date"]
        if _strictly_increasing(dates):
            return
        clash = dates.duplicated(keep=False).to_numpy()
        if not clash.any():
            return
        if self.policy.on_conflicting_duplicates == "error":
            first_rows = clash & ~dates.duplicated(keep="first").to_numpy()
            self.refuse(
                "one row per timestamp (same date, different values)",
                first_rows,
                "Policy on_conflicting_duplicates='error'; use 'keep_last' to keep the last row of each",
                unit="timestamp",
            )
        count = self.drop(dates.duplicated(keep="last").to_numpy())
        self.report.conflicting_duplicates = count
        self.report.dropped += count
        self.report.notes.append(f"dropped {count} conflicting duplicate row(s), keeping the last of each")

    def finish(self, step: pd.Timedelta | None) -> pd.DataFrame:
        report, dates = self.report, self.df["date"]
        report.rows_out = len(self.df)
        report.first = dates.iloc[0] if len(dates) else None
        report.last = dates.iloc[-1] if len(dates) else None
        _measure_gaps(dates, step, report)
        _check_invariants(self.df, self.columns, report)
        return self.df


def _standardise(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    out = pd.DataFrame({"date": _utc(df["date"])})
    for column in columns:
        out[column] = pd.to_numeric(df[column], errors="coerce").astype("float64").to_numpy()
    return out


def _utc(dates: pd.Series) -> pd.Series:
    dates = pd.Series(dates).reset_index(drop=True)
    if not isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = pd.to_datetime(dates, utc=True)  # naive means UTC, as everywhere here
    return dates.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def _strictly_increasing(dates: pd.Series) -> bool:
    # The common case, checked in one pass so clean data skips the hashing that finds repeats.
    if dates.hasnans:
        return False
    return bool((np.diff(dates.to_numpy(dtype="datetime64[ns]").astype("int64")) > 0).all())


def _rows_out_of_order(dates: pd.Series) -> int:
    """Fewest rows to move to sort the input: n minus the longest non-decreasing run of rows."""
    present = dates.dropna().to_numpy(dtype="datetime64[ns]").astype("int64").tolist()
    tails: list[int] = []  # tails[k]: smallest last value of a non-decreasing subsequence of length k+1
    for value in present:
        index = bisect.bisect_right(tails, value)
        if index == len(tails):
            tails.append(value)
        else:
            tails[index] = value
    return len(present) - len(tails)


def _measure_gaps(dates: pd.Series, step: pd.Timedelta | None, report: QualityReport) -> None:
    """Count gaps against a fixed `step`, or, with `step=None`, against the neighbouring spacings."""
    ns = dates.to_numpy(dtype="datetime64[ns]").astype("int64")
    spacing = np.diff(ns)
    yardstick = np.full(len(spacing), step.value) if step is not None else _neighbour_spacing(spacing)
    is_gap = spacing > yardstick
    gaps, sizes = spacing[is_gap], yardstick[is_gap]
    report.gaps = len(gaps)
    # A gap of k intervals (rounded up when bars are off-grid) misses k - 1 bars.
    report.missing_bars = int((-(-gaps // sizes) - 1).sum())
    report.largest_gap = pd.Timedelta(int((gaps - sizes).max()), unit="ns") if len(gaps) else None


def _neighbour_spacing(spacing: np.ndarray) -> np.ndarray:
    # Funding moves between 8h, 4h and 1h over a symbol's life: a spacing is a gap only when it
    # is longer than both spacings beside it, so the switch from one interval to another is not.
    if len(spacing) < 2:
        return spacing.copy()
    before = np.concatenate([spacing[1:2], spacing[:-1]])
    after = np.concatenate([spacing[1:], spacing[-2:-1]])
    return np.maximum(before, after)


def _check_invariants(df: pd.DataFrame, columns: tuple[str, ...], report: QualityReport) -> None:
    # Cheap and vectorised, so it always runs: a broken promise here must never reach a catalog.
    accounted = report.rows_out + report.dropped + report.duplicates_dropped
    problems = []
    if report.rows_in != accounted:
        problems.append(f"rows_in {report.rows_in} != rows_out + dropped + duplicates ({accounted})")
    if not df["date"].is_monotonic_increasing or df["date"].duplicated().any() or df["date"].isna().any():
        problems.append("dates not strictly increasing")
    if not np.isfinite(df[list(columns)].to_numpy(dtype="float64")).all():
        problems.append("NaN left in output")
    if problems:
        raise AssertionError(
            f"{report.symbol} {report.kind}: internal invariant broken: {'; '.join(problems)}"
        )


# --------------------------------------------------------------------------- OHLCV


def clean_ohlcv(
    df: pd.DataFrame, interval: str, symbol: str, kind: str = "ohlcv", policy: QualityPolicy = QualityPolicy()
) -> tuple[pd.DataFrame, QualityReport]:
    """Apply the rules above to an OHLCV or mark-price frame; returns (clean frame, report)."""
    step = interval_to_timedelta(interval)
    cleaner = _Cleaner(df, OHLCV_COLUMNS, QualityReport(symbol, kind, interval, rows_in=len(df)), policy)
    cleaner.sort()
    cleaner.drop_exact_duplicates()
    cleaner.handle_invalid(_nonpositive(cleaner.df))
    cleaner.handle_conflicts()
    _handle_high_low(cleaner)
    cleaner.report.misaligned = _misaligned(cleaner.df["date"], step)
    if cleaner.report.misaligned:
        cleaner.report.notes.append(f"{cleaner.report.misaligned} bar(s) open off the {interval} grid (kept)")
    out = cleaner.finish(step)
    _check_ohlcv_output(out, cleaner.report)
    return out, cleaner.report


def inspect_ohlcv(df: pd.DataFrame, interval: str, symbol: str, kind: str = "ohlcv") -> QualityReport:
    """Report what `clean_ohlcv` would do under the most lenient policy; nothing is changed."""
    return clean_ohlcv(df, interval, symbol, kind, policy=LENIENT)[1]


def _nonpositive(df: pd.DataFrame) -> np.ndarray:
    prices = df[list(PRICE_COLUMNS)].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        return (prices <= 0).any(axis=1) | (df["volume"].to_numpy() < 0)


def _high_low_mask(df: pd.DataFrame) -> np.ndarray:
    o, h, low, c = (df[col].to_numpy() for col in PRICE_COLUMNS)
    return (h < np.maximum(o, c)) | (low > np.minimum(o, c)) | (h < low)


def _handle_high_low(cleaner: _Cleaner) -> None:
    bad = _high_low_mask(cleaner.df)
    count = int(bad.sum())
    if not count:
        return
    cleaner.report.high_low_violations = count
    policy = cleaner.policy.on_high_low
    if policy == "error":
        cleaner.refuse(
            "high >= max(open, close) >= min(open, close) >= low", bad, "Policy on_high_low='error'"
        )
    if policy == "drop":
        cleaner.report.dropped += cleaner.drop(bad)
        cleaner.report.notes.append(f"dropped {count} row(s) with high/low outside open/close")
        return
    prices = cleaner.df.loc[bad, list(PRICE_COLUMNS)]
    cleaner.df.loc[bad, "high"] = prices.max(axis=1)
    cleaner.df.loc[bad, "low"] = prices.min(axis=1)
    cleaner.report.repaired += count
    cleaner.report.notes.append(f"repaired {count} row(s): high/low widened to cover open and close")


def _misaligned(dates: pd.Series, step: pd.Timedelta) -> int:
    offset = _MONDAY_OFFSET if step % pd.Timedelta(weeks=1) == pd.Timedelta(0) else pd.Timedelta(0)
    ns = dates.to_numpy(dtype="datetime64[ns]").astype("int64") - offset.value
    return int((ns % step.value != 0).sum())


def _check_ohlcv_output(df: pd.DataFrame, report: QualityReport) -> None:
    prices = df[list(PRICE_COLUMNS)].to_numpy()
    if (prices <= 0).any() or (df["volume"].to_numpy() < 0).any() or _high_low_mask(df).any():
        raise AssertionError(
            f"{report.symbol} {report.kind}: internal invariant broken: invalid prices in output"
        )


# --------------------------------------------------------------------------- funding


def clean_funding(
    df: pd.DataFrame, symbol: str, policy: QualityPolicy = QualityPolicy(), interval: str | None = None
) -> tuple[pd.DataFrame, QualityReport]:
    """Apply the rules to a funding frame (`date, rate`); `interval` only sets the gap yardstick.

    Without `interval`, a spacing counts as a gap when it is longer than both spacings beside it
    (Binance moves symbols between 8h, 4h and 1h funding), and the report's interval is the
    median spacing.
    """
    fixed_step = interval is not None
    interval = interval or infer_interval(df["date"]) or DEFAULT_FUNDING_INTERVAL
    report = QualityReport(symbol, "funding", interval, rows_in=len(df))
    cleaner = _Cleaner(df, FUNDING_COLUMNS, report, policy)
    _snap_funding_times(cleaner)
    cleaner.sort()
    cleaner.drop_exact_duplicates()
    cleaner.handle_invalid(None)
    cleaner.handle_conflicts()
    too_big = cleaner.df["rate"].abs().to_numpy() > policy.max_abs_funding_rate
    if too_big.any():
        cleaner.refuse(
            f"|funding rate| <= {policy.max_abs_funding_rate}",
            too_big,
            "A rate this large usually means percent instead of a fraction",
        )
    return cleaner.finish(interval_to_timedelta(interval) if fixed_step else None), report


def _snap_funding_times(cleaner: _Cleaner) -> None:
    dates = cleaner.df["date"]
    hours = dates.dt.round("h")
    near = ((dates - hours).abs() < FUNDING_TIME_TOLERANCE) & (dates != hours)
    count = int(near.sum())
    if count:
        cleaner.df["date"] = dates.where(~near, hours)
        cleaner.report.snapped_to_hour = count
        cleaner.report.notes.append(
            f"moved {count} funding time(s) stamped within a second of the hour onto it"
        )


def inspect_funding(df: pd.DataFrame, symbol: str, interval: str | None = None) -> QualityReport:
    """Report what `clean_funding` would do under the most lenient policy; nothing is changed.

    An implausibly large rate still raises: no policy cleans it.
    """
    return clean_funding(df, symbol, policy=LENIENT, interval=interval)[1]

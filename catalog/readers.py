"""Read every market-data file format our users have into one normalised frame.

Each file becomes one or more `SourceFrame`s: a symbol, market, kind and interval plus a pandas
frame whose `date` column is the candle OPEN time as `datetime64[ns, UTC]` and whose values are
float64. OHLCV and mark-price frames hold `date, open, high, low, close, volume`; funding frames
hold `date, rate`. Rows are returned exactly as the file holds them (order, duplicates, NaN and
all): `catalog.quality` decides what to keep and counts everything it removes or repairs.

Supported files, recognised by name (pass `symbol=`, `market=`, `interval=` to override):

- Binance public archives (data.binance.vision): `BTCUSDT-5m-2025-01.zip` (monthly),
  `BTCUSDT-5m-2025-01-15.zip` (daily), each a zip with one CSV, or that CSV itself. The CSV may
  or may not have a header row, and `open_time` may be in ms or µs (detected per file by
  magnitude). The archive does not say futures or spot: it is "spot" when a path component is
  `spot`, otherwise "futures". A `markPriceKlines` path component makes it mark-price candles.
  Funding archives `BTCUSDT-fundingRate-2025-01.zip` are read too. When a `<zip>.CHECKSUM` file
  sits next to the zip, the zip must match it.
- freqtrade data directories: spot `BTC_USDT-5m.<ext>`, futures `BTC_USDT_USDT-5m-futures.<ext>`,
  `BTC_USDT_USDT-1h-mark.<ext>` and `BTC_USDT_USDT-1h-funding_rate.<ext>` (the rate is in
  `open`), for ext in feather, parquet, json, json.gz (freqtrade's "jsongz").
- Plain OHLCV CSV / Parquet: a time column (`open_time`, `date`, `datetime`, `timestamp` or
  `time`; epoch s/ms/µs/ns or ISO strings, naive means UTC) and open/high/low/close/volume in
  any letter case. Symbol and interval come from names like `BTCUSDT-5m.csv` /
  `BTCUSDT_5m.parquet`; otherwise `symbol=` is required, and the interval, when not given, is
  the median spacing of the timestamps.

Market, when neither the name nor an override settles it: a `BASE_QUOTE_SETTLE` pair or a
futures candle type means futures; then a `spot` path component means spot, a `futures` one
futures; a freqtrade `BASE_QUOTE` pair means spot; anything else defaults to futures.

A file that cannot be read or understood raises `DataFileError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
KINDS = ("ohlcv", "funding", "mark")
MARKETS = ("futures", "spot")
KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
# Preferred first: Binance headers carry both open_time and close_time, ccxt dumps both
# timestamp and datetime.
TIME_COLUMNS = ("open_time", "date", "datetime", "timestamp", "time")
RATE_COLUMNS = ("rate", "funding_rate", "fundingrate", "last_funding_rate")
DEFAULT_FUNDING_INTERVAL = "8h"

_UNITS = {"s": "s", "m": "min", "h": "h", "d": "D", "w": "W"}
_INTERVAL_RE = re.compile(r"^(\d+)([smhdw])$")
_EXTS = (".zip", ".csv", ".feather", ".parquet", ".json", ".json.gz")

_BINANCE_KLINE_RE = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<interval>\d+[a-zA-Z]{1,2})-\d{4}-\d{2}(?:-\d{2})?\.(?:zip|csv)$"
)
_BINANCE_FUNDING_RE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-fundingRate-\d{4}-\d{2}(?:-\d{2})?\.(?:zip|csv)$")
# freqtrade names `PAIR-TIMEFRAME[-CANDLETYPE].ext`; users also write `BTCUSDT_5m.parquet`.
_PAIR_RE = re.compile(
    r"^(?P<pair>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)[-_](?P<interval>\d+[a-zA-Z]{1,2})"
    r"(?:-(?P<ctype>[A-Za-z_]+))?\.(?P<ext>feather|parquet|json|json\.gz|csv)$"
)
_CANDLE_TYPES = {"spot": "ohlcv", "futures": "ohlcv", "mark": "mark", "funding_rate": "funding"}
_UNSUPPORTED_CANDLE_TYPES = ("index", "premiumIndex", "trades")
_UNSUPPORTED_BINANCE_DIRS = ("indexPriceKlines", "premiumIndexKlines")


class DataFileError(ValueError):
    """A file that cannot be read as market data; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class SourceFrame:
    symbol: str  # exchange symbol, e.g. "BTCUSDT" (no separators)
    market: str  # "futures" (USDT-M perpetual) or "spot"
    kind: str  # "ohlcv" | "funding" | "mark"
    interval: str  # "5m", "1h", "8h" ... (funding: the usual spacing between funding times)
    frame: pd.DataFrame  # ohlcv/mark: date, open, high, low, close, volume ; funding: date, rate
    source: str  # file path, or a summary of the files concatenated (for reports)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.symbol, self.market, self.kind, self.interval)


@dataclass(frozen=True)
class _Meta:
    """What a file name says, before overrides; `None` means the name does not say."""

    fmt: str  # "binance" | "binance_funding" | "freqtrade" | "table"
    symbol: str | None
    market: str | None
    kind: str
    interval: str | None


# --------------------------------------------------------------------------- intervals


def interval_to_timedelta(interval: str) -> pd.Timedelta:
    """'5m' -> 5 minutes. Months are refused: they have no fixed length."""
    match = _INTERVAL_RE.match(interval)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"unsupported interval {interval!r} (use e.g. 1s, 5m, 1h, 8h, 1d, 1w; months are not supported)"
        )
    return pd.Timedelta(int(match.group(1)), unit=_UNITS[match.group(2)])


def timedelta_to_interval(step: pd.Timedelta) -> str:
    """5 minutes -> '5m', using the largest unit that divides it exactly."""
    seconds = step.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"cannot express {step} as an interval of whole seconds")
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if int(seconds) % size == 0:
            return f"{int(seconds) // size}{suffix}"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


def _median_step(dates: pd.Series) -> pd.Timedelta | None:
    """Median spacing between distinct timestamps (sorting only when the input is not sorted)."""
    ns = dates.dropna().to_numpy(dtype="datetime64[ns]").astype("int64")
    steps = np.diff(ns)
    if (steps < 0).any():
        steps = np.diff(np.sort(ns))
    steps = steps[steps > 0]
    return pd.Timedelta(int(np.median(steps)), unit="ns").round("s") if len(steps) else None


def infer_interval(dates: pd.Series) -> str | None:
    """The median spacing of the distinct timestamps, as an interval string, or None if < 2."""
    step = _median_step(dates)
    return timedelta_to_interval(step) if step is not None and step > pd.Timedelta(0) else None


def _normalize_interval(path: Path, interval: str) -> str:
    try:
        return timedelta_to_interval(interval_to_timedelta(interval))
    except ValueError as exc:
        raise DataFileError(path, str(exc)) from None


# --------------------------------------------------------------------------- names


def normalize_symbol(raw: str) -> str:
    """'BTC/USDT:USDT', 'BTC_USDT_USDT', 'btc-usdt' -> 'BTCUSDT' (settle currency dropped)."""
    parts = [p for p in re.split(r"[/_:\-\s]+", raw.strip().upper()) if p]
    if not parts or len(parts) > 3 or not all(p.isalnum() for p in parts):
        raise ValueError(f"cannot read a symbol from {raw!r}")
    return "".join(parts[:2])


def _path_market(path: Path) -> str | None:
    parts = {p.lower() for p in path.parts[:-1]}
    if "spot" in parts:
        return "spot"
    return "futures" if "futures" in parts else None


def _meta_from_name(path: Path) -> _Meta | None:
    """What the file name says, or None when it follows no known convention."""
    name = path.name
    if match := _BINANCE_FUNDING_RE.match(name):
        return _Meta("binance_funding", match["symbol"], "futures", "funding", None)
    if match := _BINANCE_KLINE_RE.match(name):
        kind = "mark" if "markPriceKlines" in path.parts else "ohlcv"
        return _Meta("binance", match["symbol"], _path_market(path) or "futures", kind, match["interval"])
    if match := _PAIR_RE.match(name):
        return _pair_meta(path, match)
    return None


def _pair_meta(path: Path, match: re.Match) -> _Meta:
    ctype, pair = match["ctype"], match["pair"]
    if ctype is not None and ctype not in _CANDLE_TYPES:
        raise DataFileError(
            path, f"unsupported candle type {ctype!r} (supported: {', '.join(_CANDLE_TYPES)})"
        )
    kind = _CANDLE_TYPES.get(ctype or "spot")
    parts = pair.split("_")
    if len(parts) > 3:
        raise DataFileError(path, f"cannot read a symbol from {pair!r}")
    market = None
    if len(parts) == 3 or ctype in ("futures", "mark", "funding_rate"):
        market = "futures"
    elif ctype == "spot":
        market = "spot"
    market = market or _path_market(path) or ("spot" if len(parts) == 2 else "futures")
    fmt = "table" if match["ext"] == "csv" else "freqtrade"
    return _Meta(fmt, normalize_symbol(pair), market, kind, match["interval"])


def _looks_like_data(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or not name.lower().endswith(_EXTS):
        return False
    if any(d in path.parts for d in _UNSUPPORTED_BINANCE_DIRS):
        return False
    try:
        return _meta_from_name(path) is not None
    except DataFileError:
        return False


# --------------------------------------------------------------------------- discovery


def discover(paths: list[Path]) -> list[Path]:
    """Expand directories recursively into the data files this module can read.

    Files named explicitly are always kept (reading them reports any problem). Inside
    directories, only files whose names follow a supported convention are picked; the others
    are logged, so nothing disappears silently. The result is sorted and free of repeats.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            found.update(dict.fromkeys(_walk(path)))
        else:
            raise DataFileError(path, "no such file or directory")
    return sorted(found, key=lambda p: p.as_posix())


def _walk(root: Path) -> list[Path]:
    picked = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(root).parts):
            continue
        if _looks_like_data(path):
            picked.append(path)
        elif path.name.lower().endswith(_EXTS):
            log.warning("skipping %s: not a recognised market-data file name", path)
    return picked


# --------------------------------------------------------------------------- raw loaders


def _read_bytes_zip(path: Path) -> bytes:
    _verify_checksum(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")
            ]
            csvs = [m for m in members if m.filename.lower().endswith(".csv")]
            if len(csvs) != 1:
                what = "is empty" if not members else f"holds {len(csvs)} CSV files ({len(members)} members)"
                raise DataFileError(path, f"zip {what}; expected exactly one CSV")
            return archive.read(csvs[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DataFileError(path, f"not a valid zip archive ({exc})") from None


def _verify_checksum(path: Path) -> None:
    # Binance publishes `<zip>.CHECKSUM` ("<sha256>  <name>"); honour it when the user kept it.
    checksum = path.with_name(path.name + ".CHECKSUM")
    if not checksum.is_file():
        return
    words = checksum.read_text().split()
    expected = words[0].lower() if words else ""
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected != actual:
        raise DataFileError(path, f"sha256 {actual} does not match {checksum.name} ({expected or 'empty'})")


def _read_csv_bytes(path: Path, data: bytes) -> pd.DataFrame:
    text = data.decode("utf-8-sig", errors="replace")
    first_line = text.lstrip().split("\n", 1)[0]
    if not first_line.strip():
        raise DataFileError(path, "CSV holds no rows")
    # Column names never start with a digit; epoch and ISO timestamps always do.
    has_header = not first_line.strip().strip('"')[:1].isdigit()
    try:
        frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"unparsable CSV ({exc})") from None
    if not has_header:
        # Headerless files follow Binance's kline layout: time, open, high, low, close, volume, ...
        if frame.shape[1] < 6:
            raise DataFileError(path, f"headerless CSV has {frame.shape[1]} columns; expected at least 6")
        extra = [f"extra_{i}" for i in range(len(KLINE_COLUMNS), frame.shape[1])]
        frame.columns = list(KLINE_COLUMNS[: frame.shape[1]]) + extra
    return frame


def _read_json_rows(path: Path, data: bytes) -> pd.DataFrame:
    try:
        rows = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"not valid JSON ({exc})") from None
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) < 6 for r in rows):
        raise DataFileError(
            path, "expected a JSON list of [timestamp_ms, open, high, low, close, volume] rows"
        )
    frame = pd.DataFrame([r[:6] for r in rows], columns=["date", *OHLCV_COLUMNS])
    # freqtrade writes epoch milliseconds; say so rather than guess from magnitude.
    frame["date"] = _epoch_to_utc(path, frame["date"], unit="ms")
    return frame


def _load_table(path: Path) -> pd.DataFrame:
    """The raw table in a file, before column normalisation."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            return _read_csv_bytes(path, _read_bytes_zip(path))
        if name.endswith(".csv"):
            return _read_csv_bytes(path, path.read_bytes())
        if name.endswith(".json.gz"):
            return _read_json_rows(path, gzip.decompress(path.read_bytes()))
        if name.endswith(".json"):
            return _read_json_rows(path, path.read_bytes())
        if name.endswith(".feather"):
            return pd.read_feather(path)
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
    except DataFileError:
        raise
    except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
        raise DataFileError(path, f"cannot read file ({type(exc).__name__}: {exc})") from None
    raise DataFileError(path, f"unsupported file type (supported: {', '.join(_EXTS)})")


# --------------------------------------------------------------------------- normalisation


def _lower_columns(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(frame.index, pd.RangeIndex):
        # A Parquet written from a date-indexed frame keeps the time in the index.
        frame = frame.reset_index()
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    repeated = frame.columns[frame.columns.duplicated()].tolist()
    if repeated:
        raise DataFileError(path, f"columns appear more than once (ignoring case): {repeated}")
    return frame


def _time_column(path: Path, frame: pd.DataFrame) -> str:
    for name in TIME_COLUMNS:
        if name in frame.columns:
            return name
    raise DataFileError(
        path, f"no time column (looked for {', '.join(TIME_COLUMNS)}; found {list(frame.columns)})"
    )


def _to_utc(path: Path, values: pd.Series) -> pd.Series:
    """Any time column -> datetime64[ns, UTC]; epoch units detected by magnitude."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return _epoch_to_utc(path, values)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() == values.notna().sum():
        return _epoch_to_utc(path, numeric)
    return _strings_to_utc(path, values)


def _epoch_unit(path: Path, values: pd.Series) -> str:
    # 2001..2286 in seconds is 1e9..1e10; each finer unit adds three digits.
    present = values.dropna().abs()
    if present.empty:
        return "ms"
    low, high = (_unit_for(v) for v in (present.min(), present.max()))
    if low is None or high is None or low != high:
        raise DataFileError(
            path,
            f"epoch timestamps of mixed or implausible size ({present.min():.0f} .. {present.max():.0f})",
        )
    return low


def _unit_for(value: float) -> str | None:
    for unit, upper in (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", 1e20)):
        if value < upper:
            return unit if value >= upper / 1000 else None
    return None


def _epoch_to_utc(path: Path, values: pd.Series, unit: str | None = None) -> pd.Series:
    unit = unit or _epoch_unit(path, values)
    try:
        if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
            # Integer arithmetic keeps µs/ns stamps exact, which a float detour would not.
            scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
            ns = values.to_numpy(dtype="int64") * scale
            return pd.Series(pd.to_datetime(ns, unit="ns", utc=True), index=values.index).astype(
                "datetime64[ns, UTC]"
            )
        floats = values.astype("float64")
        return pd.Series(pd.to_datetime(floats, unit=unit, utc=True), index=values.index).astype(
            "datetime64[ns, UTC]"
        )
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
        raise DataFileError(path, f"timestamps out of range ({exc})") from None


def _strings_to_utc(path: Path, values: pd.Series) -> pd.Series:
    try:
        parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        try:
            parsed = pd.to_datetime(values, utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise DataFileError(path, f"unparsable timestamps ({exc})") from None
    return parsed.astype("datetime64[ns, UTC]")


def _to_float(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    if raw.dtype == "float64":
        return raw
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    # Empty cells stay NaN for quality to count; text where a number belongs means a broken file.
    bad = values.isna() & raw.notna()
    if bad.any():
        bad &= raw.astype("string").str.strip() != ""
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise DataFileError(path, f"non-numeric value {raw.iloc[row]!r} in column {column!r} (row {row})")
    return values


def _ohlcv_frame(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    raw = _lower_columns(path, raw)
    missing = [c for c in OHLCV_COLUMNS if c not in raw.columns]
    if missing:
        raise DataFileError(path, f"missing columns {missing} (found {list(raw.columns)})")
    out = pd.DataFrame({"date": _to_utc(path, raw[_time_column(path, raw)])})
    for column in OHLCV_COLUMNS:
        out[column] = _to_float(path, raw, column)
    return out.reset_index(drop=True)


def _funding_frame(path: Path, raw: pd.DataFrame, fmt: str) -> pd.DataFrame:
    raw = _lower_columns(path, raw)
    time_col = "calc_time" if "calc_time" in raw.columns else _time_column(path, raw)
    rate_col = next((c for c in RATE_COLUMNS if c in raw.columns), None)
    if rate_col is None and fmt in ("freqtrade", "table") and "open" in raw.columns:
        rate_col = "open"  # freqtrade keeps the funding rate in `open`
    if rate_col is None:
        raise DataFileError(path, f"no funding rate column (looked for {', '.join(RATE_COLUMNS)}, open)")
    out = pd.DataFrame({"date": _to_utc(path, raw[time_col]), "rate": _to_float(path, raw, rate_col)})
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- checks


def _check_spacing(path: Path, dates: pd.Series, interval: str) -> None:
    """Refuse a file whose rows cannot be bars of `interval` (mislabelled file or close times)."""
    step = interval_to_timedelta(interval)
    present = dates.dropna()
    if len(present) < 2:
        return
    ns = present.to_numpy(dtype="datetime64[ns]").astype("int64")
    step_ns = step.value
    if (ns % step_ns != 0).all() and ((ns + 1_000_000) % step_ns == 0).all():
        raise DataFileError(
            path, "timestamps are candle CLOSE times (…:59.999); candle open times are required"
        )
    median = _median_step(present)
    if median is not None and median > pd.Timedelta(0) and (median < step or median.value % step_ns != 0):
        raise DataFileError(
            path,
            f"rows are {timedelta_to_interval(median)} apart but the interval is {interval}; "
            "pass interval= if the file name is wrong",
        )


# --------------------------------------------------------------------------- public API


def read_file(
    path: Path, symbol: str | None = None, market: str | None = None, interval: str | None = None
) -> list[SourceFrame]:
    """Read one file into normalised frames (one per file today; a list leaves room for more)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    if any(d in path.parts for d in _UNSUPPORTED_BINANCE_DIRS):
        raise DataFileError(path, "index and premium-index klines are not supported")
    meta = _resolve_meta(path, symbol, market)
    reader = _FORMAT_READERS.get(meta.fmt)
    if reader is None:
        raise DataFileError(path, f"unsupported format {meta.fmt!r}")
    frame = reader(path, meta)
    resolved_interval = _resolve_interval(path, meta, frame, interval)
    return [SourceFrame(meta.symbol, meta.market, meta.kind, resolved_interval, frame, str(path))]


def _resolve_meta(path: Path, symbol: str | None, market: str | None) -> _Meta:
    if not path.name.lower().endswith(_EXTS):
        raise DataFileError(path, f"unsupported file type (supported: {', '.join(_EXTS)})")
    meta = _meta_from_name(path) or _Meta("table", None, None, "ohlcv", None)
    if symbol is not None:
        try:
            meta = replace(meta, symbol=normalize_symbol(symbol))
        except ValueError as exc:
            raise DataFileError(path, str(exc)) from None
    if meta.symbol is None:
        raise DataFileError(
            path, "cannot infer the symbol from the file name (expected e.g. BTCUSDT-5m.csv); pass symbol="
        )
    if market is not None:
        if market not in MARKETS:
            raise DataFileError(path, f"market must be one of {MARKETS}, not {market!r}")
        meta = replace(meta, market=market)
    meta = replace(meta, market=meta.market or _path_market(path) or "futures")
    if meta.kind in ("funding", "mark") and meta.market != "futures":
        raise DataFileError(path, f"{meta.kind} data exists only for futures, but market is {meta.market!r}")
    return meta


def _resolve_interval(path: Path, meta: _Meta, frame: pd.DataFrame, override: str | None) -> str:
    if meta.kind == "funding":
        # The name's timeframe is how freqtrade downloaded it, not how often funding happens.
        declared = override or infer_interval(frame["date"]) or DEFAULT_FUNDING_INTERVAL
        return _normalize_interval(path, declared)
    declared = override or meta.interval or infer_interval(frame["date"])
    if declared is None:
        raise DataFileError(
            path, "cannot infer the interval (fewer than two distinct timestamps); pass interval="
        )
    interval = _normalize_interval(path, declared)
    _check_spacing(path, frame["date"], interval)
    return interval


def _read_binance_funding(path: Path, meta: _Meta) -> pd.DataFrame:
    return _funding_frame(path, _load_table(path), meta.fmt)


def _read_generic(path: Path, meta: _Meta) -> pd.DataFrame:
    raw = _load_table(path)
    if meta.kind == "funding":
        return _funding_frame(path, raw, meta.fmt)
    return _ohlcv_frame(path, raw)


_FORMAT_READERS: dict[str, Callable[[Path, _Meta], pd.DataFrame]] = {
    "binance": _read_generic,
    "binance_funding": _read_binance_funding,
    "freqtrade": _read_generic,
    "table": _read_generic,
}


def read_paths(
    paths: list[Path], symbol: str | None = None, market: str | None = None, interval: str | None = None
) -> list[SourceFrame]:
    """Read files and directories; frames with the same (symbol, market, kind, interval) are joined.

    Files are joined in order of their first timestamp and each file keeps its own row order, so
    the result is sorted whenever the files are, and `catalog.quality` still sees (and counts)
    any disorder or overlap between files. Funding frames join across intervals (Binance changes
    a symbol's funding interval over time) and their interval is inferred again afterwards.
    """
    groups: dict[tuple[str, str, str, str], list[SourceFrame]] = {}
    for path in discover(paths):
        for part in read_file(path, symbol=symbol, market=market, interval=interval):
            key = (part.symbol, part.market, part.kind, "" if part.kind == "funding" else part.interval)
            groups.setdefault(key, []).append(part)
    return [_join(groups[key], interval) for key in sorted(groups)]


def _join(parts: list[SourceFrame], override: str | None) -> SourceFrame:
    if len(parts) == 1:
        return parts[0]
    parts = sorted(parts, key=_first_date_key)
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    first = parts[0]
    new_interval = first.interval
    if first.kind == "funding":
        new_interval = _normalize_interval(
            Path(first.source), override or infer_interval(frame["date"]) or "8h"
        )
    source = f"{first.source} .. {parts[-1].source} ({len(parts)} files)"
    return replace(first, frame=frame, interval=new_interval, source=source)


def _first_date_key(part: SourceFrame) -> tuple[int, str]:
    first = part.frame["date"].min()
    return (first.value if pd.notna(first) else np.iinfo("int64").max, part.source)

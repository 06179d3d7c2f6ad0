"""The Parquet catalog as Quantum Trader uses it: bars, mark-price bars, funding rates and a manifest.

Time convention: source frames are keyed by candle OPEN time (`date`, as Binance and freqtrade store them).
Nautilus bars are stamped at the candle CLOSE, which is when the bar becomes known. `frame_to_bars` shifts by
one interval; `read_bars_frame` shifts back. Forgetting the shift would let a backtest see each candle one
interval early.

Writes are idempotent: data already in the catalog is merged with the new rows, identical rows are counted as
already present, and a row that contradicts the catalog is refused rather than overwritten.
"""

import json
import re
import shutil
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from nautilus_trader.model.data import Bar, BarType, FundingRateUpdate
from nautilus_trader.model.enums import bar_aggregation_to_str, price_type_to_str
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.instruments import CryptoPerpetual, CurrencyPair, Instrument
from nautilus_trader.persistence.catalog import ParquetDataCatalog

OHLCV = ["open", "high", "low", "close", "volume"]
MANIFEST = "qt_manifest.json"
_UNITS = {"m": ("MINUTE", 60), "h": ("HOUR", 3600), "d": ("DAY", 86400)}
# Nautilus has a bar type only for minute steps that tile the hour and hour steps that tile the day: no 7m, no 5h.
_TILES = {"m": 60, "h": 24}
INTERVALS = tuple(f"{step}{unit}" for unit, n in _TILES.items() for step in range(1, n) if n % step == 0)
_INTERVAL_RE = re.compile(r"([1-9][0-9]*)([mhd])")
_FIXED_SCALE = 1e16  # Nautilus high-precision fixed point: raw int128 = value * 10**16
FUNDING_INTERVAL_MIN = 480


class CatalogConflictError(ValueError):
    """New data contradicts what the catalog already holds."""


def interval_seconds(interval: str) -> int:
    """The length of a bar in seconds; a ValueError listing the allowed intervals for one the catalog cannot hold."""
    match = _INTERVAL_RE.fullmatch(interval)
    if not match or (match[2] in _TILES and interval not in INTERVALS):
        allowed = f"{', '.join(INTERVALS)} or whole days (1d, 2d, ...)"
        raise ValueError(f"unsupported interval {interval!r}; allowed: {allowed}")
    return int(match[1]) * _UNITS[match[2]][1]


def bar_type_for(instrument_id: InstrumentId | str, interval: str, price_type: str = "LAST") -> BarType:
    interval_seconds(interval)
    step, unit = int(interval[:-1]), _UNITS[interval[-1]][0]
    return BarType.from_str(f"{instrument_id}-{step}-{unit}-{price_type}-EXTERNAL")


def interval_of(bar_type: BarType) -> str:
    spec = bar_type.spec
    unit = {"MINUTE": "m", "HOUR": "h", "DAY": "d"}[bar_aggregation_to_str(spec.aggregation)]
    return f"{spec.step}{unit}"


def frame_to_bars(
    frame: pd.DataFrame, bar_type: BarType, price_precision: int, size_precision: int
) -> list[Bar]:
    shift = interval_seconds(interval_of(bar_type)) * 1_000_000_000
    ts = frame["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.uint64) + np.uint64(shift)
    cols = [np.round(frame[c].to_numpy(dtype=np.float64, copy=True), price_precision) for c in OHLCV[:4]]
    volume = np.round(frame["volume"].to_numpy(dtype=np.float64, copy=True), size_precision)
    return Bar.from_raw_arrays_to_list(
        bar_type, price_precision, size_precision, *cols, volume, ts, ts.copy()
    )


def _decode_fixed(column) -> np.ndarray:
    """fixed_size_binary[16] little-endian int128 -> float64."""
    raw = np.frombuffer(column.combine_chunks().buffers()[1], dtype=np.uint64).reshape(-1, 2)
    return raw[:, 1].view(np.int64) * (2.0**64 / _FIXED_SCALE) + raw[:, 0] / _FIXED_SCALE


@dataclass
class WriteResult:
    key: str
    rows_new: int = 0
    rows_already_present: int = 0
    rows_total: int = 0
    values_rounded: int = 0  # values with more decimals than the series keeps, rounded on the way in


@dataclass
class CatalogStore:
    """A catalog folder. Only writers pass `create=True`: a reader given a mistyped path must fail, not
    make an empty catalog there and report it clean."""

    path: Path
    create: bool = False
    catalog: ParquetDataCatalog = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise FileNotFoundError(f"no catalog at {self.path}: no such directory")
        self.catalog = ParquetDataCatalog(str(self.path))

    # ---- instruments -------------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        return list(self.catalog.instruments())

    def find_instrument(self, instrument_id: InstrumentId | str) -> Instrument | None:
        """Reads only this instrument's own files, so another ingest worker writing its symbol can't break it."""
        kind = CryptoPerpetual if str(instrument_id).endswith("-PERP.BINANCE") else CurrencyPair
        found = self.catalog.instruments(instrument_type=kind, instrument_ids=[str(instrument_id)])
        return found[-1] if found else None

    def instrument(self, instrument_id: InstrumentId | str) -> Instrument:
        if (inst := self.find_instrument(instrument_id)) is not None:
            return inst
        known = ", ".join(sorted(str(i.id) for i in self.instruments())) or "none"
        raise KeyError(f"unknown instrument {instrument_id} in catalog {self.path} (known: {known})")

    def write_instrument(self, instrument: Instrument) -> None:
        # Instruments are stored as interval files too; replace rather than append a second copy.
        for kind in ("crypto_perpetual", "currency_pair"):
            shutil.rmtree(self.path / "data" / kind / str(instrument.id), ignore_errors=True)
        self.catalog.write_data([instrument])

    # ---- bars --------------------------------------------------------------------------------------
    def bar_dir(self, bar_type: BarType | str) -> Path:
        return self.path / "data" / "bar" / str(bar_type)

    def bar_types(self, price_type: str | None = "LAST") -> list[BarType]:
        root = self.path / "data" / "bar"
        names = sorted(p.name for p in root.iterdir()) if root.exists() else []
        types = [BarType.from_str(n) for n in names]
        return [t for t in types if price_type is None or price_type_to_str(t.spec.price_type) == price_type]

    def read_bars_frame(self, bar_type: BarType | str) -> pd.DataFrame:
        """Bars of one type as a frame keyed by candle open time (the inverse of `frame_to_bars`)."""
        bar_type = BarType.from_str(str(bar_type))
        files = sorted(self.bar_dir(bar_type).glob("*.parquet"))
        if not files:
            return pd.DataFrame({"date": pd.to_datetime([], utc=True), **{c: [] for c in OHLCV}})
        table = pq.ParquetFile(files[0]).read() if len(files) == 1 else _concat_tables(files)
        shift = interval_seconds(interval_of(bar_type)) * 1_000_000_000
        ts = table.column("ts_event").to_numpy().astype(np.int64) - shift
        out = {"date": pd.to_datetime(ts, utc=True)}
        out.update({c: _decode_fixed(table.column(c)) for c in OHLCV})
        return pd.DataFrame(out)

    def read_bars(self, bar_type: BarType | str, start=None, end=None) -> list[Bar]:
        return self.catalog.bars([str(bar_type)], start=start, end=end)

    def bar_precision(self, bar_type: BarType | str) -> tuple[int, int] | None:
        """(price, size) precision the stored bars of this type were written with; None if there are none."""
        files = sorted(self.bar_dir(bar_type).glob("*.parquet"))
        if not files:
            return None
        meta = pq.read_schema(files[0]).metadata
        return int(meta[b"price_precision"]), int(meta[b"size_precision"])

    def write_bars(self, instrument: Instrument, frame: pd.DataFrame, bar_type: BarType) -> WriteResult:
        return self.write_bar_frame(frame, bar_type, instrument.price_precision, instrument.size_precision)

    def write_bar_frame(
        self, frame: pd.DataFrame, bar_type: BarType, price_precision: int, size_precision: int
    ) -> WriteResult:
        # Round first, so re-ingesting the same file compares equal to what the catalog stored.
        rounded = frame.assign(
            **{c: frame[c].round(price_precision) for c in OHLCV[:4]},
            volume=frame["volume"].round(size_precision),
        )
        merged, result = self._merge(self.read_bars_frame(bar_type), rounded, OHLCV, str(bar_type))
        result.values_rounded = _count_changed(frame[OHLCV].to_numpy(), rounded[OHLCV].to_numpy())
        if result.rows_new:
            bars = frame_to_bars(merged, bar_type, price_precision, size_precision)
            self._replace(self.bar_dir(bar_type), bars)
        return result

    # ---- funding -----------------------------------------------------------------------------------
    def funding_dir(self, instrument_id: InstrumentId | str) -> Path:
        return self.path / "data" / "funding_rate_update" / str(instrument_id)

    def funding_instrument_ids(self) -> list[str]:
        """Ids of every stored funding series, whether or not the catalog holds the instrument or its bars."""
        root = self.path / "data" / "funding_rate_update"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []

    def read_funding_frame(self, instrument_id: InstrumentId | str) -> pd.DataFrame:
        if not self.funding_dir(instrument_id).exists():
            return pd.DataFrame({"date": pd.to_datetime([], utc=True), "rate": []})
        rows = self.catalog.funding_rates(instrument_ids=[str(instrument_id)])
        return pd.DataFrame(
            {
                "date": pd.to_datetime([r.ts_event for r in rows], utc=True),
                "rate": [float(r.rate) for r in rows],
            }
        )

    def write_funding(self, instrument_id: InstrumentId, frame: pd.DataFrame) -> WriteResult:
        existing = self.read_funding_frame(instrument_id)
        merged, result = self._merge(existing, frame, ["rate"], f"{instrument_id} funding")
        if result.rows_new:
            updates = [
                FundingRateUpdate(instrument_id, Decimal(repr(rate)), ts, ts, interval=FUNDING_INTERVAL_MIN)
                for ts, rate in zip(
                    merged["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64).tolist(),
                    merged["rate"].tolist(),
                    strict=True,
                )
            ]
            self._replace(self.funding_dir(instrument_id), updates)
        return result

    # ---- manifest ----------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        f = self.path / MANIFEST
        return json.loads(f.read_text()) if f.exists() else {"ingests": []}

    def append_manifest(self, entry: dict) -> None:
        manifest = self.read_manifest()
        manifest["ingests"].append(entry)
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))

    # ---- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _merge(existing: pd.DataFrame, new: pd.DataFrame, cols: list[str], key: str):
        result = WriteResult(key=key)
        if existing.empty:
            result.rows_new = result.rows_total = len(new)
            return new.reset_index(drop=True), result
        both = existing.merge(new, on="date", how="inner", suffixes=("_old", "_new"))
        if len(both):
            old = both[[f"{c}_old" for c in cols]].to_numpy()
            fresh = both[[f"{c}_new" for c in cols]].to_numpy()
            differs = ~np.isclose(old, fresh, rtol=1e-9, atol=1e-12).all(axis=1)
            if differs.any():
                first = both.loc[differs, "date"].head(3).tolist()
                raise CatalogConflictError(
                    f"{key}: {int(differs.sum())} rows differ from the catalog at the same timestamps "
                    f"(first: {first}); refusing to overwrite. Remove the catalog folder to re-ingest from scratch."
                )
        result.rows_already_present = len(both)
        added = new[~new["date"].isin(existing["date"])]
        result.rows_new = len(added)
        merged = pd.concat([existing, added]).sort_values("date", kind="stable").reset_index(drop=True)
        result.rows_total = len(merged)
        return merged, result

    def _replace(self, folder: Path, items: list) -> None:
        """Rewrite one data folder: catalog files are append-only intervals, so a merge rewrites them whole."""
        backup = folder.with_name(folder.name + ".old")
        if folder.exists():
            folder.rename(backup)
        try:
            self.catalog.write_data(items)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            if backup.exists():
                backup.rename(folder)
            raise
        shutil.rmtree(backup, ignore_errors=True)


def _count_changed(before: np.ndarray, after: np.ndarray) -> int:
    # Relative, so a float's last-bit noise is no rounding but 0.016099 -> 0.0161 is.
    return int((~np.isclose(before, after, rtol=1e-12, atol=0.0)).sum())


def _concat_tables(files: list[Path]):
    import pyarrow as pa

    return pa.concat_tables([pq.ParquetFile(f).read() for f in files])

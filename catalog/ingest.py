"""`qt data ingest`: files -> clean frames -> instruments, bars, mark bars and funding in the catalog.

Each symbol is ingested by one worker (two by default, one per core): the catalog keeps every bar type and
instrument in its own folder, so workers never write the same file. Every row a quality rule dropped or
repaired is counted in the report and in the catalog's manifest.
"""

import logging
import multiprocessing
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from catalog.instruments import MAX_PRECISION, infer_precision, instrument_id, make_instrument
from catalog.quality import PRICE_COLUMNS, QualityPolicy, QualityReport, clean_funding, clean_ohlcv
from catalog.readers import SourceFrame, discover, read_paths
from catalog.store import CatalogStore, bar_type_for

log = logging.getLogger(__name__)


@dataclass
class SymbolResult:
    symbol: str
    quality: list[dict] = field(default_factory=list)
    writes: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(w["rows_new"] for w in self.writes)

    @property
    def roundings(self) -> list[str]:
        return [
            f"{w['key']}: {w['values_rounded']} value(s) rounded to the {MAX_PRECISION} decimals the catalog keeps"
            for w in self.writes
            if w.get("values_rounded")
        ]


@dataclass
class IngestSummary:
    catalog: Path
    results: list[SymbolResult]

    @property
    def errors(self) -> list[SymbolResult]:
        return [r for r in self.results if r.error]

    def table(self) -> pd.DataFrame:
        rows = []
        for r in self.results:
            for q in r.quality:
                rows.append({"symbol": r.symbol} | {k: q[k] for k in _REPORT_COLUMNS if k in q})
            if r.error:
                rows.append({"symbol": r.symbol, "kind": "ERROR", "interval": r.error[:80]})
        return pd.DataFrame(rows)


_REPORT_COLUMNS = [
    "kind", "interval", "rows_in", "rows_out", "dropped", "duplicates_dropped", "out_of_order", "repaired",
    "gaps", "missing_bars",
]  # fmt: skip


def group_by_symbol(paths: list[Path]) -> dict[str, list[Path]]:
    """Binance (`BTCUSDT-5m-...`) and freqtrade (`BTC_USDT_USDT-5m-futures...`) names start with the pair."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in discover(paths):
        groups[p.name.split("-")[0].replace("_", "").upper()].append(p)
    return dict(sorted(groups.items()))


def ingest(
    paths: list[Path],
    catalog_dir: Path,
    policy: QualityPolicy = QualityPolicy(),
    overrides: dict | None = None,
    workers: int = 2,
    progress: bool = True,
) -> IngestSummary:
    groups = group_by_symbol([Path(p) for p in paths])
    if not groups:
        raise FileNotFoundError(f"no supported data files under {', '.join(map(str, paths))}")
    CatalogStore(catalog_dir, create=True)  # once, before workers race to
    jobs = [(files, str(catalog_dir), policy, overrides or {}) for files in groups.values()]
    results = []
    bar = tqdm(total=len(jobs), desc="ingest", unit="symbol", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: Nautilus and Arrow start threads, and forking a threaded process can deadlock.
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            for res in pool.map(_ingest_group, jobs):
                results.append(res)
                bar.update()
    else:
        for job in jobs:
            results.append(_ingest_group(job))
            bar.update()
    bar.close()
    store = CatalogStore(catalog_dir)
    store.append_manifest(
        {
            "at": datetime.now(UTC).isoformat(),
            "sources": [str(p) for p in paths],
            "policy": policy.__dict__,
            "symbols": [r.__dict__ for r in results],
        }
    )
    return IngestSummary(Path(catalog_dir), results)


def _ingest_group(job) -> SymbolResult:
    files, catalog_dir, policy, overrides = job
    store = CatalogStore(Path(catalog_dir))
    result = SymbolResult(symbol=files[0].name.split("-")[0])
    try:
        ingest_frames(store, read_paths(files, **overrides), policy, result)
    except Exception as err:  # one bad symbol must not lose the others; the error is reported
        result.error = _describe_error(err, result)
    return result


def _describe_error(err: Exception, result: SymbolResult) -> str:
    written = [w["key"] for w in result.writes if w["rows_new"]]
    done = f"failed after writing {', '.join(written)}" if written else "not ingested, nothing written"
    return f"{done}: {type(err).__name__}: {err}"


# Funding first: a symbol whose funding the catalog refuses gets no bars to trade without it.
_WRITE_ORDER = {"funding": 0, "ohlcv": 1, "mark": 2}


def ingest_frames(
    store: CatalogStore, frames: list[SourceFrame], policy: QualityPolicy, result: SymbolResult
):
    """The one path from a frame to the catalog, for files and generated data alike.

    Every frame of the symbol is cleaned before any is written: a refused file refuses the whole
    symbol, so no symbol's bars reach the catalog while its funding was refused.
    """
    frames = sorted(frames, key=lambda f: _WRITE_ORDER[f.kind])
    cleaned = [_clean_frame(sf, policy, result) for sf in frames]
    for sf, clean in zip(frames, cleaned, strict=True):
        _write_frame(store, sf, clean, result)
    return result


def _clean_frame(sf: SourceFrame, policy: QualityPolicy, result: SymbolResult) -> pd.DataFrame:
    result.symbol = sf.symbol
    if sf.kind == "funding":
        clean, report = clean_funding(sf.frame, sf.symbol, policy=policy)
    else:
        clean, report = clean_ohlcv(sf.frame, sf.interval, sf.symbol, kind=sf.kind, policy=policy)
    _record(result, report, sf)
    return clean


def _write_frame(store: CatalogStore, sf: SourceFrame, clean: pd.DataFrame, result: SymbolResult) -> None:
    if sf.kind == "funding":
        if sf.market == "futures":
            result.writes.append(store.write_funding(instrument_id(sf.symbol, sf.market), clean).__dict__)
        return
    if clean.empty:
        return
    if sf.kind == "mark":
        bar_type = bar_type_for(instrument_id(sf.symbol, sf.market), sf.interval, "MARK")
        written = store.write_bar_frame(clean, bar_type, *_mark_precision(store, bar_type, clean))
    else:
        instrument = _instrument_for(store, sf, clean)
        written = store.write_bars(instrument, clean, bar_type_for(instrument.id, sf.interval, "LAST"))
    result.writes.append(written.__dict__)


def _record(result: SymbolResult, report: QualityReport, sf: SourceFrame) -> None:
    result.quality.append(report.to_dict() | {"source": sf.source, "market": sf.market})


def _precision(frame: pd.DataFrame) -> tuple[int, int]:
    prices = frame[list(PRICE_COLUMNS)].to_numpy().ravel()
    return infer_precision(prices), infer_precision(frame["volume"].to_numpy())


def _mark_precision(store: CatalogStore, bar_type, frame: pd.DataFrame) -> tuple[int, int]:
    # A mark price is an index average quoted finer than the trade tick (BTC 92760.05741135 on a 0.1 tick);
    # rounded to that tick it moved by up to 0.14% (PIPPIN). So mark bars keep their own precision, never the
    # instrument's.
    price, size = _precision(frame)
    stored = store.bar_precision(bar_type)
    return (price, size) if stored is None else (max(price, stored[0]), max(size, stored[1]))


def _instrument_for(store: CatalogStore, sf: SourceFrame, frame: pd.DataFrame):
    existing = store.find_instrument(instrument_id(sf.symbol, sf.market))
    price_precision, size_precision = _precision(frame)
    if existing is not None:
        price_precision = max(price_precision, existing.price_precision)
        size_precision = max(size_precision, existing.size_precision)
        if (price_precision, size_precision) == (existing.price_precision, existing.size_precision):
            return existing
    instrument = make_instrument(sf.symbol, price_precision, size_precision, sf.market)
    store.write_instrument(instrument)
    return instrument


def write_generated(
    n_symbols: int,
    days: float,
    seed: int,
    catalog_dir: Path,
    start: str = "2025-01-01",
    progress: bool = True,
) -> IngestSummary:
    """Generated candles and funding go through the same quality rules and writer as files do."""
    from catalog.generator import generate_market

    market = generate_market(n_symbols, days, seed, start=start, progress=progress)
    store = CatalogStore(catalog_dir, create=True)
    results = []
    for symbol in tqdm(market.candles, desc="write catalog", unit="symbol", disable=not progress):
        frames = [
            SourceFrame(symbol, "futures", "ohlcv", "5m", market.candles[symbol], f"generated(seed={seed})"),
            SourceFrame(
                symbol, "futures", "funding", "8h", market.funding[symbol], f"generated(seed={seed})"
            ),
        ]
        results.append(ingest_frames(store, frames, QualityPolicy(), SymbolResult(symbol)))
    return IngestSummary(Path(catalog_dir), results)

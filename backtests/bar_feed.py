"""Bars for a backtest, streamed into the engine one time slice at a time.

Nautilus keeps every data point handed to `BacktestEngine.add_data` alive for the whole run, at about 400
bytes a bar: 100 symbols x 90 days of 5-minute bars held 1 GiB of Bar objects before the first one was
processed. Here each symbol's bars are held as plain arrays (48 bytes a bar) and turned into Bar objects a
slice at a time (`chunk_days`), through Nautilus' own streaming API (`add_data_iterator`), inside one
`engine.run`. Timers, fills and ordering are those of a single pass: the engine merges the stream by
`ts_init` exactly as it merges data added up front (tests/test_bar_feed.py checks the trades are the same).

Within a slice, bars of one `ts_init` come in universe order, as `add_data` + `sort_data` orders them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Price

from catalog.store import CatalogStore, interval_of, interval_seconds

NS_PER_DAY = 86_400_000_000_000
OHLC = ("open", "high", "low", "close")


@dataclass
class _Series:
    bar_type: BarType
    price_precision: int
    size_precision: int
    ts: np.ndarray  # uint64 ts_event == ts_init (bar close time)
    ohlcv: np.ndarray  # (5, n) float64, rounded to the instrument's precisions


class BarFeed:
    """The universe's bars between `start` and `end` (inclusive, on close time), as compact arrays."""

    def __init__(self, series: list[_Series]) -> None:
        self._series = series

    @classmethod
    def load(cls, store: CatalogStore, bar_types: list[BarType], instruments, start, end) -> BarFeed:
        precisions = {inst.id: (inst.price_precision, inst.size_precision) for inst in instruments}
        lo, hi = pd.Timestamp(start).value, pd.Timestamp(end).value
        series = []
        for bar_type in bar_types:
            frame = store.read_bars_frame(bar_type)
            shift = interval_seconds(interval_of(bar_type)) * 1_000_000_000
            ts = frame["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64) + shift
            keep = (ts >= lo) & (ts <= hi)
            price_prec, size_prec = precisions[bar_type.instrument_id]
            cols = [np.round(frame[c].to_numpy(dtype=np.float64)[keep], price_prec) for c in OHLC]
            cols.append(np.round(frame["volume"].to_numpy(dtype=np.float64)[keep], size_prec))
            series.append(
                _Series(bar_type, price_prec, size_prec, ts[keep].astype(np.uint64), np.stack(cols))
            )
        return cls(series)

    def __len__(self) -> int:
        return sum(len(s.ts) for s in self._series)

    def frames(self) -> Iterator[tuple[BarType, pd.DataFrame, np.ndarray]]:
        """Each bar type's bars exactly as the engine gets them (rounded to the instrument's precisions): a
        frame of date (open time), open, high, low, close, volume, and the close times in ns."""
        for s in self._series:
            ts = s.ts.astype(np.int64)
            step = interval_seconds(interval_of(s.bar_type)) * 1_000_000_000
            frame = pd.DataFrame(dict(zip(("open", "high", "low", "close", "volume"), s.ohlcv, strict=True)))
            frame.insert(0, "date", pd.to_datetime(ts - step, utc=True))
            yield s.bar_type, frame, ts

    def gaps(self) -> dict[tuple[InstrumentId, int], float]:
        """Bars that open away from the previous close, keyed by (instrument, ts_init): their open."""
        out = {}
        for s in self._series:
            opens, closes = s.ohlcv[0], s.ohlcv[3]
            for i in np.flatnonzero(opens[1:] != closes[:-1]) + 1:
                price = Price(float(opens[i]), s.price_precision)  # as a Bar holds it
                out[(s.bar_type.instrument_id, int(s.ts[i]))] = price.as_double()
        return out

    def slices(self, chunk_days: float = 1.0) -> Iterator[list[Bar]]:
        """Bars sorted by ts_init, one list per `chunk_days` of close times; ties in universe order."""
        if not len(self):
            return
        first = min(int(s.ts[0]) for s in self._series if len(s.ts))
        last = max(int(s.ts[-1]) for s in self._series if len(s.ts))
        step = max(1, int(chunk_days * NS_PER_DAY))
        for lo in range(first, last + 1, step):
            chunk = self._slice(lo, lo + step)
            if chunk:
                yield chunk

    def _slice(self, lo: int, hi: int) -> list[Bar]:
        bars: list[Bar] = []
        for s in self._series:
            a, b = np.searchsorted(s.ts, [lo, hi])
            if a < b:
                ts = np.ascontiguousarray(s.ts[a:b])
                o, h, l, c, v = (np.ascontiguousarray(x[a:b]) for x in s.ohlcv)  # noqa: E741
                bars += Bar.from_raw_arrays_to_list(
                    s.bar_type, s.price_precision, s.size_precision, o, h, l, c, v, ts, ts.copy()
                )
        bars.sort(key=_ts_init)  # stable: ties keep universe order
        return bars


def _ts_init(bar: Bar) -> int:
    return bar.ts_init

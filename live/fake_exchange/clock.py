"""Catalog bars as live klines: the series of each symbol and the replay clock that closes them one at a time.

Venue time: the catalog is keyed by candle OPEN time here (`CatalogStore.read_bars_frame` shifts the catalog's
close-time stamps back by one interval). With `align_to_now` (the default) every timestamp is shifted by a whole
number of intervals so the replay starts at the current wall-clock bar boundary. The live node filters history by
its own wall clock (`data.py` drops bars with `ts_event >= now`), so warm-up requests anchored at `utc_now()` find
the catalog's history just before the replay start. Once the clock runs faster than real time, later klines are
stamped in the node's future; Nautilus accepts them.

The clock is discrete: `now_ms` is always a bar boundary, and a kline counts as closed when
`open + interval <= now_ms` (Binance's own close time is `open + interval - 1 ms`).
"""

import time
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pandas as pd

from catalog.instruments import instrument_id, symbol_of
from catalog.store import CatalogStore, bar_type_for, interval_seconds

DEFAULT_HISTORY_BARS = 200
MAX_KLINES = 1500
DEFAULT_KLINES = 500


@dataclass
class SymbolSeries:
    """One symbol's bars in venue time, plus the instrument's precision for formatting prices and sizes."""

    symbol: str
    price_precision: int
    size_precision: int
    interval: str
    interval_ms: int
    open_ms: np.ndarray  # int64, venue time
    ohlcv: np.ndarray  # (n, 5) float64

    def price(self, value: float) -> str:
        return f"{value:.{self.price_precision}f}"

    def qty(self, value: float) -> str:
        return f"{value:.{self.size_precision}f}"

    @property
    def tick_size(self) -> str:
        return f"{Decimal(1).scaleb(-self.price_precision):f}"

    @property
    def step_size(self) -> str:
        return f"{Decimal(1).scaleb(-self.size_precision):f}"

    def closed_count(self, now_ms: int) -> int:
        """How many bars are closed at venue time `now_ms` (bars are sorted by open time)."""
        return int(np.searchsorted(self.open_ms, now_ms - self.interval_ms, side="right"))

    def index_closing_at(self, now_ms: int) -> int | None:
        i = int(np.searchsorted(self.open_ms, now_ms - self.interval_ms, side="left"))
        return i if i < len(self.open_ms) and self.open_ms[i] == now_ms - self.interval_ms else None

    def bar(self, i: int) -> tuple[float, float, float, float, float]:
        o, h, low, c, v = self.ohlcv[i]
        return float(o), float(h), float(low), float(c), float(v)

    def klines(self, now_ms: int, start: int | None, end: int | None, limit: int | None) -> list[list]:
        """REST klines: closed bars only; `startTime`/`endTime` are inclusive bounds on the OPEN time."""
        limit = min(int(limit or DEFAULT_KLINES), MAX_KLINES)
        hi = self.closed_count(now_ms)
        if end is not None:
            hi = min(hi, int(np.searchsorted(self.open_ms, end, side="right")))
        lo = (
            int(np.searchsorted(self.open_ms, start, side="left"))
            if start is not None
            else max(0, hi - limit)
        )
        return [self.kline_row(i) for i in range(lo, min(hi, lo + limit))]

    def kline_row(self, i: int) -> list:
        o, h, low, c, v = self.bar(i)
        t = int(self.open_ms[i])
        return [
            t, self.price(o), self.price(h), self.price(low), self.price(c), self.qty(v),
            t + self.interval_ms - 1, f"{v * c:.8f}", _trade_count(i), self.qty(v / 2), f"{v * c / 2:.8f}", "0",
        ]  # fmt: skip

    def kline_message(self, i: int) -> dict:
        """The combined-stream kline message of a closed bar (`x: true`)."""
        o, h, low, c, v = self.bar(i)
        t = int(self.open_ms[i])
        stream = f"{self.symbol.lower()}@kline_{self.interval}"
        k = {
            "t": t, "T": t + self.interval_ms - 1, "s": self.symbol, "i": self.interval,
            "f": i * 100, "L": i * 100 + _trade_count(i) - 1,
            "o": self.price(o), "c": self.price(c), "h": self.price(h), "l": self.price(low),
            "v": self.qty(v), "n": _trade_count(i), "x": True, "q": f"{v * c:.8f}",
            "V": self.qty(v / 2), "Q": f"{v * c / 2:.8f}", "B": "0",
        }  # fmt: skip
        return {"stream": stream, "data": {"e": "kline", "E": t + self.interval_ms, "s": self.symbol, "k": k}}

    def mark_price_message(self, i: int, stream: str) -> dict:
        c = self.price(self.bar(i)[3])
        close = int(self.open_ms[i]) + self.interval_ms
        next_funding = (close // 28_800_000 + 1) * 28_800_000
        data = {"e": "markPriceUpdate", "E": close, "s": self.symbol, "p": c, "i": c, "P": c}
        return {"stream": stream, "data": {**data, "r": "0.00010000", "T": next_funding}}


def _trade_count(i: int) -> int:
    return 100


@dataclass
class ReplayClock:
    """Venue time. `advance()` moves one interval and says which bars closed; nothing else moves it."""

    series: dict[str, SymbolSeries]
    interval_ms: int
    now_ms: int
    end_ms: int  # venue time of the last bar close the replay will reach
    shift_ms: int = 0  # venue time minus catalog time
    bars_replayed: int = field(default=0)

    @property
    def finished(self) -> bool:
        return self.now_ms >= self.end_ms

    def advance(self) -> list[tuple[SymbolSeries, int]]:
        """Close the next bar of every symbol; returns (series, index) of the bars that closed (gaps give none)."""
        if self.finished:
            return []
        self.now_ms += self.interval_ms
        self.bars_replayed += 1
        closed = [(s, s.index_closing_at(self.now_ms)) for s in self.series.values()]
        return [(s, i) for s, i in closed if i is not None]

    def last_closed(self, symbol: str) -> int | None:
        s = self.series[symbol]
        n = s.closed_count(self.now_ms)
        return n - 1 if n else None


def load_replay(
    catalog: str,
    symbols: list[str] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    interval: str = "5m",
    align_to_now: bool = True,
    history_bars: int = DEFAULT_HISTORY_BARS,
    behind_bars: int = 0,
) -> ReplayClock:
    """Read the symbols' bars from a catalog and place the replay clock at `start`.

    Bars that open before `start` are history (already closed when the replay begins). Without `start`, the replay
    begins `history_bars` bars after the first bar
    (at most half-way through the data). With `align_to_now`, `behind_bars` starts the replay that many bars
    before the current wall-clock bar, so the first that many bars close in the node's past: a strategy that
    acts at a time after a bar's close (the ensemble's batch alert) acts at once on them instead of waiting
    for the wall clock to reach a bar stamped in its future. Raises FileNotFoundError (no catalog), KeyError (unknown symbol)
    or ValueError (no bars, bad period) with a message fit for a command line.
    """
    store = CatalogStore(catalog)
    interval_ms = interval_seconds(interval) * 1000
    if not symbols:
        symbols = sorted(symbol_of(i.id) for i in store.instruments() if str(i.id).endswith("-PERP.BINANCE"))
        if not symbols:
            raise ValueError(f"catalog {catalog} holds no USDT-M perpetual instruments")
    end_cut = _ms(end) if end is not None else None
    series: dict[str, SymbolSeries] = {}
    for raw in symbols:
        symbol = symbol_of(raw).upper()
        inst = store.instrument(instrument_id(symbol))
        frame = store.read_bars_frame(bar_type_for(inst.id, interval))
        opens = frame["date"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        keep = opens < end_cut if end_cut is not None else np.ones(len(opens), dtype=bool)
        if not keep.any():
            raise ValueError(f"no {interval} bars for {symbol} in catalog {catalog} (within the period)")
        ohlcv = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)[keep]
        series[symbol] = SymbolSeries(
            symbol, inst.price_precision, inst.size_precision, interval, interval_ms, opens[keep], ohlcv
        )
    first = min(int(s.open_ms[0]) for s in series.values())
    last_close = max(int(s.open_ms[-1]) for s in series.values()) + interval_ms
    span = (last_close - first) // interval_ms
    start_ms = _ms(start) if start is not None else first + min(history_bars, span // 2) * interval_ms
    if start is not None and start_ms >= last_close:
        raise ValueError(
            f"start {start} is after the last bar ({pd.Timestamp(last_close, unit='ms', tz='UTC')})"
        )
    start_ms = max(first, min(start_ms - start_ms % interval_ms, last_close - interval_ms))
    if end_cut is not None and start_ms >= end_cut:
        raise ValueError(f"start {pd.Timestamp(start_ms, unit='ms', tz='UTC')} is not before end {end}")
    shift = 0
    if align_to_now:
        wall = int(time.time() * 1000)
        shift = wall - wall % interval_ms - behind_bars * interval_ms - start_ms
        for s in series.values():
            s.open_ms = s.open_ms + shift
    return ReplayClock(series, interval_ms, start_ms + shift, last_close + shift, shift)


def _ms(value) -> int:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return int(ts.value // 1_000_000)

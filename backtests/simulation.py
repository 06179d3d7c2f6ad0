"""What the simulated Binance venue adds to Nautilus' backtest engine: funding and slippage.

Nautilus' Cython backtest carries funding-rate data but settles none, so `FundingModule` (a
`SimulationModule`, the engine's own hook, like its FX rollover module) charges every open perpetual
position at each 8-hourly funding time: payment = -signed_quantity * price * rate, so longs pay a positive
rate and shorts receive it, as on Binance.

Which position and which price: the position held AT the funding time T, at the price at T, for every symbol
alike. The bar stamped T is the one that closes at T; its sweep (stops and take-profits that traded inside
it) happened before T, while any order a strategy sends on seeing that bar reaches the venue after T. So each
symbol settles when its own bar at T has been swept and before any strategy sees it: the module listens to
the symbol's bars with a priority above every strategy's, and charges the position then, at that bar's close.
A symbol with no bar at T (a gap) settles before its next bar is swept, on the position and the last price it
had at T.

`BpsSlippageFillModel` fills market orders a fixed number of basis points beyond the best price and
stop-market orders that many basis points beyond their trigger (worse for the taker), rounded to the tick
against the taker (so on a coarse tick the slippage is at least one tick, never zero); limit orders keep the
engine's own fill logic. A bar is swept as four ticks (open, high, low, close), so a stop triggers at the tick
beyond it while the price passed through the trigger on the way: the trigger is the honest reference. When
the bar opened beyond the stop (a gap: its open differs from the previous close and is past the stop), the
fill is at the open.
"""

import math
from dataclasses import dataclass

import numpy as np
from nautilus_trader.backtest.models import FillModel
from nautilus_trader.backtest.modules import SimulationModule, SimulationModuleConfig
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BookOrder
from nautilus_trader.model.enums import BookType, OrderSide, OrderType
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Money, Price, Quantity

_TAKER_TYPES = (OrderType.MARKET, OrderType.STOP_MARKET, OrderType.TRAILING_STOP_MARKET)


@dataclass(frozen=True)
class FundingPayment:
    ts: int
    instrument_id: str
    quantity: float  # signed position size at the funding time
    price: float
    rate: float
    amount: float  # credited to the account (negative = paid)


class FundingModule(SimulationModule):
    BAR_PRIORITY = 1_000  # above every strategy and actor (their subscriptions have priority 0)

    def __init__(self, schedule: dict[InstrumentId, tuple[np.ndarray, np.ndarray]]):
        """`schedule`: instrument -> (funding times in ns, rates), each sorted by time."""
        super().__init__(SimulationModuleConfig())
        self._schedule = {
            iid: (np.asarray(times, dtype=np.int64), np.asarray(rates, dtype=float))
            for iid, (times, rates) in schedule.items()
        }
        self._next: dict[InstrumentId, int] = {}
        self.payments: list[FundingPayment] = []

    def register_venue(self, exchange) -> None:
        super().register_venue(exchange)
        for iid in self._schedule:
            self.msgbus.subscribe(f"data.bars.{iid}-*", self._on_bar_swept, priority=self.BAR_PRIORITY)

    def pre_process(self, data) -> None:
        """Before a bar is swept: settle the funding times the symbol had no bar at (it is still at T)."""
        if isinstance(data, Bar):
            self._settle_due(data.bar_type.instrument_id, data.ts_init - 1, None)

    def process(self, ts_now: int) -> None:
        """Called after every data point; each symbol settles on its own bars instead (above)."""

    def _on_bar_swept(self, bar: Bar) -> None:
        """The bar closing at T has been swept and no strategy has seen it yet: settle T at its close."""
        self._settle_due(bar.bar_type.instrument_id, bar.ts_init, bar.close.as_double())

    def _settle_due(self, iid: InstrumentId, ts_now: int, close: float | None) -> None:
        times_rates = self._schedule.get(iid)
        if times_rates is None:
            return
        times, rates = times_rates
        k = self._next.get(iid, 0)
        while k < len(times) and times[k] <= ts_now:
            self._settle(int(times[k]), iid, float(rates[k]), close)
            k += 1
        self._next[iid] = k

    def _settle(self, ts: int, iid: InstrumentId, rate: float, close: float | None) -> None:
        for position in self.exchange.cache.positions_open(instrument_id=iid):
            price = close
            if price is None:
                last = self.exchange.best_bid_price(iid)
                if last is None:
                    continue
                price = last.as_double()
            qty = position.signed_qty
            amount = -qty * price * rate
            self.exchange.adjust_account(Money(amount, USDT))
            self.payments.append(FundingPayment(ts, str(iid), qty, price, rate, amount))

    def total(self) -> float:
        return float(sum(p.amount for p in self.payments))

    def log_diagnostics(self, logger) -> None:
        logger.info(f"Funding: {len(self.payments)} payments, net {self.total():.2f} USDT")

    def reset(self) -> None:
        self._next = {}
        self.payments = []


class BpsSlippageFillModel(FillModel):
    def __init__(self, slippage_bps: float, clock):
        """`clock` is the engine's: during a bar's sweep it reads that bar's time."""
        super().__init__(prob_fill_on_limit=1.0, prob_slippage=0.0, random_seed=0)
        self.slippage = slippage_bps / 10_000.0
        self._gaps: dict[tuple[InstrumentId, int], float] = {}
        self._clock = clock

    def set_gaps(self, gaps: dict[tuple[InstrumentId, int], float]) -> None:
        """The bars that open away from the previous close, keyed by (instrument, ts_init): their open
        (backtests/bar_feed.py finds them). Continuous 5-minute crypto bars open at the previous close, so
        there are few.
        """
        self._gaps = dict(gaps)

    def get_orderbook_for_fill_simulation(self, instrument, order, best_bid: Price, best_ask: Price):
        if self.slippage <= 0 or order.order_type not in _TAKER_TYPES:
            return None
        book = OrderBook(instrument_id=instrument.id, book_type=BookType.L2_MBP)
        unlimited = Quantity(1e12, instrument.size_precision)
        tick = instrument.price_increment.as_double()
        bid, ask = best_bid.as_double(), best_ask.as_double()
        trigger = getattr(order, "trigger_price", None)
        if trigger is not None and order.order_type != OrderType.MARKET:
            level = trigger.as_double()
            gap_open = self._gaps.get((instrument.id, self._clock.timestamp_ns()))
            gapped = gap_open is not None and (
                gap_open <= level if order.side == OrderSide.SELL else gap_open >= level
            )
            if gapped:  # the bar opened beyond the stop: the fill is at the open
                bid = ask = gap_open
            else:
                # The bar passed through the trigger on its way to the tick that triggered it (its high or
                # low): the fill is at the trigger.
                bid = ask = level
        # A seller gets the bid and a buyer pays the ask: each rounds to the tick AGAINST the taker, so a coarse
        # tick (7 bps on some symbols) never rounds the slippage away.
        bid = max(ticks_down(bid * (1 - self.slippage), tick), tick)
        ask = ticks_up(ask * (1 + self.slippage), tick)
        book.add(BookOrder(OrderSide.BUY, instrument.make_price(bid), unlimited, 1), 0, 0)
        book.add(BookOrder(OrderSide.SELL, instrument.make_price(ask), unlimited, 2), 0, 0)
        return book


_ON_TICK = 1e-9  # in ticks: a price this close to a tick is on it (float noise, not slippage)


def ticks_down(price: float, tick: float) -> float:
    """The highest tick at or below `price`."""
    return math.floor(price / tick + _ON_TICK) * tick


def ticks_up(price: float, tick: float) -> float:
    """The lowest tick at or above `price`."""
    return math.ceil(price / tick - _ON_TICK) * tick

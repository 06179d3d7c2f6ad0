"""What the simulated Binance venue adds to Nautilus' backtest engine: funding and slippage.

Nautilus' Cython backtest carries funding-rate data but settles none, so `FundingModule` (a
`SimulationModule`, the engine's own hook, like its FX rollover module) charges every open perpetual
position at each 8-hourly funding time: payment = -signed_quantity * price * rate, so longs pay a positive
rate and shorts receive it, as on Binance. The price is the venue's last price (the bar close) at that time.

`BpsSlippageFillModel` fills market orders a fixed number of basis points beyond the best price and
stop-market orders that many basis points beyond their trigger (worse for the taker); limit orders keep the
engine's own fill logic. A bar is swept as four ticks (open, high, low, close), so a stop triggers at the tick
beyond it while the price passed through the trigger on the way: the trigger is the honest reference. When
the bar opened beyond the stop (a gap: its open differs from the previous close and is past the stop), the
fill is at the open.
"""

from dataclasses import dataclass

import numpy as np
from nautilus_trader.backtest.models import FillModel
from nautilus_trader.backtest.modules import SimulationModule, SimulationModuleConfig
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import BookOrder
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
    def __init__(self, schedule: dict[InstrumentId, tuple[np.ndarray, np.ndarray]]):
        """`schedule`: instrument -> (funding times in ns, rates), each sorted by time."""
        super().__init__(SimulationModuleConfig())
        events = [
            (int(ts), iid, float(rate))
            for iid, (times, rates) in schedule.items()
            for ts, rate in zip(times, rates, strict=True)
        ]
        self._events = sorted(events, key=lambda e: (e[0], str(e[1])))
        self._times = np.array([e[0] for e in self._events], dtype=np.int64)
        self._next = 0
        self.payments: list[FundingPayment] = []

    def process(self, ts_now: int) -> None:
        if self._next >= len(self._events) or self._times[self._next] > ts_now:
            return
        while self._next < len(self._events) and self._events[self._next][0] <= ts_now:
            ts, iid, rate = self._events[self._next]
            self._settle(ts, iid, rate)
            self._next += 1

    def _settle(self, ts: int, iid: InstrumentId, rate: float) -> None:
        for position in self.exchange.cache.positions_open(instrument_id=iid):
            price = self.exchange.best_bid_price(iid)
            if price is None:
                continue
            qty = position.signed_qty
            amount = -qty * price.as_double() * rate
            self.exchange.adjust_account(Money(amount, USDT))
            self.payments.append(FundingPayment(ts, str(iid), qty, price.as_double(), rate, amount))

    def total(self) -> float:
        return float(sum(p.amount for p in self.payments))

    def log_diagnostics(self, logger) -> None:
        logger.info(f"Funding: {len(self.payments)} payments, net {self.total():.2f} USDT")

    def reset(self) -> None:
        self._next = 0
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
        bid = max(bid * (1 - self.slippage), tick)
        ask = ask * (1 + self.slippage)
        book.add(BookOrder(OrderSide.BUY, instrument.make_price(bid), unlimited, 1), 0, 0)
        book.add(BookOrder(OrderSide.SELL, instrument.make_price(ask), unlimited, 2), 0, 0)
        return book

"""Instruments as Binance's live adapter builds them, so backtests and the live node agree.

USDT-M perpetuals are `CryptoPerpetual` with id `BTCUSDT-PERP.BINANCE`, margin_init = margin_maint = 1
(leverage comes from the account, not the instrument) and tier-0 fees maker 0.0002 / taker 0.0005.
Spot pairs are `CurrencyPair` with id `BTCUSDT.BINANCE`.
"""

import re
from decimal import Decimal

import numpy as np
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.enums import CurrencyType
from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
from nautilus_trader.model.instruments import CryptoPerpetual, CurrencyPair, Instrument
from nautilus_trader.model.objects import Currency, Money, Price, Quantity

VENUE = Venue("BINANCE")
QUOTE = "USDT"
MAKER_FEE = Decimal("0.0002")
TAKER_FEE = Decimal("0.0005")
MAX_PRECISION = 8
_SYMBOL_RE = re.compile(r"^[A-Z0-9]+USDT$")


def check_symbol(symbol: str) -> str:
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"unknown symbol {symbol!r}: expected a USDT-quoted Binance symbol such as BTCUSDT")
    return symbol


def instrument_id(symbol: str, market: str = "futures") -> InstrumentId:
    suffix = "-PERP" if market == "futures" else ""
    return InstrumentId(Symbol(f"{check_symbol(symbol)}{suffix}"), VENUE)


def symbol_of(instrument: InstrumentId | str) -> str:
    """BTCUSDT-PERP.BINANCE -> BTCUSDT."""
    return str(instrument).split(".")[0].removesuffix("-PERP")


def infer_precision(values: np.ndarray, max_precision: int = MAX_PRECISION) -> int:
    """Smallest number of decimals that represents every value exactly (up to float64's own error).

    Every value is looked at: one 0.016099 among 200,000 0.0161s needs 6 decimals, and a sample that
    misses it has the catalog round it away. Each pass keeps only the values not yet exact, so it is cheap.
    """
    left = np.asarray(values, dtype=np.float64)
    left = left[np.isfinite(left)]
    for p in range(max_precision + 1):
        scaled = left * 10.0**p
        # A float64 is off its decimal value by up to ~1 eps of itself, so large scaled values need more room.
        noise = np.maximum(1e-6, 4 * np.finfo(np.float64).eps * np.abs(scaled))
        left = left[np.abs(scaled - np.round(scaled)) > noise]
        if not len(left):
            return p
    return max_precision


def _base_currency(symbol: str) -> Currency:
    code = symbol.removesuffix(QUOTE)
    return Currency(code, 8, 0, code, CurrencyType.CRYPTO)


def make_instrument(
    symbol: str,
    price_precision: int,
    size_precision: int,
    market: str = "futures",
    maker_fee: Decimal = MAKER_FEE,
    taker_fee: Decimal = TAKER_FEE,
) -> Instrument:
    common = dict(
        instrument_id=instrument_id(symbol, market),
        raw_symbol=Symbol(symbol),
        base_currency=_base_currency(symbol),
        quote_currency=USDT,
        price_precision=price_precision,
        price_increment=Price(10.0**-price_precision, price_precision),
        size_precision=size_precision,
        size_increment=Quantity(10.0**-size_precision, size_precision),
        max_quantity=None,
        min_quantity=Quantity(10.0**-size_precision, size_precision),
        max_price=None,
        min_price=None,
        margin_init=Decimal(1),
        margin_maint=Decimal(1),
        maker_fee=maker_fee,
        taker_fee=taker_fee,
        ts_event=0,
        ts_init=0,
    )
    if market == "futures":
        return CryptoPerpetual(
            settlement_currency=USDT,
            is_inverse=False,
            max_notional=None,
            min_notional=Money(5, USDT),
            **common,
        )
    if market == "spot":
        return CurrencyPair(max_notional=None, min_notional=Money(5, USDT), **common)
    raise ValueError(f"unknown market {market!r}: expected 'futures' or 'spot'")

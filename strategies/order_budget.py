"""The node's order-rate limit as a strategy spends it, so the orders that protect positions are never denied.

Nautilus' RiskEngine denies every order over its `max_order_submit_rate` (the backtest config's
`venue.max_order_rate`; a live node sets the same field). A denied stop is a position without protection, and
denials count as execution errors for the emergency stop. So a strategy spends the limit in order of
importance:
- protective orders (the initial stop and take-profits, the liquidation guard, every close) are always sent;
- an entry is sent only while the window still holds it, the orders that will protect it, and
  RESERVE_PER_POSITION orders for every position open or pending, this one included;
- optional replacements (a trailing stop's next step) are sent only while that reserve stays free. They are
  tried again on the next bar.

The ledger counts the orders this strategy sends, over the same sliding window as Nautilus' throttler. Several
strategies on one node share the node's limit, and each sees only its own orders: give each a share of the
limit by lowering it.
"""

from collections import deque
from datetime import timedelta
from typing import Annotated

from nautilus_trader.config import RiskEngineConfig
from pydantic import AfterValidator

# A close, and one replaced order (the stop resized after a take-profit, or the liquidation guard re-placed).
RESERVE_PER_POSITION = 2


def parse_rate(rate: str) -> tuple[int, int]:
    """`"200/00:00:10"` -> (200, 10 s in ns): Nautilus' `max_order_submit_rate` format."""
    problem = f"order rate must be orders/HH:MM:SS, at least 1 in a positive interval (e.g. '200/00:00:10'), got {rate!r}"
    try:
        limit, interval = rate.split("/")
        hours, minutes, seconds = (float(part) for part in interval.split(":"))
        nanos = int(timedelta(hours=hours, minutes=minutes, seconds=seconds).total_seconds() * 1e9)
        count = int(limit)
    except ValueError as err:
        raise ValueError(problem) from err
    if count < 1 or nanos <= 0:
        raise ValueError(problem)
    return count, nanos


def _valid_rate(rate: str) -> str:
    parse_rate(rate)
    return rate


# The config field type of a `max_order_rate` (backtest venue and live node alike).
OrderRate = Annotated[str, AfterValidator(_valid_rate)]


class OrderRateBudget:
    def __init__(self, limit: int, interval_ns: int) -> None:
        self.limit = limit
        self.interval_ns = interval_ns
        self._sent: deque[int] = deque()

    @classmethod
    def nautilus_default(cls) -> "OrderRateBudget":
        """What a node runs with when nobody set the rate; a bound risk engine replaces it (`rebind`)."""
        return cls(*parse_rate(RiskEngineConfig().max_order_submit_rate))

    def rebind(self, risk_engine) -> None:
        """Take the limit the node's RiskEngine really enforces."""
        limit, interval = risk_engine.max_order_submit_rate()
        self.limit, self.interval_ns = int(limit), int(interval.total_seconds() * 1e9)

    def record(self, now_ns: int) -> None:
        self._sent.append(now_ns)

    def free(self, now_ns: int) -> int:
        """Orders that may still be sent in the window ending now."""
        sent = self._sent
        while sent and sent[0] <= now_ns - self.interval_ns:
            sent.popleft()
        return self.limit - len(sent)

"""What a strategy does when the venue misbehaves: the same code in a backtest and live.

Nautilus' Binance exec client retries transient errors itself (429, 5xx, -1007, -2011 on cancel; see
live/config.py `RetriesConfig`). What is left once its retries are spent arrives here as an order event:

- An EXIT that the venue rejected (a reduce-only market order: a strategy exit, an emergency or time exit, or the
  Exit Brain's market close after its stop was rejected) while the position is still open: the close is sent
  again after `exit_retry_seconds`, up to `exit_retries` times, each an ERROR line. A position is never left
  without either a resting stop or a close on its way; after the last attempt an ERROR says it is open with
  neither, and a RiskEvent(code `exit_failed`) goes out.
- A CANCEL the venue rejected for an order that is still open here (Binance -2011 "Unknown order sent" after the
  adapter's retries, or another error): the cancel is sent again after `cancel_retry_seconds`, up to
  `cancel_retries` times (a WARNING each). If the venue really has no such order, the node's open-order check
  (`reconciliation.open_check_interval_secs`) closes it here and the retries stop.
- A SLOW venue: an order whose first answer (accepted, rejected, filled) comes more than `slow_venue_seconds`
  after it was sent gets a WARNING with the time it took. In a backtest orders are answered at once.

Timers run on the strategy's clock (a TestClock in a backtest, the wall clock live).
"""

from nautilus_trader.model.data import DataType
from nautilus_trader.model.enums import OrderType, PositionSide
from nautilus_trader.model.orders import Order

from quantum_trader.events import RiskEvent
from quantum_trader.trace import role_of, trace_of

SOURCE = "execution_guard"
RISK_EVENT_TYPE = DataType(RiskEvent)
NS = 1_000_000_000


class ExecutionGuard:
    def __init__(self, strategy, config):
        self.strategy = strategy
        self.config = config
        self._sent_ns: dict = {}  # client order id -> when it was sent, until its first answer
        self._exit_attempts: dict = {}  # instrument id -> exit retries used since the position last changed
        self._cancel_attempts: dict = {}  # client order id -> cancel retries used
        self._timers = 0
        self.slow_orders: list[tuple[str, float]] = []
        self.exit_retries = 0
        self.cancel_retries = 0

    # ---- latency -------------------------------------------------------------------------------------
    def sent(self, order: Order) -> None:
        self._sent_ns[order.client_order_id] = self.strategy.clock.timestamp_ns()

    def answered(self, order: Order | None, how: str) -> None:
        if order is None:
            return
        sent = self._sent_ns.pop(order.client_order_id, None)
        if sent is None:
            return
        seconds = (self.strategy.clock.timestamp_ns() - sent) / NS
        if seconds > self.config.slow_venue_seconds:
            self.slow_orders.append((str(order.client_order_id), seconds))
            self.strategy.log.warning(
                f"Slow venue: {order.order_type.name} {order.client_order_id} of {order.instrument_id} "
                f"{how} {seconds:.2f} s after it was sent (threshold {self.config.slow_venue_seconds:g} s)"
            )

    # ---- rejected exits --------------------------------------------------------------------------------
    def exit_rejected(self, order: Order | None, reason: str) -> None:
        if order is None or not order.is_reduce_only or order.order_type != OrderType.MARKET:
            return
        iid = order.instrument_id
        position = self._open_position(iid)
        if position is None:
            return  # nothing left to close (a late reduce-only order for a closed position)
        trace = trace_of(order.tags)
        used = self._exit_attempts.get(iid, 0)
        limit = self.config.exit_retries
        if used >= limit:
            text = (
                f"Exit of {iid} rejected again ({reason}); gave up after {limit} retries: the position is OPEN "
                "with no resting stop and no close on its way"
            )
            self.strategy.log.error(f"trace_id={trace} {text}" if trace else text)
            self._publish("exit_failed", text, str(iid), float(used), float(limit), trace)
            return
        self._exit_attempts[iid] = used + 1
        delay = self.config.exit_retry_seconds
        self.strategy.log.error(
            (f"trace_id={trace} " if trace else "")
            + f"Exit order {order.client_order_id} of {iid} rejected ({reason}); the position is still open: "
            f"sending the close again in {delay:g} s (retry {used + 1}/{limit})"
        )
        tag = role_of(order.tags, "STRATEGY")  # the retry gets the position's trace tag again
        self._later(delay, lambda: self._retry_exit(iid, tag))
        self.exit_retries += 1

    def _retry_exit(self, iid, tag: str) -> None:
        position = self._open_position(iid)
        if position is None:
            return
        working = [
            o
            for o in self.strategy.cache.orders_open(instrument_id=iid, strategy_id=self.strategy.id)
            if o.is_reduce_only and o.order_type == OrderType.MARKET
        ]
        if working:
            return  # another close is already on its way
        self.strategy.reduce_at_market(position, position.quantity, tag)

    def position_changed(self, instrument_id) -> None:
        self._exit_attempts.pop(instrument_id, None)

    # ---- rejected cancels --------------------------------------------------------------------------------
    def cancel_rejected(self, order: Order | None, reason: str) -> None:
        if order is None or order.is_closed:
            return  # the venue closed it first (filled, cancelled, expired): what the cancel asked for holds
        key = order.client_order_id
        used = self._cancel_attempts.get(key, 0)
        limit = self.config.cancel_retries
        if used >= limit:
            self.strategy.log.error(
                f"Cancel of {key} ({order.instrument_id}) rejected again ({reason}); gave up after {limit} "
                "retries: the order is still open here (the open-order check reconciles it with the venue)"
            )
            return
        self._cancel_attempts[key] = used + 1
        delay = self.config.cancel_retry_seconds
        self.strategy.log.warning(
            f"Cancel of {key} ({order.instrument_id}) rejected ({reason}); the order is still open here: "
            f"cancelling again in {delay:g} s (retry {used + 1}/{limit})"
        )
        self._later(delay, lambda: self._retry_cancel(key))
        self.cancel_retries += 1

    def _retry_cancel(self, client_order_id) -> None:
        order = self.strategy.cache.order(client_order_id)
        if order is None or order.is_closed or order.is_pending_cancel:
            return
        self.strategy.cancel_order(order)

    # ---- helpers -------------------------------------------------------------------------------------
    def _later(self, seconds: float, action) -> None:
        self._timers += 1
        name = f"qt-execution-guard-{self._timers}"
        at = self.strategy.clock.timestamp_ns() + int(seconds * NS)
        self.strategy.clock.set_time_alert_ns(name, at, lambda _event: action())

    def _open_position(self, iid):
        for position in self.strategy.cache.positions_open(instrument_id=iid, strategy_id=self.strategy.id):
            if position.side != PositionSide.FLAT:
                return position
        return None

    def _publish(
        self, code: str, reason: str, symbol: str, value: float, limit: float, trace: str = ""
    ) -> None:
        now = self.strategy.clock.timestamp_ns()
        event = RiskEvent(
            source=SOURCE, action="alert", code=code, reason=reason, symbol=symbol, value=value, limit=limit,
            ts_event=now, ts_init=now, trace_id=trace,
        )  # fmt: skip
        self.strategy.publish_data(RISK_EVENT_TYPE, event)

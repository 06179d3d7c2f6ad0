"""The venue's book-keeping: one USDT-M account in one-way mode, its orders, algo orders, trades and positions.

Pure and synchronous: every method takes request parameters (strings, as Binance receives them) and returns the
REST body plus the user-stream events it caused, or raises `VenueError(code, msg)`. Nothing here does I/O except
the optional JSON snapshot.

Matching (deliberately simple, bar-based):
- MARKET orders fill at once at the mark, which is the last closed bar's close; taker fee 0.0005.
- LIMIT orders fill at once at the mark if marketable (taker), else rest and fill when a later bar trades through
  the price (maker fee 0.0002), at the limit or the bar's open if it opened beyond it.
- Algo STOP_MARKET / TAKE_PROFIT_MARKET orders trigger when a new bar's high/low crosses the trigger price and fill
  at the trigger price, or at the bar's open if the bar gapped through it. The trigger emits, in order:
  ALGO_UPDATE TRIGGERING, ALGO_UPDATE TRIGGERED (`ai` = the new order id), ORDER_TRADE_UPDATE NEW and TRADE for
  that order (its client id is the clientAlgoId, `ot` the algo type), ACCOUNT_UPDATE, ALGO_UPDATE FINISHED
  (`aq`/`ap`). A reduce-only trigger that would open a position expires instead (ORDER_TRADE_UPDATE EXPIRED,
  then FINISHED with `aq` 0).
- reduceOnly: a regular order that would open or grow a position is rejected (-2022); a larger quantity is cut to
  the position, as Binance does.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from pathlib import Path

TAKER_FEE = Decimal("0.0005")
MAKER_FEE = Decimal("0.0002")
MAINT_MARGIN_RATE = Decimal("0.004")
MIN_NOTIONAL = Decimal(5)
DEFAULT_LEVERAGE = 20
MAX_NOTIONAL = "1000000000"
ALGO_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT", "TRAILING_STOP_MARKET"})
SUPPORTED_ALGO_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})
OPEN = frozenset({"NEW", "PARTIALLY_FILLED"})
ZERO = Decimal(0)


class VenueError(Exception):
    """A Binance error answer: HTTP `status` with body `{"code": code, "msg": msg}`."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status


@dataclass
class Spec:
    price_precision: int
    size_precision: int


@dataclass
class Order:
    orderId: int
    clientOrderId: str
    symbol: str
    side: str
    type: str
    origType: str
    quantity: Decimal
    price: Decimal
    stopPrice: Decimal
    reduceOnly: bool
    closePosition: bool
    timeInForce: str
    time: int
    updateTime: int
    status: str = "NEW"
    executedQty: Decimal = ZERO
    cumQuote: Decimal = ZERO


@dataclass
class AlgoOrder:
    algoId: int
    clientAlgoId: str
    symbol: str
    side: str
    orderType: str
    quantity: Decimal
    triggerPrice: Decimal
    reduceOnly: bool
    closePosition: bool
    timeInForce: str
    workingType: str
    createTime: int
    updateTime: int
    algoStatus: str = "NEW"
    triggerTime: int = 0
    actualOrderId: str = ""
    executedQty: Decimal = ZERO
    avgPrice: Decimal = ZERO


@dataclass
class Trade:
    id: int
    orderId: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    realizedPnl: Decimal
    time: int
    maker: bool


@dataclass
class Position:
    amount: Decimal = ZERO
    entry: Decimal = ZERO


@dataclass
class Venue:
    specs: dict[str, Spec]
    balance: Decimal = Decimal(10_000)
    leverage: dict[str, int] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    algos: dict[int, AlgoOrder] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    marks: dict[str, Decimal] = field(default_factory=dict)
    next_id: int = 1_000_001
    path: Path | None = None

    # ---- orders ------------------------------------------------------------------------------------
    def new_order(self, p: dict, now: int) -> tuple[dict, list[dict]]:
        symbol = self._symbol(p)
        kind = p.get("type", "")
        if kind in ALGO_TYPES:
            raise VenueError(
                -4120, "Order type not supported for this endpoint. Please use the Algo Order API."
            )
        if kind not in ("MARKET", "LIMIT"):
            raise VenueError(-1116, "Invalid orderType.")
        side = self._side(p)
        qty = self._qty(p, symbol)
        reduce_only = _flag(p.get("reduceOnly"))
        price = self._price(p, "price", symbol) if kind == "LIMIT" else ZERO
        mark = self.marks.get(symbol)
        if mark is None:
            raise VenueError(-2010, f"No market for {symbol} yet: no bar has closed.")
        client_id = p.get("newClientOrderId") or f"fake-{self.next_id}"
        if any(o.clientOrderId == client_id and o.status in OPEN for o in self.orders.values()):
            raise VenueError(-2010, "ClientOrderId is duplicated.")
        if reduce_only:
            qty = self._reduce_only_qty(symbol, side, qty)
        fill_px = mark if kind == "MARKET" or _crosses(side, price, mark) else None
        self._check_notional(symbol, qty, price if kind == "LIMIT" else mark, reduce_only)
        self._check_margin(symbol, side, qty, fill_px or price)
        order = Order(
            self._id(), client_id, symbol, side, kind, kind, qty, price, ZERO, reduce_only,
            False, p.get("timeInForce", "GTC"), now, now,
        )  # fmt: skip
        self.orders[order.orderId] = order
        body = self.order_row(order)
        events = [self._order_event(order, "NEW", now)]
        if fill_px is not None:
            events += self._fill(order, qty, fill_px, maker=False, now=now)
        self._save()
        return body, events

    def new_algo_order(self, p: dict, now: int) -> tuple[dict, list[dict]]:
        symbol = self._symbol(p)
        if p.get("algoType") != "CONDITIONAL":
            raise VenueError(
                -1102, "Mandatory parameter 'algoType' was not sent, was empty/null, or malformed."
            )
        kind = p.get("type", "")
        if kind not in SUPPORTED_ALGO_TYPES:
            raise VenueError(-1116, f"Invalid orderType (the fake supports {sorted(SUPPORTED_ALGO_TYPES)}).")
        side = self._side(p)
        close_position = _flag(p.get("closePosition"))
        qty = ZERO if close_position and not p.get("quantity") else self._qty(p, symbol)
        trigger = self._price(p, "triggerPrice", symbol)
        mark = self.marks.get(symbol)
        if mark is not None and _triggered(kind, side, trigger, mark, mark):
            raise VenueError(-2021, "Order would immediately trigger.")
        client_id = p.get("clientAlgoId") or f"fakealgo-{self.next_id}"
        algo = AlgoOrder(
            self._id(), client_id, symbol, side, kind, qty, trigger, _flag(p.get("reduceOnly")), close_position,
            p.get("timeInForce", "GTC"), p.get("workingType", "CONTRACT_PRICE"), now, now,
        )  # fmt: skip
        self.algos[algo.algoId] = algo
        self._save()
        return self.algo_row(algo), [self._algo_event(algo, now)]

    def cancel_order(self, p: dict, now: int) -> tuple[dict, list[dict]]:
        order = self._find_order(p, open_only=True)
        order.status, order.updateTime = "CANCELED", now
        self._save()
        return self.order_row(order), [self._order_event(order, "CANCELED", now)]

    def cancel_algo_order(self, p: dict, now: int) -> tuple[dict, list[dict]]:
        algo = self._find_algo(p)
        if algo.algoStatus != "NEW":
            raise VenueError(-2011, "Unknown order sent.")
        algo.algoStatus, algo.updateTime = "CANCELED", now
        self._save()
        body = {"algoId": algo.algoId, "clientAlgoId": algo.clientAlgoId, "code": "200", "msg": "success"}
        return body, [self._algo_event(algo, now)]

    def cancel_all(self, symbol: str, now: int, algo: bool) -> list[dict]:
        events = []
        if algo:
            for a in self.algos.values():
                if a.symbol == symbol and a.algoStatus == "NEW":
                    a.algoStatus, a.updateTime = "CANCELED", now
                    events.append(self._algo_event(a, now))
        else:
            for o in self.orders.values():
                if o.symbol == symbol and o.status in OPEN:
                    o.status, o.updateTime = "CANCELED", now
                    events.append(self._order_event(o, "CANCELED", now))
        self._save()
        return events

    def set_leverage(self, symbol: str, leverage: str) -> dict:
        try:
            value = int(leverage)
        except (TypeError, ValueError):
            value = 0
        if not 1 <= value <= 125:
            raise VenueError(-4028, f"Leverage {leverage} is not valid")
        self.leverage[self._symbol({"symbol": symbol})] = value
        self._save()
        return {"leverage": value, "maxNotionalValue": MAX_NOTIONAL, "symbol": symbol}

    # ---- a bar closed ------------------------------------------------------------------------------
    def on_bar(self, symbol: str, o: float, h: float, low: float, c: float, now: int) -> list[dict]:
        """Trigger and fill what this bar's range reaches, then mark the symbol at the close."""
        o_, h_, l_ = Decimal(repr(o)), Decimal(repr(h)), Decimal(repr(low))
        events: list[dict] = []
        for algo in sorted(self.algos.values(), key=lambda a: a.algoId):
            live = algo.symbol == symbol and algo.algoStatus == "NEW"
            if live and _triggered(algo.orderType, algo.side, algo.triggerPrice, h_, l_):
                events += self._trigger(algo, _gap_price(algo, o_), now)
        for order in sorted(self.orders.values(), key=lambda x: x.orderId):
            if order.symbol == symbol and order.status in OPEN and order.type == "LIMIT":
                reached = l_ <= order.price if order.side == "BUY" else h_ >= order.price
                if reached:
                    better = min(order.price, o_) if order.side == "BUY" else max(order.price, o_)
                    events += self._fill(order, order.quantity - order.executedQty, better, True, now)
        self.marks[symbol] = Decimal(repr(c))
        if events:
            self._save()
        return events

    def _trigger(self, algo: AlgoOrder, px: Decimal, now: int) -> list[dict]:
        algo.algoStatus, algo.triggerTime, algo.updateTime = "TRIGGERING", now, now
        events = [self._algo_event(algo, now)]
        pos = self.position(algo.symbol).amount
        qty = abs(pos) if algo.closePosition else algo.quantity
        order = Order(
            self._id(), algo.clientAlgoId, algo.symbol, algo.side, "MARKET", algo.orderType, qty, ZERO,
            algo.triggerPrice, algo.reduceOnly or algo.closePosition, algo.closePosition, algo.timeInForce, now, now,
        )  # fmt: skip
        self.orders[order.orderId] = order
        algo.algoStatus, algo.actualOrderId = "TRIGGERED", str(order.orderId)
        events.append(self._algo_event(algo, now))
        events.append(self._order_event(order, "NEW", now))
        reduces = pos != 0 and (pos > 0) == (algo.side == "SELL")
        if (order.reduceOnly and not reduces) or qty == 0:
            order.status = "EXPIRED"
            events.append(self._order_event(order, "EXPIRED", now))
        else:
            if order.reduceOnly:
                order.quantity = min(qty, abs(pos))
            events += self._fill(order, order.quantity, px, maker=False, now=now)
            algo.executedQty, algo.avgPrice = order.executedQty, px
        algo.algoStatus, algo.updateTime = "FINISHED", now
        events.append(self._algo_event(algo, now))
        return events

    def _fill(self, order: Order, qty: Decimal, px: Decimal, maker: bool, now: int) -> list[dict]:
        spec = self.specs[order.symbol]
        px = _quantize(px, spec.price_precision)
        pos = self.position(order.symbol)
        signed = qty if order.side == "BUY" else -qty
        realized = ZERO
        if pos.amount and (pos.amount > 0) != (signed > 0):
            closing = min(abs(signed), abs(pos.amount))
            realized = closing * (px - pos.entry) * (1 if pos.amount > 0 else -1)
        new_amount = pos.amount + signed
        if new_amount == 0:
            pos.entry = ZERO
        elif pos.amount == 0 or (pos.amount > 0) != (new_amount > 0):
            pos.entry = px
        elif (pos.amount > 0) == (signed > 0):
            pos.entry = (pos.entry * abs(pos.amount) + px * qty) / abs(new_amount)
        pos.amount = new_amount
        fee = _quantize(qty * px * (MAKER_FEE if maker else TAKER_FEE), 8)
        self.balance += realized - fee
        order.executedQty += qty
        order.cumQuote += qty * px
        order.status = "FILLED" if order.executedQty >= order.quantity else "PARTIALLY_FILLED"
        order.updateTime = now
        trade = Trade(self._id(), order.orderId, order.symbol, order.side, px, qty, fee, realized, now, maker)
        self.trades.append(trade)
        return [self._order_event(order, "TRADE", now, trade), self._account_event(order.symbol, now)]

    # ---- queries -----------------------------------------------------------------------------------
    def position(self, symbol: str) -> Position:
        return self.positions.setdefault(symbol, Position())

    def get_order(self, p: dict) -> dict:
        try:
            return self.order_row(self._find_order(p, open_only=False))
        except VenueError:
            raise VenueError(-2013, "Order does not exist.") from None

    def get_algo(self, p: dict) -> dict:
        try:
            return self.algo_row(self._find_algo(p))
        except VenueError:
            raise VenueError(-2013, "Order does not exist.") from None

    def open_orders(self, symbol: str | None) -> list[dict]:
        return [
            self.order_row(o) for o in self.orders.values() if o.status in OPEN and symbol in (None, o.symbol)
        ]

    def open_algo_orders(self, symbol: str | None) -> list[dict]:
        rows = self.algos.values()
        return [self.algo_row(a) for a in rows if a.algoStatus == "NEW" and symbol in (None, a.symbol)]

    def all_orders(self, symbol: str, p: dict) -> list[dict]:
        rows = [o for o in self.orders.values() if o.symbol == symbol and _within(o.time, p)]
        rows = [o for o in rows if o.orderId >= int(p.get("orderId") or 0)]
        return [self.order_row(o) for o in _limited(rows, p, 500, 1000, from_start="orderId" in p)]

    def all_algo_orders(self, symbol: str, p: dict) -> list[dict]:
        rows = [a for a in self.algos.values() if a.symbol == symbol and _within(a.createTime, p)]
        rows = [a for a in rows if a.algoId >= int(p.get("algoId") or 0)]
        return [self.algo_row(a) for a in _limited(rows, p, 500, 1000, from_start="algoId" in p)]

    def user_trades(self, symbol: str, p: dict) -> list[dict]:
        rows = [t for t in self.trades if t.symbol == symbol and _within(t.time, p)]
        rows = [t for t in rows if t.id >= int(p.get("fromId") or 0)]
        return [self.trade_row(t) for t in _limited(rows, p, 500, 1000, from_start="fromId" in p)]

    def account(self, now: int) -> dict:
        upnl, pos_im, maint = self._totals()
        order_im = sum((self._order_margin(o) for o in self.orders.values() if o.status in OPEN), ZERO)
        margin_balance = self.balance + upnl
        available = margin_balance - pos_im - order_im
        asset = {
            "asset": "USDT", "walletBalance": _s(self.balance), "unrealizedProfit": _s(upnl),
            "marginBalance": _s(margin_balance), "maintMargin": _s(maint), "initialMargin": _s(pos_im + order_im),
            "positionInitialMargin": _s(pos_im), "openOrderInitialMargin": _s(order_im),
            "crossWalletBalance": _s(self.balance), "crossUnPnl": _s(upnl), "availableBalance": _s(available),
            "maxWithdrawAmount": _s(max(available, ZERO)), "marginAvailable": True, "updateTime": now,
        }  # fmt: skip
        totals = {
            "totalInitialMargin": asset["initialMargin"], "totalMaintMargin": asset["maintMargin"],
            "totalWalletBalance": asset["walletBalance"], "totalUnrealizedProfit": asset["unrealizedProfit"],
            "totalMarginBalance": asset["marginBalance"], "totalPositionInitialMargin": _s(pos_im),
            "totalOpenOrderInitialMargin": _s(order_im), "totalCrossWalletBalance": asset["walletBalance"],
            "totalCrossUnPnl": asset["unrealizedProfit"], "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"],
        }  # fmt: skip
        positions = [self.position_row(s, now) for s in sorted(self.specs)]
        flags = {"feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True, "updateTime": now}
        return {**flags, **totals, "assets": [asset], "positions": positions}

    def position_row(self, symbol: str, now: int) -> dict:
        pos = self.position(symbol)
        mark = self.marks.get(symbol, pos.entry)
        lev = self.leverage_of(symbol)
        notional = pos.amount * mark
        spec = self.specs[symbol]
        return {
            "symbol": symbol, "positionSide": "BOTH", "positionAmt": _s(pos.amount),
            "entryPrice": _s(pos.entry), "breakEvenPrice": _s(pos.entry), "markPrice": _s(mark),
            "unRealizedProfit": _s(pos.amount * (mark - pos.entry)), "liquidationPrice": "0",
            "isolatedMargin": "0", "notional": _s(notional), "marginAsset": "USDT", "isolatedWallet": "0",
            "initialMargin": _s(abs(notional) / lev), "maintMargin": _s(abs(notional) * MAINT_MARGIN_RATE),
            "positionInitialMargin": _s(abs(notional) / lev), "openOrderInitialMargin": "0", "adl": 0,
            "bidNotional": "0", "askNotional": "0", "updateTime": now, "leverage": str(lev),
            "maxNotionalValue": MAX_NOTIONAL, "marginType": "cross", "isAutoAddMargin": "false",
            "pricePrecision": spec.price_precision,
        }  # fmt: skip

    def leverage_of(self, symbol: str) -> int:
        return self.leverage.get(symbol, DEFAULT_LEVERAGE)

    def order_row(self, o: Order) -> dict:
        avg = o.cumQuote / o.executedQty if o.executedQty else ZERO
        spec = self.specs[o.symbol]
        return {
            "orderId": o.orderId, "symbol": o.symbol, "status": o.status, "clientOrderId": o.clientOrderId,
            "price": _p(o.price, spec), "avgPrice": _p(avg, spec), "origQty": _q(o.quantity, spec),
            "executedQty": _q(o.executedQty, spec), "cumQuote": _s(o.cumQuote), "timeInForce": o.timeInForce,
            "type": o.type, "reduceOnly": o.reduceOnly, "closePosition": o.closePosition, "side": o.side,
            "positionSide": "BOTH", "stopPrice": _p(o.stopPrice, spec), "workingType": "CONTRACT_PRICE",
            "priceProtect": False, "origType": o.origType, "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0, "time": o.time,
            "updateTime": o.updateTime,
        }  # fmt: skip

    def algo_row(self, a: AlgoOrder) -> dict:
        spec = self.specs[a.symbol]
        return {
            "algoId": a.algoId, "clientAlgoId": a.clientAlgoId, "algoType": "CONDITIONAL",
            "orderType": a.orderType, "symbol": a.symbol, "side": a.side, "positionSide": "BOTH",
            "timeInForce": a.timeInForce, "quantity": _q(a.quantity, spec), "algoStatus": a.algoStatus,
            "actualOrderId": a.actualOrderId, "actualPrice": _p(a.avgPrice, spec),
            "triggerPrice": _p(a.triggerPrice, spec), "price": "0", "icebergQuantity": None, "tpTriggerPrice": "0",
            "tpPrice": "0", "slTriggerPrice": "0", "slPrice": "0", "tpOrderType": "", "selfTradePreventionMode":
            "EXPIRE_MAKER", "workingType": a.workingType, "priceMatch": "NONE", "closePosition": a.closePosition,
            "priceProtect": False, "reduceOnly": a.reduceOnly, "createTime": a.createTime,
            "updateTime": a.updateTime, "triggerTime": a.triggerTime, "goodTillDate": 0,
        }  # fmt: skip

    def trade_row(self, t: Trade) -> dict:
        spec = self.specs[t.symbol]
        return {
            "symbol": t.symbol, "id": t.id, "orderId": t.orderId, "side": t.side, "price": _p(t.price, spec),
            "qty": _q(t.qty, spec), "realizedPnl": _s(t.realizedPnl), "quoteQty": _s(t.qty * t.price),
            "commission": _s(t.commission), "commissionAsset": "USDT", "time": t.time, "positionSide": "BOTH",
            "buyer": t.side == "BUY", "maker": t.maker,
        }  # fmt: skip

    def snapshot(self, now: int) -> dict:
        """What `/_fake/state` shows: positions, open orders, open algo orders, fills and the balance."""
        return {
            "balance": _s(self.balance),
            "positions": {
                s: self.position_row(s, now) for s in sorted(self.specs) if self.position(s).amount
            },
            "open_orders": self.open_orders(None),
            "open_algo_orders": self.open_algo_orders(None),
            "orders": [self.order_row(o) for o in self.orders.values()],
            "algo_orders": [self.algo_row(a) for a in self.algos.values()],
            "fills": [self.trade_row(t) for t in self.trades],
            "marks": {s: _s(m) for s, m in self.marks.items()},
        }

    # ---- user-stream events ------------------------------------------------------------------------
    def _order_event(self, o: Order, exec_type: str, now: int, trade: Trade | None = None) -> dict:
        spec = self.specs[o.symbol]
        avg = o.cumQuote / o.executedQty if o.executedQty else ZERO
        data = {
            "s": o.symbol, "c": o.clientOrderId, "S": o.side, "o": o.type, "f": o.timeInForce,
            "q": _q(o.quantity, spec), "p": _p(o.price, spec), "ap": _p(avg, spec), "sp": _p(o.stopPrice, spec),
            "x": exec_type, "X": o.status, "i": o.orderId,
            "l": _q(trade.qty if trade else ZERO, spec), "z": _q(o.executedQty, spec),
            "L": _p(trade.price if trade else ZERO, spec), "T": now, "t": trade.id if trade else 0,
            "b": "0", "a": "0", "m": bool(trade and trade.maker), "R": o.reduceOnly, "wt": "CONTRACT_PRICE",
            "ot": o.origType, "ps": "BOTH", "cp": o.closePosition, "pP": False, "si": 0, "ss": 0,
            "rp": _s(trade.realizedPnl if trade else ZERO), "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0,
        }  # fmt: skip
        if trade:
            data.update(N="USDT", n=_s(trade.commission))
        return {"e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": data}

    def _algo_event(self, a: AlgoOrder, now: int) -> dict:
        spec = self.specs[a.symbol]
        data = {
            "caid": a.clientAlgoId, "aid": a.algoId, "at": "CONDITIONAL", "o": a.orderType, "s": a.symbol,
            "S": a.side, "ps": "BOTH", "f": a.timeInForce, "q": _q(a.quantity, spec), "X": a.algoStatus,
            "tp": _p(a.triggerPrice, spec), "p": "0", "wt": a.workingType, "pm": "NONE", "cp": a.closePosition,
            "pP": False, "R": a.reduceOnly, "tt": a.triggerTime, "gtd": 0, "V": "EXPIRE_MAKER",
        }  # fmt: skip
        if a.actualOrderId:
            data.update(ai=a.actualOrderId, act="MARKET")
        if a.algoStatus == "FINISHED":
            data.update(aq=_q(a.executedQty, spec), ap=_p(a.avgPrice, spec))
        return {"e": "ALGO_UPDATE", "E": now, "T": now, "o": data}

    def _account_event(self, symbol: str, now: int) -> dict:
        pos = self.position(symbol)
        mark = self.marks.get(symbol, pos.entry)
        balances = [{"a": "USDT", "wb": _s(self.balance), "cw": _s(self.balance), "bc": "0"}]
        position = {
            "s": symbol, "pa": _s(pos.amount), "ep": _s(pos.entry), "bep": _s(pos.entry), "cr": "0",
            "up": _s(pos.amount * (mark - pos.entry)), "mt": "cross", "iw": "0", "ps": "BOTH",
        }  # fmt: skip
        return {
            "e": "ACCOUNT_UPDATE",
            "E": now,
            "T": now,
            "a": {"m": "ORDER", "B": balances, "P": [position]},
        }

    # ---- checks and helpers ------------------------------------------------------------------------
    def _symbol(self, p: dict) -> str:
        symbol = p.get("symbol", "")
        if symbol not in self.specs:
            raise VenueError(-1121, "Invalid symbol.")
        return symbol

    @staticmethod
    def _side(p: dict) -> str:
        if p.get("side") not in ("BUY", "SELL"):
            raise VenueError(-1117, "Invalid side.")
        if p.get("positionSide", "BOTH") != "BOTH":
            raise VenueError(-4061, "Order's position side does not match user's setting.")
        return p["side"]

    def _qty(self, p: dict, symbol: str) -> Decimal:
        qty = _decimal(p.get("quantity"), "quantity")
        if qty <= 0:
            raise VenueError(-4003, "Quantity less than or equal to zero.")
        if qty != _quantize(qty, self.specs[symbol].size_precision):
            raise VenueError(-1111, "Precision is over the maximum defined for this asset.")
        return qty

    def _price(self, p: dict, name: str, symbol: str) -> Decimal:
        price = _decimal(p.get(name), name)
        precision = self.specs[symbol].price_precision
        if price <= 0 or price != _quantize(price, precision):
            raise VenueError(-1111, "Precision is over the maximum defined for this asset.")
        return price

    def _reduce_only_qty(self, symbol: str, side: str, qty: Decimal) -> Decimal:
        pos = self.position(symbol).amount
        if pos == 0 or (pos > 0) == (side == "BUY"):
            raise VenueError(-2022, "ReduceOnly Order is rejected.")
        return min(qty, abs(pos))

    def _check_notional(self, symbol: str, qty: Decimal, price: Decimal, reduce_only: bool) -> None:
        if not reduce_only and qty * price < MIN_NOTIONAL:
            raise VenueError(-4164, f"Order's notional must be no smaller than {MIN_NOTIONAL} (unless you choose reduce only).")  # fmt: skip

    def _check_margin(self, symbol: str, side: str, qty: Decimal, price: Decimal) -> None:
        pos = self.position(symbol).amount
        signed = qty if side == "BUY" else -qty
        added = max(abs(pos + signed) - abs(pos), ZERO)
        if not added:
            return
        upnl, pos_im, _ = self._totals()
        order_im = sum((self._order_margin(o) for o in self.orders.values() if o.status in OPEN), ZERO)
        available = self.balance + upnl - pos_im - order_im
        if added * price / self.leverage_of(symbol) + qty * price * TAKER_FEE > available:
            raise VenueError(-2019, "Margin is insufficient.")

    def _order_margin(self, o: Order) -> Decimal:
        return ZERO if o.reduceOnly else (o.quantity - o.executedQty) * o.price / self.leverage_of(o.symbol)

    def _totals(self) -> tuple[Decimal, Decimal, Decimal]:
        upnl = pos_im = maint = ZERO
        for symbol, pos in self.positions.items():
            mark = self.marks.get(symbol, pos.entry)
            upnl += pos.amount * (mark - pos.entry)
            pos_im += abs(pos.amount) * mark / self.leverage_of(symbol)
            maint += abs(pos.amount) * mark * MAINT_MARGIN_RATE
        return upnl, pos_im, maint

    def _find_order(self, p: dict, open_only: bool) -> Order:
        symbol = self._symbol(p)
        order_id, client_id = p.get("orderId"), p.get("origClientOrderId")
        if not order_id and not client_id:
            raise VenueError(-1102, "Either orderId or origClientOrderId must be sent.")
        for o in self.orders.values():
            same = o.symbol == symbol and (str(o.orderId) == order_id or o.clientOrderId == client_id)
            if same and (not open_only or o.status in OPEN):
                return o
        raise VenueError(-2011, "Unknown order sent.")

    def _find_algo(self, p: dict) -> AlgoOrder:
        algo_id, client_id = p.get("algoId"), p.get("clientAlgoId")
        if not algo_id and not client_id:
            raise VenueError(-1102, "Either algoId or clientAlgoId must be sent.")
        for a in self.algos.values():
            if str(a.algoId) == algo_id or a.clientAlgoId == client_id:
                return a
        raise VenueError(-2011, "Unknown order sent.")

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # ---- persistence -------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.path is None:
            return
        state = {
            "balance": str(self.balance), "leverage": self.leverage, "next_id": self.next_id,
            "positions": {s: _dump(p) for s, p in self.positions.items()},
            "orders": [_dump(o) for o in self.orders.values()], "algos": [_dump(a) for a in self.algos.values()],
            "trades": [_dump(t) for t in self.trades], "marks": {s: str(m) for s, m in self.marks.items()},
        }  # fmt: skip
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.path)

    def load(self) -> None:
        """Read the JSON snapshot at `path` if there is one (the fake restarted; the account goes on)."""
        if self.path is None or not self.path.exists():
            return
        state = json.loads(self.path.read_text())
        self.balance, self.leverage, self.next_id = (
            Decimal(state["balance"]),
            state["leverage"],
            state["next_id"],
        )
        self.positions = {s: _load(Position, p) for s, p in state["positions"].items()}
        self.orders = {o["orderId"]: _load(Order, o) for o in state["orders"]}
        self.algos = {a["algoId"]: _load(AlgoOrder, a) for a in state["algos"]}
        self.trades = [_load(Trade, t) for t in state["trades"]]
        self.marks = {s: Decimal(m) for s, m in state["marks"].items()}


def _triggered(kind: str, side: str, trigger: Decimal, high: Decimal, low: Decimal) -> bool:
    rising = (kind == "STOP_MARKET") == (side == "BUY")  # buy stops and sell take-profits fire on the way up
    return high >= trigger if rising else low <= trigger


def _gap_price(algo: AlgoOrder, bar_open: Decimal) -> Decimal:
    """The trigger price, or the open if the bar opened beyond the trigger (gapped through it)."""
    if _triggered(algo.orderType, algo.side, algo.triggerPrice, bar_open, bar_open):
        return bar_open
    return algo.triggerPrice


def _crosses(side: str, price: Decimal, mark: Decimal) -> bool:
    return price >= mark if side == "BUY" else price <= mark


def _flag(value) -> bool:
    return str(value).lower() == "true"


def _decimal(value, name: str) -> Decimal:
    try:
        out = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise VenueError(
            -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
        ) from None
    if not out.is_finite():
        raise VenueError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return out


def _quantize(value: Decimal, precision: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-precision), rounding=ROUND_DOWN)


def _s(value: Decimal) -> str:
    return f"{_quantize(Decimal(value), 8).normalize():f}"


def _p(value: Decimal, spec: Spec) -> str:
    return f"{Decimal(value):.{spec.price_precision}f}"


def _q(value: Decimal, spec: Spec) -> str:
    return f"{Decimal(value):.{spec.size_precision}f}"


def _within(ts: int, p: dict) -> bool:
    start, end = p.get("startTime"), p.get("endTime")
    return (start is None or ts >= int(start)) and (end is None or ts <= int(end))


def _limited(rows: list, p: dict, default: int, most: int, from_start: bool) -> list:
    limit = min(int(p.get("limit") or default), most)
    return rows[:limit] if from_start or p.get("startTime") else rows[-limit:]


def _dump(obj) -> dict:
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(obj).items()}


def _load(cls, row: dict):
    types = {f.name: f.type for f in fields(cls)}
    return cls(**{k: Decimal(v) if types[k] is Decimal else v for k, v in row.items()})

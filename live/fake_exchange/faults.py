"""Fault injection and the request log.

A rule matches an endpoint written as a path (`/fapi/v1/order`, any method) or `METHOD path`
(`DELETE /fapi/v1/order`), optionally only requests whose query holds `params` (e.g. `{"reduceOnly": "True"}`
to hit a close but not an entry), and applies to the next `times` matching requests (None: until cleared):
- `fail`: answer with HTTP `status` and `{"code": code, "msg": msg}`. 429 gets -1003 and a `Retry-After` header,
  5xx gets -1001, anything else needs a code (it must exist in Nautilus' `BinanceErrorCode`: the adapter calls
  `BinanceErrorCode(int(code))` on some paths and raises on unknown codes).
  With `after=True` the request is carried out first and the error answered instead of its result: a lost
  response (Binance's -1007 "Send status unknown; execution status unknown").
- `delay`: sleep `seconds` before answering normally.
Feed faults (`stall`, `skip`) live on the server: they stop kline pushes while the clock and matching go on.
"""

import time
from dataclasses import dataclass, field

REDACTED = "REDACTED"
_SECRET_PARAMS = frozenset({"signature", "apiKey", "apikey", "X-MBX-APIKEY"})
_DEFAULT_ERRORS = {429: (-1003, "Too many requests; current limit is 2400 requests per minute."), 500: (-1001, "Internal error; unable to process your request. Please try again.")}  # fmt: skip


@dataclass
class Rule:
    endpoint: str
    times: int | None
    status: int = 0
    code: int = 0
    msg: str = ""
    retry_after: int = 1
    delay: float = 0.0
    params: dict = field(default_factory=dict)
    after: bool = False  # carry the request out, then answer the error (a lost response)

    def matches(self, method: str, path: str, query: dict | None = None) -> bool:
        want_method, _, want_path = self.endpoint.rpartition(" ")
        if want_path != path or want_method.upper() not in ("", method.upper()):
            return False
        return all(str((query or {}).get(k)) == str(v) for k, v in self.params.items())

    def take(self) -> bool:
        """Use one application of the rule; False when it is spent."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class Faults:
    failures: list[Rule] = field(default_factory=list)
    delays: list[Rule] = field(default_factory=list)

    def fail(
        self,
        endpoint: str,
        times: int | None = 1,
        status: int | None = None,
        code: int | None = None,
        msg: str | None = None,
        retry_after: int = 1,
        params: dict | None = None,
        after: bool = False,
    ) -> Rule:
        """The next `times` requests to `endpoint` fail. Give `status` 429/5xx, or a Binance `code` (HTTP 400)."""
        status = status or (400 if code is not None else 429)
        default = _DEFAULT_ERRORS.get(429 if status == 429 else 500 if status >= 500 else 0)
        if code is None:
            if default is None:
                raise ValueError(f"a fault with HTTP {status} needs a Binance error code")
            code = default[0]
        _check_code(code)
        text = msg or (
            default[1] if default and default[0] == code else _MESSAGES.get(code, "Injected fault.")
        )
        rule = Rule(endpoint, times, status, code, text, retry_after, params=dict(params or {}), after=after)
        self.failures.append(rule)
        return rule

    def delay(
        self, endpoint: str, seconds: float, times: int | None = None, params: dict | None = None
    ) -> Rule:
        rule = Rule(endpoint, times, delay=seconds, params=dict(params or {}))
        self.delays.append(rule)
        return rule

    def clear(self) -> None:
        self.failures.clear()
        self.delays.clear()

    def failure_for(self, method: str, path: str, query: dict | None = None) -> Rule | None:
        return _first(self.failures, method, path, query)

    def delay_for(self, method: str, path: str, query: dict | None = None) -> float:
        rule = _first(self.delays, method, path, query)
        return rule.delay if rule else 0.0


def _first(rules: list[Rule], method: str, path: str, query: dict | None = None) -> Rule | None:
    for rule in list(rules):
        if rule.matches(method, path, query):
            if rule.take():
                if rule.times == 0:
                    rules.remove(rule)
                return rule
            rules.remove(rule)
    return None


_MESSAGES = {
    -2019: "Margin is insufficient.",
    -4120: "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
    -2011: "Unknown order sent.",
    -2013: "Order does not exist.",
    -1021: "Timestamp for this request is outside of the recvWindow.",
    -1007: "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
}


def _check_code(code: int) -> None:
    from nautilus_trader.adapters.binance.common.enums import BinanceErrorCode

    try:
        BinanceErrorCode(int(code))
    except ValueError:
        raise ValueError(f"{code} is not a BinanceErrorCode; the adapter would crash decoding it") from None


@dataclass
class RequestLog:
    """Every REST request as (method, path, params), with the signature and API key redacted."""

    entries: list[dict] = field(default_factory=list)

    def record(self, method: str, path: str, params: dict, has_key: bool, status: int) -> None:
        shown = {k: REDACTED if k in _SECRET_PARAMS else v for k, v in params.items()}
        entry = {
            "seq": len(self.entries),
            "time": time.time(),
            "method": method,
            "path": path,
            "params": shown,
        }
        self.entries.append({**entry, "apikey": REDACTED if has_key else None, "status": status})

    def calls(self, path: str | None = None, method: str | None = None) -> list[dict]:
        return [
            e for e in self.entries if path in (None, e["path"]) and (method is None or e["method"] == method)
        ]

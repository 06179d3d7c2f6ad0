"""Trace ids: one per trading decision, born with its Signal and carried by every order of the position it opens.

The id is a hash of (strategy id, instrument id, bar close), so it is deterministic: a backtest and the parity
replay of a live session give the same ids, and the same config and seed give the same ids run after run. It
travels as an order tag `trace:<id>` (Nautilus order tags), on the entry and on every exit order of the
position (stop, take-profits, trailing and time exits, manual and emergency closes, the liquidation guard).
Log lines about a decision carry `trace_id=<id>` in their message, so `grep trace_id=<id>` of the node's JSON
log shows the decision's whole life: the signal, the entry, the orders sent, their fills and the exits.
"""

import hashlib
from collections.abc import Iterable

TRACE_TAG_PREFIX = "trace:"
GRID_NS = 60_000_000_000  # bar intervals are whole minutes (live/config.py INTERVALS)


def bar_close_ns(ts_event: int) -> int:
    """The bar close on the minute grid: live stamps (boundary - 1 ms + float noise) and backtest stamps
    (the boundary) give the same value, so a live decision and its replay share one trace id."""
    return (int(ts_event) + GRID_NS // 2) // GRID_NS * GRID_NS


def trace_id(strategy_id, instrument_id, ts_event: int) -> str:
    """16 hex digits identifying the decision of `strategy_id` on `instrument_id` at the bar closing at
    `ts_event` (nanoseconds)."""
    key = f"{strategy_id}|{instrument_id}|{bar_close_ns(ts_event)}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def trace_tag(trace: str) -> str:
    return TRACE_TAG_PREFIX + trace


def with_trace(tags: list[str], trace: str) -> list[str]:
    """`tags` plus the trace tag (none for an unknown trace); the role tag stays first."""
    return [*tags, trace_tag(trace)] if trace else list(tags)


def trace_of(tags: Iterable[str] | None) -> str:
    """The trace id among an order's tags; "" when it has none (e.g. an order rebuilt by reconciliation)."""
    for tag in tags or ():
        if tag.startswith(TRACE_TAG_PREFIX):
            return tag[len(TRACE_TAG_PREFIX) :]
    return ""


def role_of(tags: Iterable[str] | None, default: str = "") -> str:
    """The first tag that is not a trace tag: the order's role (ENTRY, SL, TP1, STRATEGY, ...)."""
    for tag in tags or ():
        if not tag.startswith(TRACE_TAG_PREFIX):
            return tag
    return default

"""The order-rate limit: entries and trailing steps wait for room, so the orders that protect positions are
never denied, and a stop the node does deny never leaves a position without one."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from nautilus_trader.common.component import TestClock, Throttler
from nautilus_trader.model.enums import OrderType
from nautilus_trader.model.events import OrderAccepted, OrderDenied

from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from quantum_trader.config import ConfigError
from strategies.order_budget import OrderRateBudget, parse_rate
from tests.conftest import build_catalog, candles

SECOND = 1_000_000_000


# ---- the ledger ----------------------------------------------------------------------------------------
def test_the_window_forgets_an_order_exactly_one_interval_after_it_was_sent():
    budget = OrderRateBudget(3, 10 * SECOND)
    for _ in range(3):
        budget.record(0)
    assert budget.free(0) == 0
    assert budget.free(10 * SECOND - 1) == 0
    assert budget.free(10 * SECOND) == 3


def test_the_ledger_predicts_what_nautilus_throttler_lets_through():
    clock = TestClock()
    sent, dropped = [], []
    throttler = Throttler("submit", 5, timedelta(seconds=10), clock, sent.append, dropped.append)
    budget = OrderRateBudget(*parse_rate("5/00:00:10"))
    rng = np.random.default_rng(4)
    now = 0
    for i in range(400):
        now += int(rng.integers(0, 4 * SECOND))
        for timer in clock.advance_time(now):  # the engine fires the throttler's resume alert on time
            timer.handle()
        predicted = budget.free(now) >= 1
        throttler.send(i)
        assert (sent[-1:] == [i]) == predicted, f"message {i} at {now / SECOND:.1f} s"
        if predicted:
            budget.record(now)
    assert dropped and sent  # the walk both hit the limit and got through


@pytest.mark.parametrize("rate", ["abc", "10", "0/00:00:10", "5/00:00:00", "5/10s"])
def test_a_malformed_rate_is_refused_naming_the_field_and_the_format(rate):
    with pytest.raises(ConfigError) as err:
        parse_backtest_config({"venue": {"max_order_rate": rate}, "strategies": [{"path": EVERYWHERE}]})
    assert "venue.max_order_rate" in str(err.value) and "orders/HH:MM:SS" in str(err.value)


# ---- scenarios -----------------------------------------------------------------------------------------
EVERYWHERE = "tests.strategies_for_tests:EnterEverywhere"
IGNORES_BUDGET = "tests.strategies_for_tests:IgnoresOrderBudget"


def uptrends(n_symbols: int, bars: int, seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {
        f"R{i:02d}USDT": candles(np.round(100 * np.exp(np.cumsum(rng.normal(0.0008, 0.001, bars))), 4))
        for i in range(n_symbols)
    }


def run(tmp_path, frames, strategy_path, strategy, rate, exits="default"):
    catalog = build_catalog(tmp_path / "catalog", frames).path
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"default_leverage": 3.0, "max_order_rate": rate},
            "strategies": [{"path": strategy_path, "config": strategy}],
            "exit_profile": exits,
            "report": {"tearsheet": False},
        }
    )
    result = run_backtest(cfg, progress=False)
    return result, write_report(result, tmp_path / "report")


def event_times(order, kinds) -> list[int]:
    return [e.ts_event for e in order.events if isinstance(e, kinds)]


def assert_every_position_always_has_a_resting_stop(cache) -> None:
    """At the end of every event time in a position's life, one of its stops rests at the venue."""
    for position in cache.positions():
        stops = [
            o
            for o in cache.orders(instrument_id=position.instrument_id)
            if o.order_type == OrderType.STOP_MARKET and "LIQUIDATION" not in o.tags
        ]
        times = sorted({t for o in stops for t in event_times(o, object)})
        end = position.ts_closed if position.is_closed else max(times, default=0) + 1
        for t in (t for t in times if position.ts_opened <= t < end):
            resting = [
                o
                for o in stops
                if any(a <= t for a in event_times(o, OrderAccepted))
                and not (o.is_closed and o.events[-1].ts_event <= t)
            ]
            assert resting, f"{position.instrument_id} had no stop at {pd.Timestamp(t, tz='UTC')}"


def submitted_per_window(cache, interval_ns: int) -> int:
    times = np.sort(
        [o.ts_init for o in cache.orders() if not any(isinstance(e, OrderDenied) for e in o.events)]
    )
    return int(max(np.searchsorted(times, t + interval_ns) - i for i, t in enumerate(times)))


def test_a_burst_of_entries_waits_for_room_and_no_order_is_ever_denied(tmp_path):
    # 40 symbols want an entry on the same bar and every bar after; 60 orders per 10 s hold about a dozen
    # entries with their stop, take-profit and liquidation guard, and keep room to close each position.
    result, stats = run(
        tmp_path,
        uptrends(40, 120, seed=2),
        EVERYWHERE,
        {"direction": "long", "atr_ratio": 0.004},
        "60/00:00:10",
    )
    cache = result.engine.cache
    denied = [o for o in cache.orders() if any(isinstance(e, OrderDenied) for e in o.events)]
    assert not denied, [d.events[-1].reason for d in denied[:3]]
    assert stats["order_rate_refusals"] > 0, "the limit was reached, not avoided"
    assert stats["trades"] > 40, "entries resumed once the window had room"
    assert submitted_per_window(cache, 10 * SECOND) <= 60
    assert_every_position_always_has_a_resting_stop(cache)


def test_a_trailing_step_the_node_denies_leaves_the_old_stop_in_force(tmp_path):
    # A strategy that ignores the budget, 3 orders per 30 min: the entry, its stop and take-profit use
    # them all (the stop rests inside the liquidation price, so no guard is sent), so the first trailing
    # steps of the rising price are denied.
    frames = {"UPUSDT": candles(np.round(100 * np.exp(np.arange(80) * 0.0008), 4), spread=0.0002)}
    result, stats = run(tmp_path, frames, IGNORES_BUDGET, {"enter_on_bar": 30, "atr": 0.5}, "3/00:30:00")
    cache = result.engine.cache
    trailing = [o for o in cache.orders() if "TRAILING" in o.tags]
    denied = [o for o in trailing if any(isinstance(e, OrderDenied) for e in o.events)]
    accepted = [o for o in trailing if event_times(o, OrderAccepted)]
    assert denied and accepted, "some steps were denied, later ones went through"
    (first_stop,) = [o for o in cache.orders() if "SL" in o.tags]
    first_step = min(event_times(o, OrderAccepted)[0] for o in accepted)
    assert first_stop.events[-1].ts_event >= first_step, "the first stop was held until a step was accepted"
    assert_every_position_always_has_a_resting_stop(cache)

"""The Exit Brain: each exit reason comes from a price path built for it, and its PnL matches a hand calculation.

Every scenario: one symbol, flat at 100 until a long (or short) entry decided on bar 3 fills at its close
(100), 10 units (notional 1000), ATR 1 so R = 1.5. No slippage; taker fee 0.0005 (market and stop fills),
maker fee 0.0002 (resting take-profit limits). Candles have no wicks: each bar runs from the previous close to
its own, so a stop or limit level that a close lands on is traded exactly there.
"""

import numpy as np
import pandas as pd
import pytest

from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from tests.conftest import build_catalog, candles

STRATEGY = "tests.strategies_for_tests:EnterWithAtr"
QTY, TAKER, MAKER = 10.0, 0.0005, 0.0002


def path(*legs: float, flat: int = 6, tail: int = 4) -> np.ndarray:
    """Flat at 100 for `flat` bars, then each leg's close, then the last close repeated `tail` times."""
    legs = list(legs) or [100.0]
    return np.array([100.0] * flat + legs + [legs[-1]] * tail)


def run_exits(
    tmp_path,
    closes,
    exit_profile,
    side="BUY",
    atr=1.0,
    leverage=5.0,
    name="run",
    risk_profile=None,
    actors=(),
    gaps=(),
    **extra,
):
    """`gaps`: bars that open at their own close, so the move from the previous close is a gap."""
    frame = candles(closes, spread=0.0)
    for bar in gaps:
        frame.loc[bar, ["open", "high", "low"]] = frame.loc[bar, "close"]
    catalog = build_catalog(tmp_path / name, {"PATHUSDT": frame}).path
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {
                "slippage_bps": 0,
                "maker_fee": MAKER,
                "taker_fee": TAKER,
                "default_leverage": leverage,
            },
            "strategies": [{"path": STRATEGY, "config": {"side": side, "atr": atr, **extra}}],
            "exit_profile": exit_profile,
            "risk_profile": risk_profile,
            "actors": list(actors),
            "report": {"tearsheet": False},
        }
    )
    result = run_backtest(cfg, progress=False)
    stats = write_report(result, tmp_path / f"{name}-report")
    exits = pd.read_csv(tmp_path / f"{name}-report" / "exits.csv")
    return result, stats, exits


def expect(exit_row, reason, price, qty, fee, sign=1.0, r=1.5):
    move = sign * (price - 100.0)
    assert exit_row["reason"] == reason
    assert exit_row["exit_price"] == pytest.approx(price)
    assert exit_row["quantity"] == pytest.approx(qty)
    assert exit_row["commission"] == pytest.approx(price * qty * fee)
    assert exit_row["pnl"] == pytest.approx(move * qty - price * qty * fee)
    assert exit_row["r_multiple"] == pytest.approx(move / r)


# ---- DEFAULT: stop 1R (98.5), take-profit 1.5R (102.25), trailing 2 ATR ----------------------------------
def test_default_take_profit_closes_everything_at_one_and_a_half_r(tmp_path):
    _, stats, exits = run_exits(tmp_path, path(101.0, 102.25), "default")
    (row,) = exits.to_dict("records")
    expect(row, "tp1", 102.25, QTY, MAKER)
    assert stats["exits_by_reason"]["tp1"]["count"] == 1
    assert stats["open_positions_at_end"] == 0


def test_default_stop_loss_closes_everything_at_minus_one_r(tmp_path):
    _, _, exits = run_exits(tmp_path, path(99.5, 98.5), "default")
    (row,) = exits.to_dict("records")
    expect(row, "sl", 98.5, QTY, TAKER)
    assert row["r_multiple"] == pytest.approx(-1.0)


def test_a_short_stop_loss_sits_above_the_entry(tmp_path):
    _, _, exits = run_exits(tmp_path, path(100.5, 101.5), "default", side="SELL")
    (row,) = exits.to_dict("records")
    expect(row, "sl", 101.5, QTY, TAKER, sign=-1.0)


def test_the_trailing_stop_follows_the_best_price_at_two_atr(tmp_path):
    # Highs 101 and 101.5 pull the stop to 99 and then 99.5 (steps of at least 0.25 ATR); the fall to 99.5
    # takes it out there: a loss of a third of R instead of a whole R.
    _, _, exits = run_exits(tmp_path, path(101.0, 101.5, 100.5, 99.5), "default")
    (row,) = exits.to_dict("records")
    expect(row, "trailing", 99.5, QTY, TAKER)


# ---- CHALLENGE_100: stop 1.5R (97.75), TP1 1R (101.5) 30%, TP2 2R (103) 70%, break-even, 2 h, 1% buffer --
def test_challenge_tp1_takes_thirty_percent_and_tp2_the_rest(tmp_path):
    _, stats, exits = run_exits(tmp_path, path(101.5, 102.0, 103.0), "challenge_100")
    tp1, tp2 = exits.to_dict("records")
    expect(tp1, "tp1", 101.5, 3.0, MAKER)
    expect(tp2, "tp2", 103.0, 7.0, MAKER)
    assert stats["exits_by_reason"]["tp2"]["avg_r"] == pytest.approx(2.0)


def test_challenge_moves_the_stop_to_break_even_after_tp1(tmp_path):
    _, _, exits = run_exits(tmp_path, path(101.5, 100.5, 100.0), "challenge_100")
    tp1, breakeven = exits.to_dict("records")
    expect(tp1, "tp1", 101.5, 3.0, MAKER)
    expect(breakeven, "breakeven", 100.0, 7.0, TAKER)
    assert breakeven["pnl"] == pytest.approx(-100.0 * 7 * TAKER)  # only the fee


def test_challenge_stop_loss_rests_at_one_and_a_half_r(tmp_path):
    _, _, exits = run_exits(tmp_path, path(99.0, 97.75), "challenge_100")
    (row,) = exits.to_dict("records")
    expect(row, "sl", 97.75, QTY, TAKER)
    assert row["r_multiple"] == pytest.approx(-1.5)


def test_challenge_time_stop_closes_at_market_after_two_hours(tmp_path):
    result, _, exits = run_exits(tmp_path, path(flat=6, tail=40), "challenge_100")
    (row,) = exits.to_dict("records")
    expect(row, "time", 100.0, QTY, TAKER)
    opened = pd.Timestamp("2025-01-01") + pd.Timedelta(minutes=5 * 3)  # entry filled at bar 3's close
    assert pd.Timestamp(row["ts_event"]).tz_localize(None) - opened == pd.Timedelta(hours=2)


def test_challenge_liquidation_buffer_sets_the_stop_when_the_atr_stop_is_too_close_to_liquidation(tmp_path):
    # 20x: liquidation at 100 * (1 - 1/20 + 0.005) = 95.5, buffer line 95.5 * 1.01 = 96.455. ATR 2 puts the
    # 1.5R stop at 95.5, inside the buffer, so the stop rests at the buffer line instead.
    _, stats, exits = run_exits(tmp_path, path(98.0, 96.455), "challenge_100", atr=2.0, leverage=20.0)
    (row,) = exits.to_dict("records")
    expect(row, "liquidation_buffer", 96.455, QTY, TAKER, r=3.0)
    assert stats["liquidations"] == 0


def test_a_bar_that_sweeps_through_the_stop_and_the_liquidation_price_fills_the_stop(tmp_path):
    # 5x: liquidation at 100 * (1 - 1/5 + 0.005) = 80.5. One bar falls from 100 to 79, through the 1R stop
    # (98.5) and then the liquidation price. The stop is reached first, so it is the exit, at its trigger.
    # (Nautilus matches the sell stops a tick crosses from the lowest trigger up, so a liquidation order
    # resting behind the stop used to fill first, at 80.5: the Exit Brain's stop now stands in for it.)
    result, stats, exits = run_exits(tmp_path, path(79.0), "default", leverage=5.0)
    (row,) = exits.to_dict("records")
    expect(row, "sl", 98.5, QTY, TAKER)
    assert stats["liquidations"] == 0
    assert not [o for o in result.engine.cache.orders() if "LIQUIDATION" in o.tags]


def test_a_bar_that_gaps_past_the_stop_and_the_liquidation_price_is_reported_as_a_liquidation(tmp_path):
    # 5x: liquidation at 80.5, stop at 98.5. The bar after the entry opens at 79, past both: the stop fills at
    # the open, as the liquidation stop would have, but on the exchange the mark price crossed the liquidation
    # price first, so the exit is a liquidation, and the report counts it.
    _, stats, exits = run_exits(tmp_path, path(79.0), "default", leverage=5.0, gaps=(6,))
    (row,) = exits.to_dict("records")
    expect(row, "liquidation", 79.0, QTY, TAKER)
    assert stats["liquidations"] == 1
    assert stats["exits_by_reason"]["liquidation"]["count"] == 1


def test_a_gap_that_stays_in_front_of_the_liquidation_price_is_a_stop_loss(tmp_path):
    _, stats, exits = run_exits(tmp_path, path(90.0), "default", leverage=5.0, gaps=(6,))
    (row,) = exits.to_dict("records")
    expect(row, "sl", 90.0, QTY, TAKER)
    assert stats["liquidations"] == 0


def test_a_stop_beyond_the_liquidation_price_is_not_sent_and_the_liquidation_comes_first(tmp_path):
    # 25x: liquidation at 100 * (1 - 1/25 + 0.005) = 96.5. ATR 3 puts the 1R stop at 95.5, beyond it: on the
    # exchange the position is liquidated before such a stop could fill, so only the guard rests, and the
    # bar from 100 to 94 is a liquidation at 96.5, not a stop-loss at 95.5.
    result, stats, exits = run_exits(tmp_path, path(94.0), "default", atr=3.0, leverage=25.0)
    (row,) = exits.to_dict("records")
    expect(row, "liquidation", 96.5, QTY, TAKER, r=4.5)
    assert stats["liquidations"] == 1
    assert not [o for o in result.engine.cache.orders() if "SL" in o.tags]


def test_a_trailing_stop_that_moves_in_front_of_the_liquidation_price_replaces_the_guard(tmp_path):
    # As above, but the price first rises to 104: the trailing stop, 2 ATR under the best price, is 98, in
    # front of the 96.5 liquidation price. Once the venue holds it the guard is cancelled, and the fall to 94
    # exits at 98 on the trailing stop.
    result, stats, exits = run_exits(tmp_path, path(102.0, 104.0, 94.0), "default", atr=3.0, leverage=25.0)
    (row,) = exits.to_dict("records")
    expect(row, "trailing", 98.0, QTY, TAKER, r=4.5)
    assert stats["liquidations"] == 0
    (guard,) = [o for o in result.engine.cache.orders() if "LIQUIDATION" in o.tags]
    (trailing,) = [o for o in result.engine.cache.orders() if "TRAILING" in o.tags]
    accepted = next(e.ts_event for e in trailing.events if type(e).__name__ == "OrderAccepted")
    assert guard.status_string() == "CANCELED"
    assert accepted <= guard.ts_last < trailing.ts_last  # cancelled once the stop rested, before the fall


def test_every_exit_order_is_reduce_only_and_rests_at_the_venue(tmp_path):
    result, _, _ = run_exits(tmp_path, path(101.5, 100.5, 100.0), "challenge_100")
    orders = result.engine.trader.generate_orders_report()
    exits = orders[orders["tags"].astype(str).str.contains("SL|TP1|TP2|BREAKEVEN")]
    assert len(exits) >= 4
    assert exits["is_reduce_only"].astype(str).str.lower().eq("true").all()
    assert set(exits["type"]) == {"STOP_MARKET", "LIMIT"}


def test_no_exit_profile_means_no_exit_brain(tmp_path):
    catalog = build_catalog(tmp_path / "c", {"PATHUSDT": candles(path(), spread=0.0)}).path
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "strategies": [{"path": "tests.strategies_for_tests:EnterOnce"}],
            "report": {"tearsheet": False},
        }
    )
    result = run_backtest(cfg, progress=False)
    assert result.strategies[0].exit_brain is None
    orders = result.engine.trader.generate_orders_report()
    assert not orders["tags"].astype(str).str.contains("SL|TP1").any()


# ---- operator and emergency exits: market orders at the last close ----------------------------------------
INJECTOR = "tests.test_emergency_stop:Injector"


def at_minute(minute: int, **command) -> dict:
    when = str(pd.Timestamp("2025-01-01") + pd.Timedelta(minutes=minute))
    return {"at": when, "type": "command", "operator": "ops", **command}


def test_an_operator_close_command_exits_at_market_with_reason_manual(tmp_path):
    # 101 closes the bar at 00:35; the command comes at 00:37 and fills at that close.
    injector = {"path": INJECTOR, "config": {"events": [at_minute(37, action="close", symbol="PATHUSDT")]}}
    _, _, exits = run_exits(tmp_path, path(101.0), "default", actors=[injector])
    (row,) = exits.to_dict("records")
    expect(row, "manual", 101.0, QTY, TAKER)


def test_an_emergency_trip_closes_a_losing_position_with_reason_emergency(tmp_path):
    # Moderate sizing: 10,000 x 2% x (1 + (0.8 - 0.7) x 2) = 240 margin, x5 = 1,200 notional: 12 units.
    # The price is at 99.5 (losing, the stop at 98.5 untouched) when an operator trips the emergency stop.
    injector = {"path": INJECTOR, "config": {"events": [at_minute(37, action="trip", reason="drill")]}}
    ess = {"path": "actors.emergency_stop:EmergencyStop"}
    _, stats, exits = run_exits(
        tmp_path, path(99.5), "default", risk_profile="moderate", actors=[injector, ess]
    )
    (row,) = exits.to_dict("records")
    expect(row, "emergency", 99.5, 12.0, TAKER)
    assert stats["risk_events"]["emergency_stop/trip/manual"] == 1


def test_in_a_backtest_the_exit_brains_record_goes_to_the_in_memory_cache(tmp_path):
    """The same persistence as live (tests/test_live_restart.py), with no database: the cache's general store."""
    import json

    result, _, _ = run_exits(tmp_path, path(100.5), "default")
    strategy = result.strategies[0]
    (iid,) = [bt.instrument_id for bt in strategy.bar_types]
    record = json.loads(result.engine.cache.get(strategy.exit_brain.state_key(iid)))
    stop, tp = strategy.exit_brain.positions[iid].stop_order, strategy.exit_brain.positions[iid].tp_orders[0]
    assert (record["side"], record["entry"], record["stop_price"], record["stop_tag"]) == (
        "LONG",
        100.0,
        98.5,
        "SL",
    )
    assert record["risk_per_unit"] == 1.5 and record["stop_id"] == stop.client_order_id.value
    assert record["roles"] == {stop.client_order_id.value: "SL", tp.client_order_id.value: "TP1"}

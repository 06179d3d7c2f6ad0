"""The backtest tells the truth: fill timing, fees, funding, margin, liquidation and determinism."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from catalog.instruments import make_instrument
from catalog.store import CatalogStore, bar_type_for
from quantum_trader.config import ConfigError
from tests.conftest import build_catalog, candles

ENTER_ONCE = "tests.strategies_for_tests:EnterOnce"


def config(catalog, strategy=ENTER_ONCE, strategy_config=None, **venue):
    return parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"slippage_bps": 0, **venue},
            "strategies": [{"path": strategy, "config": strategy_config or {}}],
            "report": {"tearsheet": False},
        }
    )


def run(cfg, tmp_path, name="run"):
    result = run_backtest(cfg, progress=False)
    stats = write_report(result, tmp_path / name)
    fills = pd.read_csv(tmp_path / name / "fills.csv")
    return result, stats, fills


@pytest.fixture
def ramp_catalog(tmp_path):
    """One symbol whose close rises by 1 each bar: 100, 101, 102, ..."""
    return build_catalog(tmp_path / "ramp", {"RAMPUSDT": candles(100.0 + np.arange(60))}).path


def test_an_order_decided_on_a_bars_close_fills_at_that_close_by_default(ramp_catalog, tmp_path):
    result, _, fills = run(config(ramp_catalog, strategy_config={"enter_on_bar": 3}), tmp_path)
    ((_, decided_ts, decided_close),) = result.strategies[0].decisions
    assert decided_close == 102.0
    assert fills["avg_px"].iloc[0] == 102.0
    assert pd.Timestamp(fills["ts_last"].iloc[0]) == pd.Timestamp(decided_ts, tz="UTC")


def test_next_bar_close_timing_fills_one_bar_later(ramp_catalog, tmp_path):
    cfg = config(ramp_catalog, strategy_config={"enter_on_bar": 3}, fill_timing="next_bar_close")
    result, _, fills = run(cfg, tmp_path)
    ((_, decided_ts, _),) = result.strategies[0].decisions
    assert fills["avg_px"].iloc[0] == 103.0
    assert pd.Timestamp(fills["ts_last"].iloc[0]) == pd.Timestamp(decided_ts, tz="UTC") + pd.Timedelta("5min")


@pytest.mark.parametrize(("timing", "bars_later"), [("bar_close", 0), ("next_bar_close", 1)])
def test_fill_timing_is_the_same_for_every_symbol_of_a_timestamp(tmp_path, timing, bars_later):
    # Nautilus processes the bars of one timestamp one symbol at a time; no symbol may fill at a price that
    # belongs to a different bar than its neighbours'.
    frames = {f"R{i}USDT": candles(100.0 * (i + 1) + np.arange(40) * (i + 1)) for i in range(5)}
    catalog = build_catalog(tmp_path / "five", frames).path
    cfg = config(catalog, strategy_config={"enter_on_bar": 3}, fill_timing=timing)
    result, _, fills = run(cfg, tmp_path)
    assert len(fills) == 5
    for _, fill in fills.iterrows():
        k = int(str(fill["instrument_id"])[1]) + 1  # R{i}: closes 100k, 101k, 102k, ... (k = i + 1)
        assert fill["avg_px"] == pytest.approx(k * (100.0 + 2 + bars_later)), fill["instrument_id"]


def test_slippage_moves_market_fills_against_the_taker(ramp_catalog, tmp_path):
    _, _, fills = run(config(ramp_catalog, strategy_config={"enter_on_bar": 3}, slippage_bps=10), tmp_path)
    assert fills["avg_px"].iloc[0] == pytest.approx(102.0 * 1.001, abs=1e-4)


def test_slippage_never_rounds_in_the_takers_favour_on_a_coarse_tick(tmp_path):
    # At 0.15 with a 0.0001 tick, one tick is 6.7 bps: 2 bps of slippage rounded to the nearest tick would vanish.
    catalog = build_catalog(tmp_path / "coarse", {"WLFIUSDT": candles(np.full(40, 0.15), spread=0.0)}).path
    cfg = config(catalog, strategy_config={"enter_on_bar": 3, "exit_on_bar": 10}, slippage_bps=2)
    _, _, fills = run(cfg, tmp_path)
    assert list(zip(fills["side"], fills["avg_px"], strict=True)) == [("BUY", 0.1501), ("SELL", 0.1499)]


def test_taker_fees_are_charged_on_every_fill(ramp_catalog, tmp_path):
    cfg = config(ramp_catalog, strategy_config={"enter_on_bar": 3, "exit_on_bar": 10, "notional_usd": 1030})
    _, stats, fills = run(cfg, tmp_path)
    notional = (fills["filled_qty"] * fills["avg_px"]).sum()
    assert stats["fees"] == pytest.approx(notional * 0.0005, rel=1e-6)
    assert stats["trades"] == 1


@pytest.mark.parametrize("side, sign", [("BUY", -1.0), ("SELL", +1.0)])
def test_funding_is_paid_by_longs_and_received_by_shorts_every_8_hours(tmp_path, side, sign):
    frame = candles(np.full(2 * 288, 100.0), spread=0.0)
    funding = pd.DataFrame(
        {"date": pd.date_range("2025-01-01", periods=7, freq="8h", tz="UTC"), "rate": 0.001}
    )
    catalog = build_catalog(tmp_path / "flat", {"FLATUSDT": frame}, {"FLATUSDT": funding}).path
    cfg = config(catalog, strategy_config={"enter_on_bar": 3, "side": side, "notional_usd": 1000})
    result, stats, fills = run(cfg, tmp_path)
    opened = pd.Timestamp(fills["ts_last"].iloc[0])
    last_bar_close = frame["date"].iloc[-1] + pd.Timedelta("5min")
    due = funding[(funding["date"] > opened) & (funding["date"] <= last_bar_close)]
    payments = [p.amount for p in result.funding.payments]
    assert len(due) >= 5
    assert payments == pytest.approx([sign * 10 * 100.0 * 0.001] * len(due))
    assert stats["funding"] == pytest.approx(sign * len(due))
    final_balance = pd.read_csv(tmp_path / "run" / "equity.csv")["balance"].iloc[-1]
    assert final_balance == pytest.approx(10_000 - stats["fees"] + stats["funding"], abs=1e-6)


FUNDING_AT_8 = pd.DataFrame({"date": [pd.Timestamp("2025-01-01 08:00", tz="UTC")], "rate": [0.001]})
BAR_CLOSING_AT_8 = 96  # the 96th 5-minute bar of the day closes at 08:00


def two_ramps(tmp_path):
    """Two symbols whose closes rise by 1 and by 2 a bar, with one funding time, 08:00, for both."""
    frames = {"AAAUSDT": candles(100.0 + np.arange(120.0)), "BBBUSDT": candles(200.0 + 2 * np.arange(120.0))}
    return build_catalog(tmp_path / "ramps", frames, dict.fromkeys(frames, FUNDING_AT_8)).path


def test_funding_is_charged_on_the_position_held_at_the_funding_time_at_its_close(tmp_path):
    # Both symbols are long when 08:00 strikes; the strategy sells them on seeing the 08:00 bar, which fills
    # after the funding time. Each pays on its long, at its own 08:00 close (195 and 390).
    cfg = config(
        two_ramps(tmp_path),
        strategy_config={"enter_on_bar": 3, "exit_on_bar": BAR_CLOSING_AT_8, "notional_usd": 1020},
    )
    result, _, fills = run(cfg, tmp_path)
    assert len(fills) == 4
    paid = {p.instrument_id: (p.quantity, p.price, p.amount) for p in result.funding.payments}
    assert paid == {
        "AAAUSDT-PERP.BINANCE": (10.0, 195.0, pytest.approx(-10 * 195.0 * 0.001)),
        "BBBUSDT-PERP.BINANCE": (5.0, 390.0, pytest.approx(-5 * 390.0 * 0.001)),
    }
    assert all(p.ts == FUNDING_AT_8["date"].iloc[0].value for p in result.funding.payments)


def test_a_position_opened_on_the_funding_bar_pays_no_funding(tmp_path):
    cfg = config(
        two_ramps(tmp_path), strategy_config={"enter_on_bar": BAR_CLOSING_AT_8, "notional_usd": 1000}
    )
    result, _, fills = run(cfg, tmp_path)
    assert len(fills) == 2  # both opened at the 08:00 close, after the funding time
    assert result.funding.payments == []


def test_a_symbol_without_a_bar_at_the_funding_time_pays_on_what_it_held_then(tmp_path):
    ramp = candles(100.0 + np.arange(120.0))
    gapped = ramp.drop(index=[BAR_CLOSING_AT_8 - 1, BAR_CLOSING_AT_8])  # no bars closing at 08:00 and 08:05
    catalog = build_catalog(tmp_path / "gap", {"GAPUSDT": gapped}, {"GAPUSDT": FUNDING_AT_8}).path
    cfg = config(catalog, strategy_config={"enter_on_bar": 3, "notional_usd": 1020})
    result, _, _ = run(cfg, tmp_path)
    ((payment),) = result.funding.payments
    assert (payment.quantity, payment.price) == (10.0, 194.0)  # the last close before 08:00 (07:55's bar)


def test_funding_can_be_switched_off(tmp_path):
    frame = candles(np.full(288, 100.0), spread=0.0)
    funding = pd.DataFrame(
        {"date": pd.date_range("2025-01-01", periods=3, freq="8h", tz="UTC"), "rate": 0.001}
    )
    catalog = build_catalog(tmp_path / "flat", {"FLATUSDT": frame}, {"FLATUSDT": funding}).path
    _, stats, _ = run(config(catalog, funding=False), tmp_path)
    assert stats["funding"] == 0.0 and stats["funding_payments"] == 0


def crash_catalog(tmp_path):
    """Flat at 100, then down 0.5% a bar to about 70."""
    path = np.concatenate([np.full(5, 100.0), 100.0 * 0.995 ** np.arange(1, 72)])
    return build_catalog(tmp_path / "crash", {"CRSHUSDT": candles(np.round(path, 4), spread=0.0)}).path


def test_a_position_whose_margin_is_exhausted_is_liquidated_at_its_liquidation_price(tmp_path):
    cfg = config(
        crash_catalog(tmp_path), strategy_config={"enter_on_bar": 1, "notional_usd": 1000}, default_leverage=5
    )
    _, stats, fills = run(cfg, tmp_path)
    entry = fills["avg_px"].iloc[0]
    liq = fills[fills["tags"].astype(str).str.contains("LIQUIDATION")]
    assert stats["liquidations"] == 1 and len(liq) == 1
    expected_liq_price = entry * (1 - 1 / 5 + 0.005)
    assert liq["avg_px"].iloc[0] == pytest.approx(expected_liq_price, rel=0.006)  # within one bar's move
    margin = 1000 / 5
    assert stats["realized_pnl"] == pytest.approx(-margin, rel=0.05)  # loses about its margin, not more


def test_without_the_liquidation_guard_the_loss_runs_past_the_margin(tmp_path):
    cfg = config(
        crash_catalog(tmp_path),
        strategy_config={"enter_on_bar": 1, "notional_usd": 1000},
        default_leverage=5,
        liquidation=False,
    )
    _, stats, _ = run(cfg, tmp_path)
    assert stats["liquidations"] == 0
    assert stats["final_equity"] - 10_000 < -1000 / 5 * 1.2


def test_an_entry_whose_margin_exceeds_the_free_balance_is_refused(ramp_catalog, tmp_path):
    cfg = config(
        ramp_catalog, strategy_config={"notional_usd": 100_000}, starting_balance=1000, default_leverage=1
    )
    _, stats, fills = run(cfg, tmp_path)
    assert stats["margin_rejections"] == 1
    assert len(fills) == 0


def test_same_config_gives_the_same_trades_and_a_changed_config_does_not(walk_catalog, tmp_path):
    ema = "strategies.ema_cross:EmaCross"
    base = {"fast_period": 5, "slow_period": 20}
    _, first, _ = run(config(walk_catalog, ema, base, slippage_bps=2), tmp_path, "a")
    _, second, _ = run(config(walk_catalog, ema, base, slippage_bps=2), tmp_path, "b")
    _, other, _ = run(config(walk_catalog, ema, base, slippage_bps=5), tmp_path, "c")
    assert first["trades"] > 10
    assert first["fingerprint"] == second["fingerprint"]
    assert first["final_equity"] == second["final_equity"]
    assert other["fingerprint"] != first["fingerprint"]


def test_every_run_writes_the_full_report(walk_catalog, tmp_path):
    cfg = config(walk_catalog, "strategies.ema_cross:EmaCross", {"fast_period": 5, "slow_period": 20})
    cfg = cfg.model_copy(update={"report": cfg.report.model_copy(update={"tearsheet": True})})
    _, stats, _ = run(cfg, tmp_path)
    out = tmp_path / "run"
    for name in ["config.yaml", "orders.csv", "fills.csv", "positions.csv", "account.csv", "stats.json",
                 "equity.png", "tearsheet.html", "per_symbol.csv", "fingerprint.txt", "funding.csv"]:  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    for key in ["total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "win_rate", "profit_factor",
                "fees", "funding", "turnover", "exposure_avg", "trades", "liquidations"]:  # fmt: skip
        assert key in stats
    assert set(pd.read_csv(out / "per_symbol.csv")["symbol"]) == {"T0USDT", "T1USDT", "T2USDT"}
    account = pd.read_csv(out / "account.csv", index_col=0)
    assert {"total", "locked", "free", "margin_initial", "margin_maintenance"} <= set(account.columns)
    assert np.allclose(account["total"], account["locked"] + account["free"])
    assert account["margined_instruments"].max() >= 1  # EMA cross holds positions
    if Path("/proc/self/status").exists():  # Linux: the run's own peak resident memory
        assert 0.1 < stats["peak_memory_gib"] < 64


@pytest.mark.parametrize(("timing", "price"), [("bar_close", 102.0), ("next_bar_close", 103.0)])
def test_the_emergency_stops_timers_do_not_change_fill_timing(ramp_catalog, tmp_path, timing, price):
    cfg = config(ramp_catalog, strategy_config={"enter_on_bar": 3}, fill_timing=timing)
    ess = parse_backtest_config(
        {"strategies": [{"path": ENTER_ONCE}], "actors": [{"path": "actors.emergency_stop:EmergencyStop"}]}
    ).actors
    result, _, fills = run(cfg.model_copy(update={"actors": ess}), tmp_path)
    assert any(type(a).__name__ == "EmergencyStop" for a in result.engine.trader.actors())
    assert fills["avg_px"].iloc[0] == price


def test_a_stop_swept_by_a_bar_fills_at_its_trigger_plus_slippage_not_at_the_bars_extreme(tmp_path):
    # Long at 100.1 (bar 3's close plus 10 bps), stop 1R = 1.5 below at 98.6; the next bar runs 100 -> 97:
    # the stop fills at 98.6 less 10 bps, not at 97.
    closes = np.array([100.0] * 6 + [97.0] * 3)
    catalog = build_catalog(tmp_path / "gap", {"STOPUSDT": candles(closes, spread=0.0)}).path
    cfg = config(
        catalog,
        strategy="tests.strategies_for_tests:EnterWithAtr",
        strategy_config={"atr": 1.0},
        slippage_bps=10,
    )
    cfg = cfg.model_copy(update={"exit_profile": "default"})
    _, _, fills = run(cfg, tmp_path)
    stop = fills[fills["tags"].str.contains("SL")]
    assert stop["avg_px"].iloc[0] == pytest.approx(98.6 * (1 - 0.001), abs=1e-4)


def test_a_stop_the_bar_gaps_through_fills_at_the_open(tmp_path):
    # Long at 100.1, stop at 98.6; the next bar OPENS at 95 (a gap) and closes at 96: the fill is at the
    # open less 10 bps, not at the trigger.
    frame = candles(np.array([100.0] * 6 + [96.0] * 3), spread=0.0)
    frame.loc[6, "open"] = 95.0
    frame.loc[6, "low"] = 95.0
    catalog = build_catalog(tmp_path / "gap", {"GAPUSDT": frame}).path
    cfg = config(
        catalog,
        strategy="tests.strategies_for_tests:EnterWithAtr",
        strategy_config={"atr": 1.0},
        slippage_bps=10,
    )
    _, _, fills = run(cfg.model_copy(update={"exit_profile": "default"}), tmp_path)
    stop = fills[fills["tags"].str.contains("SL")]
    assert stop["avg_px"].iloc[0] == pytest.approx(95.0 * (1 - 0.001), abs=1e-4)


def spot_catalog(tmp_path, closes):
    store = CatalogStore(tmp_path / "spot", create=True)
    inst = make_instrument("SPOTUSDT", 4, 3, market="spot")
    store.write_instrument(inst)
    store.write_bars(inst, candles(closes, spread=0.0), bar_type_for(inst.id, "5m"))
    return store.path


def spot_config(catalog, **strategy):
    cfg = config(catalog, strategy_config={"notional_usd": 1000, **strategy})
    return cfg.model_copy(update={"universe": cfg.universe.model_copy(update={"market": "spot"})})


def test_spot_is_a_cash_account_that_holds_through_a_crash_without_liquidation(tmp_path):
    # 100 -> 40: a 5x margin long would be liquidated near 80.5; a spot holder just loses 60% of what it bought.
    closes = np.concatenate([np.full(5, 100.0), np.linspace(100.0, 40.0, 60)])
    result, stats, fills = run(spot_config(spot_catalog(tmp_path, closes), enter_on_bar=3), tmp_path)
    account = result.engine.portfolio.account(result.universe.instruments[0].id.venue)
    assert account.is_cash_account
    assert list(fills["side"]) == ["BUY"] and stats["liquidations"] == 0
    equity = pd.read_csv(tmp_path / "run" / "equity.csv")["equity"].iloc[-1]
    assert equity == pytest.approx(10_000 - 10 * (100 - 40) - stats["fees"], abs=1e-6)


def test_a_spot_position_sells_what_it_bought(tmp_path):
    closes = 100.0 + np.arange(40.0)
    _, stats, fills = run(
        spot_config(spot_catalog(tmp_path, closes), enter_on_bar=3, exit_on_bar=10), tmp_path
    )
    assert list(zip(fills["side"], fills["filled_qty"], fills["avg_px"], strict=True)) == [
        ("BUY", 9.804, 102.0),  # 1,000 USDT at 102, to the 0.001 lot
        ("SELL", 9.804, 109.0),
    ]
    assert stats["trades"] == 1


def test_spot_refuses_short_entries(tmp_path):
    closes = np.full(40, 100.0)
    result, stats, fills = run(spot_config(spot_catalog(tmp_path, closes), side="SELL"), tmp_path)
    assert len(fills) == 0
    assert stats["short_refusals"] == 1


def test_spot_refuses_leverage_in_the_config(tmp_path):
    cfg = config(tmp_path, default_leverage=3)
    data = cfg.model_dump() | {"universe": {"select": "all", "market": "spot"}}
    with pytest.raises(ConfigError, match="venue.leverage / venue.default_leverage: spot .* allowed: 1"):
        parse_backtest_config(data)


@pytest.mark.parametrize(("side", "leverage", "guards"), [("BUY", 1, 0), ("SELL", 1, 1), ("BUY", 2, 1)])
def test_a_liquidation_guard_rests_wherever_liquidation_can_cost_more_than_the_margin_left(
    ramp_catalog, tmp_path, side, leverage, guards
):
    # An unlevered long is liquidated at 0.5% of its entry, a fall that leaves nothing to save; an unlevered
    # short's liquidation price (199.5% of entry) is a move that real 5-minute bars have made.
    cfg = config(
        ramp_catalog,
        strategy_config={"enter_on_bar": 3, "side": side, "notional_usd": 1000},
        default_leverage=leverage,
    )
    result, _, _ = run(cfg, tmp_path)
    assert len([o for o in result.engine.cache.orders() if "LIQUIDATION" in o.tags]) == guards

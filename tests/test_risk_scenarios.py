"""Scenario backtests of the whole risk layer: an aggressive signal source against the limits, a flash crash,
the emergency stop's actions, operator commands, and the governor's and supervisor's vetoes.

Every run goes through the real runner with the Exit Brain (CHALLENGE_100) and the emergency stop on.
"""

import numpy as np
import pandas as pd
import pytest
import yaml

from actors.emergency_stop import emergency_state
from actors.risk_profile import PROFILE_DIR
from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from tests.conftest import build_catalog, candles

EVERYWHERE = "tests.strategies_for_tests:EnterEverywhere"
ESS = {"path": "actors.emergency_stop:EmergencyStop"}


def clustered_market(n_symbols: int, bars: int, seed: int, clusters: int = 4) -> dict[str, pd.DataFrame]:
    """Symbols in `clusters` groups; returns within a group correlate at about 0.9, across groups about 0."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(0, 0.003, (clusters, bars))
    frames = {}
    for i in range(n_symbols):
        returns = 0.95 * factors[i % clusters] + 0.3 * rng.normal(0, 0.003, bars)
        closes = np.round(100.0 * np.exp(np.cumsum(returns)), 4)
        frames[f"S{i:02d}USDT"] = candles(closes, spread=0.0005)
    return frames


def profile_file(tmp_path, base: str, **changes) -> str:
    data = yaml.safe_load((PROFILE_DIR / f"{base}.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / f"{base}-changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run(
    tmp_path,
    frames,
    risk_profile,
    strategy=None,
    leverage=5.0,
    exits="challenge_100",
    actors=(ESS,),
    name="run",
):
    catalog = build_catalog(tmp_path / f"{name}-catalog", frames).path
    cfg = parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"default_leverage": leverage},
            "strategies": [{"path": EVERYWHERE, "config": strategy or {}}],
            "actors": list(actors),
            "exit_profile": exits,
            "risk_profile": risk_profile,
            "report": {"tearsheet": False},
        }
    )
    result = run_backtest(cfg, progress=False)
    stats = write_report(result, tmp_path / f"{name}-report")
    report = tmp_path / f"{name}-report"
    return result, stats, pd.read_csv(report / "risk_events.csv"), pd.read_csv(report / "exits.csv")


def codes(risk: pd.DataFrame) -> set[str]:
    return set(risk["source"] + "/" + risk["code"]) if len(risk) else set()


# ---- limits on 32 symbols with an aggressive signal source ---------------------------------------------
def test_exposure_and_correlation_limits_hold_on_32_symbols_entering_every_bar(tmp_path):
    frames = clustered_market(32, 500, seed=3, clusters=8)
    result, stats, risk, exits = run(tmp_path, frames, "aggressive")
    samples = pd.DataFrame(result.strategies[0].samples, columns=["ts", "open", "gross", "equity"])
    assert samples["open"].max() > 0
    # Entries are held to 200% of equity when they are made; prices move a little after that.
    assert (samples["gross"] <= 2.0 * samples["equity"] * 1.03).all()
    assert samples["gross"].max() >= 1.5 * samples["equity"].iloc[0]  # the limit was reached, not avoided
    assert {"safety_governor/size", "safety_governor/correlation"} <= codes(risk)
    assert_no_correlated_positions_overlap(result, frames, limit=0.70, window=288)
    assert stats["liquidations"] == 0
    assert "liquidation" not in set(exits["reason"])


def test_the_number_of_concurrent_positions_never_exceeds_the_profile(tmp_path):
    # Uncorrelated symbols and 1% risk per trade (140 USD margin, 700 notional at 5x): neither correlation,
    # exposure nor margin stops the 21st entry, so the count is the binding limit.
    frames = clustered_market(32, 300, seed=5, clusters=32)
    small = profile_file(tmp_path, "aggressive", risk_per_trade=0.01)
    result, stats, risk, exits = run(tmp_path, frames, small)
    samples = pd.DataFrame(result.strategies[0].samples, columns=["ts", "open", "gross", "equity"])
    assert samples["open"].max() == 20
    assert "risk_guard/positions" in codes(risk)
    assert stats["liquidations"] == 0


def assert_no_correlated_positions_overlap(result, frames, limit: float, window: int) -> None:
    """Independently of the gate's code: no position opened while a same-direction one correlated above the
    limit (by numpy on the catalog's closes, over the returns the gate saw) was open."""
    positions = result.engine.trader.generate_positions_report()
    closes = pd.DataFrame({sym: f.set_index("date")["close"] for sym, f in frames.items()})
    returns = np.log(closes).diff()
    rows = []
    for _, p in positions.iterrows():
        symbol = str(p["instrument_id"]).split("-")[0]
        closed = (
            pd.Timestamp(p["ts_closed"]) if pd.notna(p["ts_closed"]) else pd.Timestamp.max.tz_localize("UTC")
        )
        rows.append((symbol, str(p["entry"]), pd.Timestamp(p["ts_opened"]), closed))
    checked = 0
    for sym, side, opened, _ in rows:
        decided = opened  # fill timing bar_close: the entry filled on the bar it was decided on
        for other, other_side, other_opened, other_closed in rows:
            if (
                other == sym
                or not (other_opened <= opened < other_closed)
                or (other_opened, other) >= (opened, sym)
            ):
                continue
            tail = returns.loc[:decided, [sym, other]].dropna().tail(window)
            corr = np.corrcoef(tail[sym], tail[other])[0, 1]
            directional = corr if side == other_side else -corr
            assert directional <= limit + 1e-6, (sym, other, decided, directional)
            checked += 1
    assert checked > 0


# ---- flash crash ---------------------------------------------------------------------------------------
def test_a_flash_crash_trips_the_emergency_stop_and_leaves_no_position_without_a_stop(tmp_path):
    # 12 uncorrelated symbols, all entered long at bar 30; at bar 100 ten of them gap 20% down. At 4x
    # leverage that is about 22% of equity: over the moderate profile's daily limit. The other two drift up,
    # so they are winners when the stop trips: not closed, but halved. The run ends 15 bars after the crash.
    rng = np.random.default_rng(11)
    frames = {}
    for i in range(12):
        if i < 10:
            closes = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.0005, 115)))
            closes[100:] *= 0.8
        else:
            closes = 100.0 * np.exp(np.cumsum(rng.normal(0.0002, 0.0001, 115)))
        frame = candles(np.round(closes, 4), spread=0.0)
        if i < 10:  # the crash bar opens 20% down: a gap, so the stops fill there, not at their triggers
            frame.loc[100, ["open", "high"]] = frame.loc[100, "close"]
        frames[f"C{i:02d}USDT"] = frame
    observe = profile_file(tmp_path, "moderate", supervisor={"mode": "observe"})
    result, stats, risk, exits = run(
        tmp_path,
        frames,
        observe,
        strategy={"direction": "long", "start_bar": 30},
        leverage=4.0,
        exits="default",
    )
    trips = risk[(risk["source"] == "emergency_stop") & (risk["action"] == "trip")]
    assert len(trips) == 1 and trips["code"].iloc[0] in ("daily_drawdown", "emergency_brake")
    actions = risk[risk["source"] == "emergency_stop"]["action"].tolist()
    assert actions[:5] == ["trip", "halt", "close_losing", "reduce_exposure", "alert"]
    assert emergency_state(result.engine.cache).tripped

    tripped_at = pd.Timestamp(trips["ts_event"].iloc[0])
    fills = pd.read_csv(tmp_path / "run-report" / "fills.csv")
    decided = pd.to_datetime(fills["ts_last"])  # fill timing bar_close: filled when decided
    entries_after = fills[fills["tags"].str.contains("ENTRY") & (decided > tripped_at)]
    assert entries_after.empty, "no entry decided after the trip"
    halted = risk[(risk["source"] == "emergency_stop") & (risk["action"] == "veto")]
    assert len(halted) > 0 and set(halted["code"]) == {"halted"}, "entries tried after the trip were refused"
    assert "emergency" in set(exits["reason"]), "the emergency actions closed or reduced positions"
    assert stats["liquidations"] == 0

    open_positions = result.engine.cache.positions_open()
    survivors = {str(p.instrument_id)[:7] for p in open_positions}
    assert {"C10USDT", "C11USDT"} <= survivors, "the two winners are still held"
    halved = exits[(exits["reason"] == "emergency") & exits["instrument_id"].str.startswith(("C10", "C11"))]
    assert len(halved) == 2, "the two winners were halved, not closed"
    for position in open_positions:
        stops = [
            o
            for o in result.engine.cache.orders_open(instrument_id=position.instrument_id)
            if o.order_type.name == "STOP_MARKET" and o.is_reduce_only and "LIQUIDATION" not in o.tags
        ]
        assert stops, f"{position.instrument_id} has no resting stop"
        assert stops[0].quantity == position.quantity


# ---- governor and supervisor ---------------------------------------------------------------------------
def test_the_model_supervisor_blocks_the_dominant_direction_and_says_so(tmp_path):
    frames = clustered_market(6, 120, seed=1, clusters=6)
    _, _, risk, _ = run(tmp_path, frames, "moderate", strategy={"direction": "long"})
    blocks = risk[risk["source"] == "model_supervisor"]
    assert len(blocks) > 0
    assert set(blocks["action"]) == {"block"} and set(blocks["code"]) == {"dominant_direction"}
    assert blocks["reason"].str.contains("LONG").all()


def test_in_observe_mode_the_supervisor_only_reports(tmp_path):
    frames = clustered_market(6, 120, seed=1, clusters=6)
    observe = profile_file(tmp_path, "moderate", supervisor={"mode": "observe"})
    _, stats, risk, _ = run(tmp_path, frames, observe, strategy={"direction": "long"})
    reports = risk[risk["source"] == "model_supervisor"]
    assert len(reports) > 0 and set(reports["action"]) == {"alert"}
    assert stats["trades"] + stats["open_positions_at_end"] > 0


@pytest.mark.parametrize(
    ("strategy", "code", "words"),
    [
        ({"confidence": 0.55}, "confidence", "0.55"),
        ({"atr_ratio": 0.05}, "volatility", "5.00% above 2.00%"),
    ],
)
def test_the_safety_governor_vetoes_with_its_reason(tmp_path, strategy, code, words):
    frames = clustered_market(4, 80, seed=2, clusters=4)
    _, stats, risk, _ = run(tmp_path, frames, "moderate", strategy=strategy)
    vetoes = risk[risk["source"] == "safety_governor"]
    assert len(vetoes) > 0 and set(vetoes["code"]) == {code}
    assert vetoes["reason"].str.contains(words, regex=False).all()
    assert stats["trades"] == 0 and stats["open_positions_at_end"] == 0
    assert stats["risk_events"][f"safety_governor/veto/{code}"] == len(vetoes)


# ---- the liquidation buffer against the liquidation guard ------------------------------------------------
@pytest.mark.parametrize("buffer", [0.01, None])
def test_with_the_buffer_on_no_position_reaches_its_liquidation_price(tmp_path, buffer):
    # 25x: liquidation 3.5% from the entry. The 1.5R stop (2.25 ATR, ATR 2% of the price) would rest 4.5%
    # away, beyond it. With the 1% buffer the stop rests on the buffer line instead; without it, the
    # liquidation stop is reached first.
    frames = {}
    rng = np.random.default_rng(21)
    for i in range(32):
        closes = np.round(100.0 * np.exp(np.cumsum(rng.normal(0, 0.003, 400))), 4)
        frames[f"L{i:02d}USDT"] = candles(closes, spread=0.0005)
    exits_file = tmp_path / "challenge.yaml"
    profile = yaml.safe_load((PROFILE_DIR.parent / "exits" / "challenge_100.yaml").read_text())
    exits_file.write_text(yaml.safe_dump(profile | {"liquidation_buffer": buffer}))
    small = profile_file(tmp_path, "aggressive", risk_per_trade=0.01, supervisor={"mode": "observe"})
    result, stats, _, exits = run(
        tmp_path, frames, small, strategy={"atr_ratio": 0.02}, leverage=25.0, exits=str(exits_file)
    )
    reasons = set(exits["reason"])
    guards = [o for o in result.engine.cache.orders() if "LIQUIDATION" in o.tags]
    if buffer is not None:
        assert "liquidation_buffer" in reasons
        assert stats["liquidations"] == 0 and "liquidation" not in reasons
        # every stop rests inside the liquidation price, so no guard order is even sent
        assert guards == []
    else:
        assert stats["liquidations"] > 0 and "liquidation" in reasons
        assert len(guards) >= stats["trades"] > 0  # one per position, re-placed as it changes

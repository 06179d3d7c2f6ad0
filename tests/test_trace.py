"""Trace ids (quantum_trader/trace.py): born with each acted-on decision, carried by its orders, fills and exits.

A backtest on a one-symbol catalog shows the tags on every order and fill of a position and the id in the run's
exits, risk events and signals tables; a live session on the fake exchange shows `grep trace_id=<id>` of the
node's JSON log finding the decision, its orders, their fills and the close, with no API key in the file.
"""

import ast
import json
import re

import numpy as np
import pandas as pd
import pytest

from quantum_trader.events import BarCloseSignals, Signal
from quantum_trader.trace import role_of, trace_id, trace_of, with_trace
from tests.conftest import build_catalog, candles
from tests.test_exit_brain import path, run_exits

IID = "PATHUSDT-PERP.BINANCE"
STRATEGY_ID = "EnterWithAtr-000"
CLOSE = pd.Timestamp("2025-01-01 00:15", tz="UTC").value  # the close of bar 3, where EnterWithAtr decides
HEX16 = re.compile(r"^[0-9a-f]{16}$")


# ---- the id ----------------------------------------------------------------------------------------------
def test_the_trace_id_is_a_deterministic_hash_of_strategy_instrument_and_bar_close():
    base = trace_id("EnsembleStrategy-000", "BTCUSDT-PERP.BINANCE", CLOSE)
    assert HEX16.match(base)
    assert trace_id("EnsembleStrategy-000", "BTCUSDT-PERP.BINANCE", CLOSE) == base
    others = {
        trace_id("EnsembleStrategy-001", "BTCUSDT-PERP.BINANCE", CLOSE),  # another strategy
        trace_id("EnsembleStrategy-000", "ETHUSDT-PERP.BINANCE", CLOSE),  # another symbol
        trace_id("EnsembleStrategy-000", "BTCUSDT-PERP.BINANCE", CLOSE + 300_000_000_000),  # the next close
    }
    assert base not in others and len(others) == 3
    # A live kline is stamped 1 ms before the boundary plus float noise: its decision has the replay's id.
    live_stamp = CLOSE - 1_000_000 + 37
    assert trace_id("EnsembleStrategy-000", "BTCUSDT-PERP.BINANCE", live_stamp) == base


def test_a_signal_and_its_row_in_a_bar_close_batch_have_the_same_trace_id():
    from nautilus_trader.model.identifiers import InstrumentId

    iid = InstrumentId.from_str("BTCUSDT-PERP.BINANCE")
    signal = Signal(ts_event=CLOSE, ts_init=CLOSE, instrument_id=iid, direction="LONG", confidence=0.9)
    batch = BarCloseSignals.of(signal)
    assert signal.trace_id("S-000") == batch.trace_id(0, "S-000") == trace_id("S-000", iid, CLOSE)


def test_tags_carry_the_trace_after_the_role():
    tags = with_trace(["TP1"], "0123456789abcdef")
    assert tags == ["TP1", "trace:0123456789abcdef"]
    assert trace_of(tags) == "0123456789abcdef" and role_of(tags) == "TP1"
    assert with_trace(["SL"], "") == ["SL"] and trace_of(["SL"]) == "" and trace_of(None) == ""
    assert role_of(["trace:0123456789abcdef"], "STRATEGY") == "STRATEGY"


# ---- a backtest: every order and fill of the position carries the entry decision's tag -----------------
PROFILE = {
    "name": "trace",
    "r_atr": 1.5,
    "stop_r": 1.0,
    "take_profits": [{"r": 1.0, "fraction": 0.5}, {"r": 3.0, "fraction": 0.5}],
    "breakeven_after_tp1": True,
}


def test_every_order_fill_and_exit_of_a_backtest_position_carries_its_entry_trace(tmp_path):
    # entry at 100 (R 1.5): the rise trails the stop (2 ATR, the profile's default), TP1 at 101.5 fills half,
    # the stop moves to break-even and the fall to 99 fills it
    profile = tmp_path / "trace.yaml"
    profile.write_text(json.dumps(PROFILE))  # JSON is YAML
    result, stats, exits = run_exits(tmp_path, path(101.0, 102.0, 99.0), str(profile))
    report = tmp_path / "run-report"
    expected = trace_id(STRATEGY_ID, IID, CLOSE)
    orders = pd.read_csv(report / "orders.csv")
    roles = [role_of(ast.literal_eval(t)) for t in orders["tags"]]  # the report writes the list's repr
    assert roles == ["ENTRY", "SL", "TP1", "TP2", "TRAILING", "BREAKEVEN"], roles
    assert orders["trace_id"].tolist() == [expected] * len(orders)
    assert all(f"trace:{expected}" in t for t in orders["tags"])
    fills = pd.read_csv(report / "fills.csv")
    assert len(fills) == 3 and fills["trace_id"].tolist() == [expected] * 3  # entry, TP1, break-even
    assert exits["reason"].tolist() == ["tp1", "breakeven"]
    assert exits["trace_id"].tolist() == [expected, expected]
    # the trade fingerprint reads no tags: the same trades give the same fingerprint as before trace ids
    again = run_exits(tmp_path, path(101.0, 102.0, 99.0), str(profile), name="again")[1]
    assert again["fingerprint"] == stats["fingerprint"]


def test_a_risk_veto_carries_the_trace_of_the_decision_it_refused(tmp_path):
    # conservative: min_confidence 0.75, entries at 0.8; a 0.5 signal is vetoed by the safety governor
    _, _, exits = run_exits(tmp_path, path(100.0), "default", risk_profile="conservative", confidence=0.5)
    risk = pd.read_csv(tmp_path / "run-report" / "risk_events.csv")
    vetoes = risk[risk["action"] == "veto"]
    assert len(vetoes) == 1 and exits.empty
    assert vetoes["trace_id"].tolist() == [trace_id(STRATEGY_ID, IID, CLOSE)]


# ---- live: the JSON log of a session on the fake exchange -----------------------------------------------
def test_grep_of_a_trace_id_in_the_live_json_log_shows_the_decision_s_whole_life(tmp_path):
    from tests.fake_session import KEYS, live_session

    history = 10
    rise, fall = np.linspace(100.0, 110.0, 8), np.linspace(109.0, 100.0, 6)
    closes = np.round(np.concatenate([np.full(history, 100.0), rise, fall]), 4)
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(closes)})
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * history)
    logs = tmp_path / "logs"
    config = {
        "name": "trace",
        "trader_id": "TRACE-001",
        "symbols": ["BTCUSDT"],
        "redis": {"enabled": False},
        "flatten_on_stop": True,
        "reconciliation": {"startup_delay_secs": 0},
        "timeouts": {"connection": 15, "reconciliation": 10, "disconnection": 3, "post_stop": 1},
        "log_directory": str(logs),
        "strategies": [
            {
                "path": "strategies.ema_cross:EmaCross",
                "config": {"fast_period": 2, "slow_period": 4, "notional_usd": 200},
            }
        ],
    }
    with live_session(tmp_path, tmp_path / "catalog", ["BTCUSDT"], start, config) as session:
        session.wait_until(lambda st: "btcusdt@kline_5m" in st["subscriptions"], "the node subscribed", 30)
        session.step(len(rise))  # EmaCross(2, 4) is ready after 4 bars and goes long on the rise
        session.wait_until(
            lambda st: float(st["positions"].get("BTCUSDT", {}).get("positionAmt", 0)) > 0, "long"
        )
        session.step(len(fall))  # the fall: the long is closed (STRATEGY) and a short opened
        session.wait_until(
            lambda st: float(st["positions"].get("BTCUSDT", {}).get("positionAmt", 0)) < 0, "short"
        )
        session.wait_for(
            " fill ENTRY SELL ", timeout=30
        )  # the node holds the short too, so the flatten closes it
        assert session.stop(timeout=30) == 0, session.output()[-3000:]
    (log_file,) = list(logs.iterdir())
    text = log_file.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is a JSON object
    assert lines and all({"timestamp", "level", "component", "message"} <= set(line) for line in lines)
    first_long = next(line["message"] for line in lines if " signal LONG " in line["message"])
    trace = re.search(r"trace_id=([0-9a-f]{16})", first_long).group(1)
    life = [line for line in lines if f"trace_id={trace}" in line["message"]]  # grep trace_id=<id>
    steps = [" ".join(line["message"].split()[1:3]) for line in life]
    assert steps == [
        "signal LONG", "submit ENTRY", "fill ENTRY", "submit STRATEGY", "fill STRATEGY", "closed BTCUSDT-PERP.BINANCE",
    ], steps  # fmt: skip
    assert {line["component"] for line in life} == {"EmaCross"}  # the strategy logs them
    assert all(line["level"] == "INFO" for line in life)
    # the short opened on the fall has its own trace, and the flatten on SIGINT (Nautilus' market exit) carries it
    # (the latest short signal: on the fake the flip's close and entry may fill in either order, and the EMA may
    # then enter again on the next bar)
    short = [line["message"] for line in lines if " signal SHORT " in line["message"]][-1]
    short_trace = re.search(r"trace_id=([0-9a-f]{16})", short).group(1)
    assert short_trace != trace
    flatten = [
        line["message"]
        for line in lines
        if line["message"].startswith("trace_id=") and " MARKET_EXIT " in line["message"]
    ]
    assert any(m.startswith(f"trace_id={short_trace} submit MARKET_EXIT MARKET BUY") for m in flatten), (
        flatten
    )
    assert all(
        m.startswith(f"trace_id={short_trace} ") for m in flatten
    )  # its fill too, when logged before the stop
    for secret in KEYS.values():
        assert secret not in text and secret not in session.output()


@pytest.mark.parametrize("value", ["xml", "JSON"])
def test_an_unknown_log_format_names_the_allowed_values(value):
    from live.config import parse_live_config
    from quantum_trader.config import ConfigError

    with pytest.raises(ConfigError, match=r"log_format: Input should be 'json' or 'text'"):
        parse_live_config(
            {
                "symbols": ["BTCUSDT"],
                "strategies": [{"path": "strategies.ema_cross:EmaCross"}],
                "log_format": value,
            }
        )

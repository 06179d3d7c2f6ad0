"""End to end: `qt live` runs the EnsembleStrategy (CHALLENGE_100 exits, moderate risk, emergency stop) against
the local fake exchange with a real redis-server, on small models trained here that beat the zero forecast.

Start -> warm-up (history requested, features ready at the first live bar) -> Signals -> an entry protected by
a resting reduce-only stop (an algo order at the fake) and take-profits -> exits -> flatten on SIGINT; then
`qt parity` replays the recorded session as a backtest.
"""

import json

import pandas as pd
import pytest
import redis

from live.parity import run_parity
from tests.conftest import SMALL_ENSEMBLE_SYMBOLS, train_small_ensemble
from tests.fake_session import live_session

KINDS = ("xgboost", "lightgbm")  # the nets cost ~0.1 s a vote on 2 cores; the trees keep this test short
WARMUP = 400
STEPS = 20
BATCH_DELAY_MS = 100
BEHIND = STEPS + 5  # every replayed bar closes in the node's past, as a real kline does when it arrives
REPLAY_FROM = 1250  # inside the test split of the training catalog (1400 bars)


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-ensemble")
    result = train_small_ensemble(root, kinds=KINDS)
    assert {k: s["status"] for k, s in result.skill.items()} == dict.fromkeys(KINDS, "healthy")
    assert result.not_promoted == {}
    return root


def test_the_ensemble_trades_live_on_the_fake_exchange_and_its_replay_decides_the_same(
    models, tmp_path, redis_port
):
    config = {
        "name": "ensemble",
        "trader_id": "ENS-001",
        "symbols": SMALL_ENSEMBLE_SYMBOLS,
        "models": str(models / "models"),
        "exit_profile": "challenge_100",
        "risk_profile": "moderate",
        "redis": {"port": redis_port},
        "message_bus": {"heartbeat_seconds": 1},
        "flatten_on_stop": True,
        "reconciliation": {"startup_delay_secs": 0},
        "timeouts": {"connection": 15, "reconciliation": 10, "disconnection": 3, "post_stop": 1},
        "warmup_bars": WARMUP,
        "record": str(tmp_path / "runs"),
        "strategies": [
            {
                "path": "strategies.ensemble:EnsembleStrategy",
                "config": {
                    "models": [f"{k}:production" for k in KINDS],
                    "weights": dict.fromkeys(KINDS, 0.5),
                    # on wall-clock time live: against a fake that replays 5 minutes in a fraction of a second it
                    # would mean hundreds of bars, in the backtest none (see live/parity.py)
                    "cooldown_seconds": 0,
                    # the batch waits this long after a close's first kline; well under the 0.5 s between the
                    # test's steps, so an entry reaches the fake (which fills at its last close) before the next bar
                    "batch_delay_ms": BATCH_DELAY_MS,
                },
            }
        ],
        "actors": [{"path": "actors.emergency_stop:EmergencyStop"}],
    }
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * REPLAY_FROM)
    protected = None
    with live_session(
        tmp_path, models / "catalog", SMALL_ENSEMBLE_SYMBOLS, start, config, behind_bars=BEHIND
    ) as session:
        session.wait_for("Warm-up done", timeout=90)
        for _ in range(STEPS):
            session.step(1, pause=0.5)
            state = session.fake.state()
            if protected is None and state["open_algo_orders"]:
                protected = state
        session.wait_until(lambda s: len(s["fills"]) > 0, "fills at the fake")
        before_stop = session.fake.state()
        code = session.stop()
        output = session.output()
        final = session.fake.state()

    assert code == 0, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert errors == [], errors
    assert "SENTINEL" not in output
    assert f"Warm-up: requested {WARMUP} bars of {len(SMALL_ENSEMBLE_SYMBOLS)} bar types" in output

    (run_dir,) = (tmp_path / "runs").iterdir()
    bars, signals, intents = (read(run_dir / f"{n}.jsonl") for n in ("bars", "signals", "intents"))
    history = [b for b in bars if b["source"] == "history"]
    live = [b for b in bars if b["source"] == "live"]
    first_live = min(b["close"] for b in live)
    assert len(live) == STEPS * len(SMALL_ENSEMBLE_SYMBOLS)
    assert len(history) >= 300 * len(SMALL_ENSEMBLE_SYMBOLS)  # the features' warm-up is in the history
    assert max(b["close"] for b in history) < first_live
    # features ready at the first live bar: every symbol is scored on it, and on history bars before it
    assert {s["instrument_id"] for s in signals if s["close"] == first_live} == {
        f"{s}-PERP.BINANCE" for s in SMALL_ENSEMBLE_SYMBOLS
    }
    assert any(s["close"] < first_live for s in signals)
    assert all(set(s["votes"]) == set(KINDS) and None not in s["votes"].values() for s in signals)

    # an entry, protected at the fake by a resting reduce-only stop (algo order) and reduce-only take-profits
    entries = [i for i in intents if i["tags"][0] == "ENTRY" and i["phase"] == "run"]
    assert entries and all(i["bar"] >= first_live for i in entries)
    assert protected is not None, "no stop ever rested at the fake"
    stops = protected["open_algo_orders"]
    assert all(a["orderType"] == "STOP_MARKET" and a["reduceOnly"] in (True, "true") for a in stops), stops
    tps = protected["open_orders"]
    assert tps and all(o["type"] == "LIMIT" and o["reduceOnly"] in (True, "true") for o in tps), tps
    sl = [i for i in intents if i["tags"][0] == "SL"]
    assert sl and all(i["reduce_only"] and i["type"] == "STOP_MARKET" and i["trigger_price"] for i in sl)
    assert {i["tags"][0] for i in intents} >= {"ENTRY", "SL", "TP1", "TP2"}
    # each entry's trace id (its second tag) is carried by the exits of its position
    traces = {i["tags"][1] for i in entries}
    assert len(traces) == len(entries) and all(t.startswith("trace:") for t in traces)
    assert {i["tags"][1] for i in intents if i["tags"][0] in ("SL", "TP1", "TP2")} <= traces

    # exits: by the resting orders while the bars were replayed, and the flatten on SIGINT
    exit_fills = [f for f in before_stop["fills"] if f["realizedPnl"] not in ("0", "0.00000000")]
    flatten = [i for i in intents if i["phase"] == "stop"]
    assert exit_fills or flatten, "nothing was ever closed"
    assert not final["positions"] and not final["open_algo_orders"] and not final["open_orders"]

    # the decisions also reached the Redis streams
    r = redis.Redis(port=redis_port)
    assert r.xlen("trader-ENS-001:stream:data.BarCloseSignals*") > 0

    result = run_parity(run_dir)
    print("\n".join(result.lines()))
    assert result.bars_note.endswith("the backtest saw the same"), result.bars_note
    assert result.identical, result.difference
    assert len(result.live.intents) >= 3
    # latency from the node clock's times: a close's signals wait for its batch alert (due after the first kline)
    assert (
        result.latency and "-> signal p50 " in result.latency and "-> order decided on it" in result.latency
    )
    receipt = {}
    for b in live:
        receipt[b["close"]] = min(receipt.get(b["close"], b["ts_init"]), b["ts_init"])
    waited = [s["ts_init"] - receipt[s["close"]] for s in signals if s["close"] in receipt]
    assert waited and min(waited) >= BATCH_DELAY_MS * 1_000_000, waited

"""The control API (actors/control_api.py): no token configured, no API; every /api route refuses a request
without the admin bearer token; and on a `qt live` node against the fake exchange each command has its effect
at the fake (entries stopped and resumed, the emergency stop tripped and reset, one symbol and every position
closed, models promoted and demoted, a retrain launched), while the token never shows in a log or an answer."""

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from nautilus_trader.model.identifiers import InstrumentId

from actors.control_api import ControlApi, ControlApiConfig
from actors.control_api_app import ApiServer
from quantum_trader.config import ConfigError
from quantum_trader.events import BarCloseSignals, HealthEvent
from tests.conftest import build_catalog, candles, free_port
from tests.fake_session import KEYS

TOKEN = KEYS["QT_ADMIN_TOKEN"]
ROOT = Path(__file__).resolve().parents[1]
BAR = "BTCUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL"
CONTRACT_ROUTES = {
    ("GET", "/api/health"), ("GET", "/api/positions"), ("GET", "/api/signals"), ("GET", "/api/risk"),
    ("GET", "/api/equity"), ("GET", "/api/executor"), ("POST", "/api/executor/{verb}"),
    ("POST", "/api/ess/{verb}"), ("POST", "/api/positions/close-all"), ("POST", "/api/positions/{symbol}/close"),
    ("GET", "/api/models"), ("POST", "/api/models/retrain"), ("POST", "/api/models/{id_or_kind}/promote"),
    ("POST", "/api/models/{kind}/demote"), ("GET", "/api/stats/{period}"),
}  # fmt: skip
PATH_VALUES = {
    "verb": "stop",
    "symbol": "BTCUSDT",
    "id_or_kind": "xgboost",
    "kind": "xgboost",
    "period": "daily",
}


def call(port: int, method: str, path: str, token: str | None = TOKEN, body=None, auth: str | None = None):
    """(status, JSON body) of one request; `auth` is a raw Authorization header instead of the token's."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    header = auth if auth is not None else (f"Bearer {token}" if token is not None else None)
    if header is not None:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ---- without a node ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "   "])
def test_without_the_token_in_the_environment_the_api_refuses_to_start(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("QT_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("QT_ADMIN_TOKEN", value)
    with pytest.raises(ConfigError, match="^QT_ADMIN_TOKEN is not set: the control API refuses to start"):
        ControlApi(ControlApiConfig(port=0))
    monkeypatch.setenv("MY_TOKEN", TOKEN)  # the variable is configurable
    assert ControlApi(ControlApiConfig(port=0, token_env="MY_TOKEN")).token_matches(TOKEN)


def test_qt_live_without_the_token_exits_2_before_anything_connects(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in (os.environ | KEYS).items() if k != "QT_ADMIN_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    config = ROOT / "configs" / "live" / "fake_exchange.yaml"  # its endpoints: nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "live", str(config), "--duration", "5"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: QT_ADMIN_TOKEN is not set: the control API refuses to start without its admin token "
        "(set QT_ADMIN_TOKEN in the environment, or remove actors.control_api:ControlApi)"
    ]
    assert "RUNNING" not in done.stdout


@pytest.fixture
def served(monkeypatch):
    """An API of an actor that is in no node: auth answers, anything past it finds no node (503)."""
    monkeypatch.setenv("QT_ADMIN_TOKEN", TOKEN)
    api = ControlApi(ControlApiConfig(port=0, bar_types=(BAR,)))
    server = ApiServer(api.app, "127.0.0.1", 0)
    try:
        yield api, server.bound_port
    finally:
        server.stop()


def test_every_api_route_refuses_requests_without_the_right_bearer_token(served):
    api, port = served
    routes = {(m, r.path) for r in api.app.state.api_router.routes for m in r.methods}
    assert routes >= CONTRACT_ROUTES  # the contract's paths; any route added later is checked below too
    refused = {
        "no header": None,
        "a wrong token": "Bearer wrong-token",
        "the token with one more character": f"Bearer {TOKEN}x",
        "a prefix of the token": f"Bearer {TOKEN[:-1]}",
        "another scheme": f"Basic {TOKEN}",
        "the bare token": TOKEN,
        "an empty bearer": "Bearer ",
    }
    for method, path in sorted(routes) + [("GET", "/api/no-such-route"), ("POST", "/api")]:
        url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
        for what, header in refused.items():
            status, body = call(port, method, url, auth=header or "", body={"reason": "x"})
            assert (status, body) == (401, {"error": "unauthorized"}), (method, url, what)
        status, body = call(port, method, url)
        assert status != 401, (method, url)  # the right token passes auth (here: no node behind it)
        assert TOKEN not in json.dumps(body)


def test_with_the_token_requests_without_a_node_answer_503_and_bad_input_names_what_is_allowed(served):
    _, port = served
    assert call(port, "GET", "/api/risk") == (503, {"error": "the node is not running"})
    status, body = call(port, "POST", "/api/positions/DOGEUSDT/close")
    assert status == 404 and "unknown symbol 'DOGEUSDT'; this node trades: BTCUSDT" in body["error"]
    status, body = call(port, "GET", "/api/stats/monthly")
    assert status == 404 and "allowed: daily, weekly" in body["error"]
    status, body = call(port, "POST", "/api/models/retrain", body={"kind": "xgboost"})
    assert status == 409 and "no retrain_config" in body["error"]
    status, body = call(port, "POST", "/api/models/xgboost/demote")
    assert status == 409 and "no model registry configured" in body["error"]
    assert call(port, "GET", "/docs", token=None)[0] == 404  # no interactive docs, no schema
    assert call(port, "GET", "/openapi.json", token=None)[0] == 404


def test_signal_batches_and_health_events_are_kept_and_read_newest_first(served):
    api, _ = served
    ids = [InstrumentId.from_str("BTCUSDT-PERP.BINANCE"), InstrumentId.from_str("ETHUSDT-PERP.BINANCE")]
    t0 = pd.Timestamp("2025-01-01 10:00", tz="UTC").value
    for k in range(2):
        api.on_data(
            BarCloseSignals(
                t0 + k, t0 + k, ids, np.array([1, -1], dtype=np.int8), np.array([0.8, 0.6]),
                np.array([0.7, 0.3]), np.array([0.01, -0.01]),
                {"xgboost": np.array([0.5, -0.4]), "nhits": np.array([np.nan, np.nan])}, f"xgb-{k}", "h",
            )
        )  # fmt: skip
    rows = api.read_signals(limit=3)["signals"]
    assert [(r["symbol"], r["direction"], r["model_ids"]) for r in rows] == [
        ("BTCUSDT", "LONG", "xgb-1"), ("ETHUSDT", "SHORT", "xgb-1"), ("BTCUSDT", "LONG", "xgb-0"),
    ]  # fmt: skip
    assert rows[0]["votes"] == {"xgboost": 0.5} and rows[0]["confidence"] == 0.8 and rows[0]["prob_up"] == 0.7
    assert rows[0]["ts"] == "2025-01-01T10:00:00.000000001+00:00"
    assert api.loaded_model_ids() == ["xgb-1"]
    assert api.read_health() == {"level": "UNKNOWN", "components": {}}
    api.on_data(HealthEvent(component="redis", status="degraded", reason="slow", ts_event=t0, ts_init=t0))
    api.on_data(HealthEvent(component="system", status="degraded", level="DEGRADED", ts_event=t0, ts_init=t0))
    assert api.read_health() == {
        "level": "DEGRADED",
        "components": {"redis": {"status": "degraded", "reason": "slow", "ts": "2025-01-01T10:00:00+00:00"}},
    }


def test_a_taken_port_is_a_critical_start_failure_of_the_node(monkeypatch):
    """A component whose on_start raises (here the API's port is taken) ends `run_live` with a CRITICAL line
    and exit code 3, not a traceback."""
    import socket

    from live.node import EXIT_CRITICAL, dispose, run_live
    from tests.test_live_node import _clientless_node, live_config

    monkeypatch.setenv("QT_ADMIN_TOKEN", TOKEN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        live = _clientless_node(
            live_config(redis={"enabled": False}), [ControlApi(ControlApiConfig(port=port))]
        )
        lines: list[str] = []
        try:
            code = live.node.get_event_loop().run_until_complete(
                run_live(live, duration=1, report=lines.append)
            )
        finally:
            dispose(live.node)
            asyncio.set_event_loop(None)
    assert code == EXIT_CRITICAL
    assert lines == [
        f"CRITICAL: the trader did not start: OSError: control API: cannot serve on 127.0.0.1:{port}: "
        "Address already in use (the actor's config `port` / `host`)"
    ]


# ---- a live node on the fake exchange ------------------------------------------------------------------
def tiny_registry(root: Path) -> str:
    """One registered xgboost version whose recorded validation skill passes ml.skill's rule (its files are a
    stand-in: promote and demote verify files and skill, they load nothing)."""
    from ml.models.base import ForecastModel
    from ml.registry import ModelRegistry

    class Stub(ForecastModel):
        kind = "xgboost"
        fit = predict = load = None

        def save(self, directory: Path) -> list[str]:
            (directory / "model.json").write_text('{"kind": "xgboost"}')
            return ["model.json"]

    record = ModelRegistry(root).register(
        Stub(),
        metrics={},
        data={},
        label={},
        training={},
        skill={"mse": 1e-6, "zero_mse": 2e-6, "pred_std": 0.01},
    )
    return record.id


def test_each_command_has_its_effect_on_a_live_node_at_the_fake_exchange(tmp_path):
    from ml.registry import ModelRegistry
    from tests.fake_session import live_session

    history = 10
    closes = np.concatenate([np.full(history, 100.0), np.linspace(100.0, 130.0, 40)])
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(np.round(closes, 4))})
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * history)
    model_id = tiny_registry(tmp_path / "models")
    port = free_port()
    config = yaml.safe_load((ROOT / "configs" / "live" / "fake_exchange.yaml").read_text())
    config["models"] = str(tmp_path / "models")
    config["actors"] = [
        {"path": "actors.emergency_stop:EmergencyStop"},
        {
            "path": "actors.control_api:ControlApi",
            "config": {
                "port": port,
                "retrain_config": str(tmp_path / "no-such-train.yaml"),
                "retrain_dir": str(tmp_path / "retrains"),
            },
        },
    ]
    answers: list[str] = []

    def api(method: str, path: str, body=None, expect: int | None = None) -> dict:
        status, answer = call(port, method, path, body=body)
        answers.append(json.dumps(answer))
        assert expect is None or status == expect, (method, path, status, answer)
        return answer

    def api_until(path: str, condition, what: str, timeout: float = 15) -> dict:
        """GET `path` until `condition(answer)`: the node hears of a fill after the fake has made it."""
        deadline = time.monotonic() + timeout
        while not condition(answer := api("GET", path, expect=200)):
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {answer}"
            time.sleep(0.1)
        return answer

    def position(state) -> float:
        return float(state["positions"].get("BTCUSDT", {}).get("positionAmt", 0.0))

    with live_session(tmp_path, tmp_path / "catalog", ["BTCUSDT"], start, config) as session:
        session.wait_for(
            f"Control API serving on http://127.0.0.1:{port}/api (bearer token from QT_ADMIN_TOKEN)"
        )
        session.wait_until(lambda st: "btcusdt@kline_5m" in st["subscriptions"], "the node subscribed", 30)
        assert api("GET", "/api/positions", expect=200) == {"positions": []}
        assert api("GET", "/api/health", expect=200) == {"level": "UNKNOWN", "components": {}}

        # executor stop: the EMA wants to go long on the rise, but opens nothing
        stopped = api("POST", "/api/executor/stop", {"reason": "drill"}, expect=202)
        assert stopped == {
            "accepted": True,
            "command": {"action": "executor_stop", "symbol": "", "target": "", "reason": "drill"},
        }
        executor = api("GET", "/api/executor", expect=200)
        assert executor == {
            "entries_enabled": False,
            "strategies": [{"id": "EmaCross-000", "state": "RUNNING", "entries_enabled": False}],
        }
        session.step(6)  # EmaCross(2, 4) is ready after 4 bars
        assert not session.fake.state()["fills"]
        # executor start: the next bar opens the long
        api("POST", "/api/executor/start", expect=202)
        assert api("GET", "/api/executor")["entries_enabled"] is True
        session.step(1)
        opened = session.wait_until(lambda st: position(st) > 0, "the long opened")
        (row,) = api_until("/api/positions", lambda a: a["positions"], "the position in the API")["positions"]
        assert row["symbol"] == "BTCUSDT" and row["side"] == "LONG" and row["strategy_id"] == "EmaCross-000"
        assert row["quantity"] == pytest.approx(position(opened)) and row["entry_price"] > 0
        assert row["last_price"] > 0 and row["unrealized_pnl"] is not None
        assert row["stop_loss"] is None and row["take_profits"] == []  # no Exit Brain in this config
        assert len(row["trace_id"]) == 16 and int(row["trace_id"], 16) >= 0  # the entry decision's trace id

        # ESS trip: the risk view shows it latched and entries halted; a closed symbol stays flat while tripped
        api("POST", "/api/ess/trip", {"reason": "drill"}, expect=202)
        risk = api("GET", "/api/risk", expect=200)
        assert risk["ess"]["tripped"] is True and risk["ess"]["code"] == "manual"
        assert "manual trip by api: drill" in risk["ess"]["reason"] and risk["ess"]["since"]
        assert risk["trading_state"] == "REDUCING" and risk["equity"] > 0 and risk["exposure_pct"] > 0
        api("POST", "/api/positions/BTCUSDT/close", {"reason": "drill"}, expect=202)
        session.wait_until(lambda st: position(st) == 0, "BTCUSDT flat at the fake")
        fills = len(session.fake.state()["fills"])
        session.step(2)  # the EMA still wants long: the halted risk engine denies the entry
        assert position(session.fake.state()) == 0 and len(session.fake.state()["fills"]) == fills
        # reset: entries again
        api("POST", "/api/ess/reset", {"reason": "drill over"}, expect=202)
        risk = api("GET", "/api/risk", expect=200)
        assert risk["ess"]["tripped"] is False and risk["trading_state"] == "ACTIVE"
        session.step(1)
        session.wait_until(lambda st: position(st) > 0, "the long opened again after the reset")
        api("POST", "/api/positions/close-all", expect=202)
        session.wait_until(lambda st: position(st) == 0, "every position flat at the fake")

        daily = api_until("/api/stats/daily", lambda a: a["trades"] == 2, "the two closed longs in the stats")
        assert daily["period"] == "daily" and daily["from"] < daily["to"]
        assert daily["wins"] + (daily["trades"] - daily["wins"]) == 2 and daily["commissions"] > 0
        assert api("GET", "/api/stats/weekly", expect=200)["trades"] == 2
        assert len(api("GET", "/api/equity", expect=200)["points"]) >= 8  # one per bar close
        assert api("GET", "/api/signals", expect=200) == {"signals": []}  # the EMA publishes no Signals

        # models: the registry's one version, promoted then demoted
        models = api("GET", "/api/models", expect=200)
        assert models["loaded"] == 0 and [(m["id"], m["production"]) for m in models["models"]] == [
            (model_id, False)
        ]
        assert models["models"][0]["verdict"] == "healthy"
        promoted = api("POST", f"/api/models/{model_id}/promote", expect=202)
        assert promoted["command"]["action"] == "promote" and promoted["command"]["target"] == model_id
        assert ModelRegistry(tmp_path / "models").production("xgboost") == model_id
        assert api("GET", "/api/models")["models"][0]["production"] is True
        api("POST", "/api/models/xgboost/demote", expect=202)
        assert ModelRegistry(tmp_path / "models").production("xgboost") is None
        assert (
            "unknown model id 'xgboost-nope'"
            in api("POST", "/api/models/xgboost-nope/promote", expect=422)["error"]
        )
        assert "allowed: xgboost" in api("POST", "/api/models/gbm/demote", expect=422)["error"]

        # retrain: `qt train <retrain_config>` runs beside the node, its log in a new folder
        job = api("POST", "/api/models/retrain", {"kind": None}, expect=202)
        assert job["command"]["action"] == "retrain" and job["pid"] > 0
        log = Path(job["log"])
        deadline = time.monotonic() + 30
        while "no-such-train.yaml" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the retrain never ran qt train on its config"
            time.sleep(0.2)
        returncode = session.stop(timeout=30)
        output = session.output()
    assert returncode == 0, output[-3000:]
    for command in (
        "executor_stop",
        "executor_start",
        "trip",
        "reset",
        "close BTCUSDT",
        "close *",
        "promote",
    ):
        assert f"Operator command from the control API: {command}" in output
    assert "Entries stopped (open positions keep their exits) by api: drill" in output
    for text in (output, *answers, log.read_text()):
        assert TOKEN not in text and "SENTINEL" not in text

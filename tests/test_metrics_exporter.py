"""The Prometheus exporter actor: a tiny backtest with the exporter in its `actors:` list, scraped over HTTP.

The backtest trades EmaCross on two symbols (orders, fills, closed positions), a small Injector publishes a
BarCloseSignals batch, a degraded HealthEvent and an operator trip at given times, and the real EmergencyStop
latches that trip. The exporter serves /metrics on a free loopback port (`port: 0`); the test scrapes it like
Prometheus would and checks the names and values.
"""

import math
import urllib.request

import numpy as np
import pandas as pd
import pytest
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import InstrumentId, Venue
from prometheus_client.parser import text_string_to_metric_families

from actors.equity_recorder import account_equity
from actors.metrics_exporter import MetricsExporter, MetricsExporterConfig
from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from quantum_trader.events import BarCloseSignals, HealthEvent, OperatorCommand
from tests.conftest import build_catalog, candles, fills_of, random_walk

SPEC_METRICS = (
    "qt_trades_total",
    "qt_positions_count",
    "qt_pnl_total",
    "qt_win_rate",
    "qt_model_predictions_total",
    "qt_model_latency_seconds",
    "qt_signal_confidence",
    "qt_drawdown_pct",
    "qt_exposure_pct",
    "qt_emergency_brake",
    "qt_models_loaded",
)
SIGNALS_AT = pd.Timestamp("2025-01-01 10:00", tz="UTC")  # a bar close


class InjectorConfig(ActorConfig, frozen=True):
    symbols: tuple[str, ...] = ()


class Injector(Actor):
    """A signal batch at SIGNALS_AT (just after that close's bars), a degraded health event, a late trip."""

    def on_start(self) -> None:
        self.clock.set_time_alert("signals", SIGNALS_AT + pd.Timedelta(seconds=1), self._signals)
        self.clock.set_time_alert("health", SIGNALS_AT + pd.Timedelta(hours=1), self._health)
        # before the last bar close: a tripped stop refuses entries, and the run should end holding a position
        self.clock.set_time_alert("trip", pd.Timestamp("2025-01-02 23:57", tz="UTC"), self._trip)

    def _now(self) -> dict:
        now = self.clock.timestamp_ns()
        return {"ts_event": now, "ts_init": now}

    def _signals(self, _alert) -> None:
        ids = [InstrumentId.from_str(f"{s}-PERP.BINANCE") for s in self.config.symbols]
        n = len(ids)
        batch = BarCloseSignals(
            ts_event=SIGNALS_AT.value,
            ts_init=self.clock.timestamp_ns(),
            instrument_ids=ids,
            direction=np.array([1, 0][:n], dtype=np.int8),
            confidence=np.array([0.8, 0.3][:n]),
            prob_up=np.array([0.7, 0.5][:n]),
            forecast=np.array([0.001, 0.0][:n]),
            votes={
                "xgboost": np.array([0.5, 0.1][:n]),
                "lightgbm": np.array([0.4, -0.1][:n]),
                "nhits": np.array([0.2, 0.0][:n]),
                "patchtst": np.array([np.nan, np.nan][:n]),  # not in this ensemble: no votes counted
            },
            model_ids="xgb-1,lgbm-1,nhits-1",
            features_hash="abc",
        )
        self.publish_data(DataType(BarCloseSignals), batch)

    def _health(self, _alert) -> None:
        event = HealthEvent(component="redis", status="degraded", reason="test", **self._now())
        self.publish_data(DataType(HealthEvent), event)

    def _trip(self, _alert) -> None:
        command = OperatorCommand(action="trip", reason="test", operator="ops", **self._now())
        self.publish_data(DataType(OperatorCommand), command)


class QuietExporterConfig(MetricsExporterConfig, frozen=True):
    pass


class QuietExporter(MetricsExporter):
    """A second exporter in the same run (its own actor id), with the default config: nothing served."""


class DisabledExporterConfig(MetricsExporterConfig, frozen=True):
    pass


class DisabledExporter(MetricsExporter):
    """A third one with `enabled: false`: subscribes to nothing, so its registry stays at its start values."""


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return parse(response.read().decode())


SYMBOLS = ("AAAUSDT", "BBBUSDT")
EXPORTERS = (
    {"path": "actors.metrics_exporter:MetricsExporter", "config": {"port": 0}},
    {"path": "tests.test_metrics_exporter:QuietExporter"},  # the default: no port
    {"path": "tests.test_metrics_exporter:DisabledExporter", "config": {"enabled": False}},
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    frames = {s: candles(random_walk(576, seed=i)) for i, s in enumerate(SYMBOLS)}  # two days of 5m bars
    return build_catalog(tmp_path_factory.mktemp("metrics") / "catalog", frames).path


def backtest_config(catalog, exporters=EXPORTERS):
    return parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "all"},
            "venue": {"slippage_bps": 0, "funding": False},
            "strategies": [
                {"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": 4, "slow_period": 16}}
            ],
            "actors": [
                {"path": "tests.test_metrics_exporter:Injector", "config": {"symbols": list(SYMBOLS)}},
                {"path": "actors.emergency_stop:EmergencyStop"},
                *exporters,
            ],
            "report": {"tearsheet": False},
        }
    )


@pytest.fixture(scope="module")
def run(catalog):
    cfg = backtest_config(catalog)
    result = run_backtest(cfg, progress=False)
    actors = result.engine.trader.actors()
    (served,) = [a for a in actors if type(a) is MetricsExporter]
    (quiet,) = [a for a in actors if isinstance(a, QuietExporter)]
    try:
        yield result, served, quiet, scrape(served.bound_port)
    finally:
        for actor in actors:
            if isinstance(actor, MetricsExporter):
                actor.close()


def value(metrics, name: str, **labels) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def test_every_spec_metric_is_served_over_http_on_loopback(run):
    _, served, _, metrics = run
    assert served._server.server_address[0] == "127.0.0.1"
    names = {name for name, _ in metrics}
    for name in SPEC_METRICS:
        assert any(n == name or n.startswith(f"{name}_") for n in names), name
    for extra in ("qt_orders_total", "qt_order_rejects_total", "qt_last_bar_timestamp_seconds"):
        assert extra in names


def test_trades_pnl_and_win_rate_match_the_closed_positions(run):
    result, _, _, metrics = run
    closed = [p for p in result.engine.cache.positions_closed()]
    snapshots = result.engine.cache.position_snapshots()
    # a netting position closed and reopened is snapshotted at each close: every close counts once
    pnls = [p.realized_pnl.as_double() for p in [*snapshots, *closed]]
    assert len(pnls) > 5
    assert value(metrics, "qt_trades_total") == len(pnls)
    assert value(metrics, "qt_win_rate") == pytest.approx(sum(p > 0 for p in pnls) / len(pnls))
    assert value(metrics, "qt_pnl_realized") == pytest.approx(sum(pnls), abs=1e-6)
    open_positions = result.engine.cache.positions_open()
    assert value(metrics, "qt_positions_count") == len(open_positions)
    assert value(metrics, "qt_exposure_pct") > 0  # an open position at the end: the check below is not 0 == 0
    assert 0 <= value(metrics, "qt_drawdown_pct") < 100
    equity = account_equity(result.engine.portfolio, Venue("BINANCE"))
    assert value(metrics, "qt_equity") == pytest.approx(equity)
    gross = sum(
        abs(result.engine.portfolio.net_exposure(p.instrument_id).as_double()) for p in open_positions
    )
    assert value(metrics, "qt_exposure_pct") == pytest.approx(100 * gross / equity)
    assert value(metrics, "qt_pnl_total") == pytest.approx(
        sum(pnls)
        + sum(p.as_double() for p in result.engine.portfolio.unrealized_pnls(Venue("BINANCE")).values())
    )


def test_order_counters_and_the_order_latency_histogram(run):
    result, _, _, metrics = run
    filled = sum(
        len([e for e in o.events if type(e).__name__ == "OrderFilled"]) for o in result.engine.cache.orders()
    )
    assert value(metrics, "qt_orders_total", event="filled") == filled > 0
    assert value(metrics, "qt_orders_total", event="submitted") == len(result.engine.cache.orders())
    assert value(metrics, "qt_order_rejects_total") == 0
    assert value(metrics, "qt_order_latency_seconds_count") > 0
    assert value(metrics, "qt_order_latency_seconds_sum") == 0  # a backtest's venue answers at once


def test_signal_batch_predictions_confidence_models_and_decision_latency(run):
    *_, metrics = run
    assert value(metrics, "qt_model_predictions_total", model="xgboost") == 2
    assert value(metrics, "qt_model_predictions_total", model="nhits") == 2
    assert ("qt_model_predictions_total", (("model", "patchtst"),)) not in metrics
    assert value(metrics, "qt_signals_total", direction="LONG") == 1
    assert value(metrics, "qt_signals_total", direction="FLAT") == 1
    assert value(metrics, "qt_signal_confidence", symbol="AAAUSDT-PERP") == pytest.approx(0.8)
    assert value(metrics, "qt_models_loaded") == 3
    assert value(metrics, "qt_model_latency_seconds_count") == 1
    assert 0 <= value(metrics, "qt_model_latency_seconds_sum") < 5


def test_emergency_stop_health_and_data_freshness(run):
    result, *_, metrics = run
    assert value(metrics, "qt_emergency_brake") == 1
    assert value(metrics, "qt_emergency_trips_total", code="manual") == 1
    assert value(metrics, "qt_risk_events_total", source="emergency_stop", action="trip", code="manual") == 1
    assert value(metrics, "qt_health_status", component="redis") == 1
    last = max(result.engine.cache.bar(bt).ts_event for bt in result.universe.bar_types)
    assert value(metrics, "qt_last_bar_timestamp_seconds") == last / 1e9
    assert 0 <= value(metrics, "qt_data_age_seconds") <= 300


def test_without_a_port_nothing_is_served_but_the_registry_has_the_same_values(run):
    _, served, quiet, metrics = run
    assert quiet.bound_port is None and quiet._server is None
    quiet_metrics = {
        key: v
        for key, v in parse(quiet.exposition()).items()
        if not key[0].endswith("_created") and not key[0].startswith("qt_model_latency")  # wall-clock
    }
    for key, v in quiet_metrics.items():
        assert v == pytest.approx(metrics[key], nan_ok=True), key


def test_the_exporters_change_no_fill_of_the_backtest(run, catalog):
    result, *_ = run
    without = run_backtest(backtest_config(catalog, exporters=()), progress=False)

    assert fills_of(result.engine) == fills_of(without.engine) != []


def test_a_taken_port_stops_the_run_with_an_error_naming_host_and_port(tmp_path):
    import socket

    catalog = build_catalog(tmp_path / "catalog", {"AAAUSDT": candles(random_walk(50, seed=1))}).path
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = parse_backtest_config(
            {
                "catalog": str(catalog),
                "universe": {"select": "all"},
                "venue": {"funding": False},
                "strategies": [{"path": "strategies.buy_hold:BuyHold"}],
                "actors": [{"path": "actors.metrics_exporter:MetricsExporter", "config": {"port": port}}],
                "report": {"tearsheet": False},
            }
        )
        with pytest.raises(
            OSError, match=f"cannot serve /metrics on 127.0.0.1:{port}: Address already in use"
        ):
            run_backtest(cfg, progress=False)


def test_a_disabled_exporter_subscribes_to_nothing_and_a_bad_port_is_refused(run):
    result, *_ = run
    (disabled,) = [a for a in result.engine.trader.actors() if isinstance(a, DisabledExporter)]
    metrics = parse(disabled.exposition())
    assert disabled.bound_port is None
    assert value(metrics, "qt_orders_total", event="filled") == 0
    assert math.isnan(value(metrics, "qt_last_bar_timestamp_seconds"))
    assert math.isnan(value(metrics, "qt_win_rate"))
    with pytest.raises(ValueError, match="port"):
        MetricsExporter(MetricsExporterConfig(port=70000))


# ---- live: `qt live` on the fake exchange, scraped while it runs --------------------------------------------
def test_a_live_node_on_the_fake_exchange_serves_its_metrics_while_it_trades(tmp_path):
    """`qt live configs/live/fake_exchange.yaml` (the example's exporter entry, on a free port) against
    `live/fake_exchange`: /metrics answers from another process while the node trades, with the fill, the open
    position, a real order round trip and the newest kline's close time."""
    import time
    from pathlib import Path

    import yaml

    from tests.conftest import free_port
    from tests.fake_session import live_session

    history = 10
    closes = np.concatenate([np.full(history, 100.0), np.linspace(100.0, 110.0, 10)])
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(np.round(closes, 4))})
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * history)
    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "configs" / "live" / "fake_exchange.yaml").read_text())
    (exporter,) = [a for a in config["actors"] if a["path"] == "actors.metrics_exporter:MetricsExporter"]
    port = exporter["config"]["port"] = free_port()
    for actor in config["actors"]:  # the example's other servers (the control API): a free port, not theirs
        if actor is not exporter and "port" in actor.get("config", {}):
            actor["config"]["port"] = 0
    with live_session(tmp_path, tmp_path / "catalog", ["BTCUSDT"], start, config) as session:
        session.wait_until(lambda st: "btcusdt@kline_5m" in st["subscriptions"], "the node subscribed", 30)
        before = scrape(port)
        session.step(8)  # EmaCross(2, 4) is ready after 4 bars and goes long on the rise
        deadline = time.monotonic() + 10
        while True:
            metrics = scrape(port)
            if value(metrics, "qt_orders_total", event="filled") >= 1 and value(
                metrics, "qt_positions_count"
            ):
                break
            assert time.monotonic() < deadline, "no fill in the metrics"
            time.sleep(0.2)
        returncode = session.stop(timeout=30)
        output = session.output()
    assert returncode == 0, output[-3000:]
    assert f"Serving /metrics on http://127.0.0.1:{port}/metrics" in output
    assert value(before, "qt_orders_total", event="filled") == 0
    assert math.isnan(value(before, "qt_last_bar_timestamp_seconds"))
    assert value(metrics, "qt_positions_count") == 1
    assert value(metrics, "qt_order_latency_seconds_count") >= 1
    assert 0 < value(metrics, "qt_order_latency_seconds_sum") < 5  # a real HTTP round trip to the fake
    last_close = value(metrics, "qt_last_bar_timestamp_seconds")
    assert abs(last_close - time.time()) < 3600  # the fake stamps its klines on the wall clock's 5m grid
    assert value(metrics, "qt_emergency_brake") == 0
    assert math.isfinite(value(metrics, "qt_equity")) and value(metrics, "qt_exposure_pct") > 0
    assert "[ERROR]" not in output, [line for line in output.splitlines() if "[ERROR]" in line]

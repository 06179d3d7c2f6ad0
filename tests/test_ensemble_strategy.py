"""EnsembleStrategy: batched online scoring, Signal events, degraded ensembles, replay of batch signals; models
that learned nothing are neither promoted nor allowed to vote."""

import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from backtests.config import parse_backtest_config
from backtests.report import fingerprint, write_report
from backtests.runner import run_backtest
from catalog.instruments import instrument_id
from catalog.store import CatalogStore
from ml.dataset import SymbolBars, full_windows, load_symbol_bars
from ml.ensemble import DEFAULT_WEIGHTS, Ensemble, EnsembleError, Member, load_ensemble
from ml.features import compute_features
from ml.models.base import ForecastModel
from ml.registry import ModelRegistry
from ml.research import batch_signals, read_signal_table, write_signals
from ml.train import TrainConfig, train
from quantum_trader.cli import main as cli_main
from quantum_trader.config import ConfigError
from quantum_trader.events import Signal
from tests.conftest import (
    SMALL_ENSEMBLE_MODELS,
    SMALL_ENSEMBLE_SYMBOLS,
    build_catalog,
    candles,
    random_walk,
    train_small_ensemble,
)

SYMBOLS = SMALL_ENSEMBLE_SYMBOLS
TINY_MODELS = SMALL_ENSEMBLE_MODELS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-symbol catalog and all four models trained on it (each beats the zero forecast on validation),
    registered and promoted."""
    root = tmp_path_factory.mktemp("ensemble")
    return root, train_small_ensemble(root)


def backtest_config(root, **strategy) -> dict:
    return {
        "name": "ens",
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "strategies": [
            {
                "path": "strategies.ensemble:EnsembleStrategy",
                "config": {"registry": str(root / "models"), "entry_threshold": 0.3, **strategy},
            }
        ],
        "report": {"tearsheet": False},
    }


def run(cfg: dict):
    return run_backtest(parse_backtest_config(cfg), progress=False)


def fills_of(artifacts) -> pd.DataFrame:
    return artifacts.engine.trader.generate_order_fills_report()


@pytest.fixture(scope="module")
def online(trained):
    root, _ = trained
    return run(backtest_config(root))


def test_training_registers_and_promotes_every_model(trained):
    root, result = trained
    assert set(result.model_ids) == {"xgboost", "lightgbm", "nhits", "patchtst"}
    assert ModelRegistry(root / "models")._read_registry()["production"] == result.model_ids
    statuses = {kind: skill["status"] for kind, skill in result.skill.items()}
    assert statuses == dict.fromkeys(TINY_MODELS, "healthy")
    assert result.not_promoted == {} and result.ensemble_missing == {}
    assert set(result.metrics) >= {"xgboost", "ensemble", "zero", "last"}
    assert (trained[0] / "train" / "predictions.png").stat().st_size > 10_000


def test_every_scored_bar_is_a_signal_published_on_the_bus_traded_or_not(online):
    signals = online.signals.frame()
    strategy = online.strategies[0]
    assert len(signals) == strategy.signals_published > 0
    # each symbol is scored on every bar once its 64-row window of finite features is full (bar 300 + 63),
    # except the last bar: its batch time (close + 500 ms) is after the end of the run
    assert signals.groupby("instrument_id").size().to_dict() == {
        str(instrument_id(s)): 1400 - 299 - 63 - 1 for s in SYMBOLS
    }
    assert set(signals["direction"]) <= {"LONG", "SHORT", "FLAT"}
    assert signals["confidence"].between(0, 1).all()
    assert signals[["vote_xgboost", "vote_lightgbm", "vote_nhits", "vote_patchtst"]].notna().all().all()
    assert (signals["model_ids"].str.count(",") == 3).all()
    assert 0 < strategy.entries <= (signals["confidence"] >= 0.3).sum()


def test_the_report_joins_each_traded_signal_to_its_orders_by_trace_id(online, tmp_path):
    from nautilus_trader.model.identifiers import InstrumentId

    from quantum_trader.trace import trace_id

    write_report(online, tmp_path / "report")
    strategy = online.strategies[0]
    signals = pd.read_parquet(tmp_path / "report" / "signals.parquet")
    traded = signals[signals["trace_id"] != ""]
    assert len(traded) == strategy.entries > 0  # one signal per entry; the rest carry none
    assert (traded["direction"] != "FLAT").all()
    for row in traded.itertuples():  # the id is the Signal's own (strategy, instrument, bar close)
        close = row.ts_event.value
        assert row.trace_id == trace_id(strategy.id, InstrumentId.from_str(row.instrument_id), close)
    orders = pd.read_csv(tmp_path / "report" / "orders.csv")
    entries = orders[orders["tags"].str.contains("'ENTRY'")]
    assert sorted(entries["trace_id"]) == sorted(traded["trace_id"])
    # every order and fill belongs to a traded signal, and each exit carries its position's entry trace
    assert set(orders["trace_id"]) == set(traded["trace_id"])
    fills = pd.read_csv(tmp_path / "report" / "fills.csv")
    exits = pd.read_csv(tmp_path / "report" / "exits.csv")
    assert set(fills["trace_id"]) <= set(traded["trace_id"]) and set(exits["trace_id"]) <= set(
        traded["trace_id"]
    )
    assert len(exits) > 0


def test_symbols_closing_together_are_scored_in_one_batch_after_the_close(online):
    signals = online.signals.frame()
    per_time = signals.groupby("ts_event")["instrument_id"].nunique()
    assert (per_time == len(SYMBOLS)).all()
    assert ((signals["ts_init"] - signals["ts_event"]) == pd.Timedelta(milliseconds=500)).all()


def test_batch_signals_equal_the_online_ones_exactly(trained, online):
    root, _ = trained
    store = CatalogStore(root / "catalog")
    bar_types = online.universe.bar_types
    ensemble = load_ensemble(
        str(root / "models"), [f"{k}:production" for k in TINY_MODELS], online.strategies[0].config.weights
    )
    bars = load_symbol_bars(store.path, bar_types)
    batch = batch_signals(ensemble, bars, [bt.instrument_id for bt in bar_types], end_ns=online.end.value)
    batch_frame = pd.DataFrame([{**s.to_dict(), "instrument_id": str(s.instrument_id)} for s in batch])
    online_frame = online.signals.frame()
    batch_frame["ts_event"] = pd.to_datetime(batch_frame["ts_event"], utc=True)
    batch_frame["ts_init"] = pd.to_datetime(batch_frame["ts_init"], utc=True)
    pd.testing.assert_frame_equal(
        batch_frame[online_frame.columns].reset_index(drop=True),
        online_frame.reset_index(drop=True),
        check_exact=True,
    )


def test_replaying_stored_signals_gives_the_same_trades(trained, online, tmp_path):
    root, _ = trained
    catalog = tmp_path / "catalog"
    shutil.copytree(root / "catalog", catalog)
    bar_types = online.universe.bar_types
    ensemble = online.strategies[0].ensemble
    ids = [b.instrument_id for b in bar_types]
    write_signals(
        catalog, batch_signals(ensemble, load_symbol_bars(catalog, bar_types), ids, end_ns=online.end.value)
    )
    cfg = backtest_config(root, signal_source="catalog") | {"catalog": str(catalog)}
    replayed = run(cfg)
    assert len(replayed.signals) == len(online.signals)
    assert len(fills_of(online)) > 0
    assert fingerprint(fills_of(replayed)) == fingerprint(fills_of(online))


def test_qt_signals_then_a_replay_trades_the_same_as_scoring_online(trained, online, tmp_path, capsys):
    root, _ = trained
    catalog = tmp_path / "catalog"
    shutil.copytree(root / "catalog", catalog)
    config = tmp_path / "ens.yaml"
    config.write_text(yaml.safe_dump(backtest_config(root) | {"catalog": str(catalog)}))
    assert cli_main(["signals", str(config), "--no-progress"]) == 0
    assert f"{len(online.signals):,} signals" in capsys.readouterr().out

    def key(signal):
        return signal.ts_init, signal.instrument_id.value

    stored = [d.data for d in ParquetDataCatalog(str(catalog)).custom_data(Signal)]  # Nautilus reads them
    assert sorted(stored, key=key) == sorted(batch_signals_of(online, catalog), key=key)

    recorded = online.signals.frame()
    mid = recorded["ts_init"].iloc[len(recorded) // 2]
    later = read_signal_table(catalog, start=mid)
    assert len(later) == (recorded["ts_init"] >= mid).sum()  # a period reads only its own decisions

    replay = backtest_config(root, signal_source="catalog") | {"catalog": str(catalog)}
    replayed = run(replay)
    assert len(replayed.signals) == len(online.signals)
    pd.testing.assert_frame_equal(replayed.signals.frame(), online.signals.frame(), check_exact=True)
    assert fingerprint(fills_of(replayed)) == fingerprint(fills_of(online))
    stats = write_report(replayed, tmp_path / "replay-report")
    assert stats["models"] == sorted(m.model_id for m in online.strategies[0].ensemble.members)

    # stored signals are never overwritten by accident
    assert cli_main(["signals", str(config), "--no-progress"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert cli_main(["signals", str(config), "--no-progress", "--replace"]) == 0
    assert fingerprint(fills_of(run(replay))) == fingerprint(fills_of(online))


def batch_signals_of(online, catalog) -> list[Signal]:
    bar_types = online.universe.bar_types
    ids = [b.instrument_id for b in bar_types]
    bars = load_symbol_bars(catalog, bar_types)
    return batch_signals(online.strategies[0].ensemble, bars, ids, end_ns=online.end.value)


def test_a_replay_without_stored_signals_names_the_command_that_writes_them(trained):
    root, _ = trained
    with pytest.raises(ConfigError, match="qt signals"):
        run(backtest_config(root, signal_source="catalog"))


def test_the_metrics_exporter_counts_every_vote_and_batch_and_changes_no_fill(trained, online):
    """actors/metrics_exporter.py in the same run: its counters match the recorded signals, one decision-latency
    observation per batch, and the trades are those of the run without it."""
    from actors.metrics_exporter import MetricsExporter
    from quantum_trader.events import MODEL_KINDS

    cfg = backtest_config(trained[0]) | {"actors": [{"path": "actors.metrics_exporter:MetricsExporter"}]}
    with_metrics = run(cfg)
    (exporter,) = [a for a in with_metrics.engine.trader.actors() if isinstance(a, MetricsExporter)]
    metrics = {
        (s.name, tuple(s.labels.values())): s.value
        for family in exporter.registry.collect()
        for s in family.samples
    }
    signals = online.signals.frame()
    for kind in MODEL_KINDS:
        assert metrics[("qt_model_predictions_total", (kind,))] == signals[f"vote_{kind}"].notna().sum() > 0
    assert sum(v for (name, _), v in metrics.items() if name == "qt_signals_total") == len(signals)
    assert metrics[("qt_models_loaded", ())] == 4
    assert metrics[("qt_model_latency_seconds_count", ())] == signals["ts_event"].nunique()
    assert 0 < metrics[("qt_model_latency_seconds_sum", ())] / signals["ts_event"].nunique() < 1
    assert metrics[("qt_trades_total", ())] > 0
    assert fingerprint(fills_of(with_metrics)) == fingerprint(fills_of(online))


def test_same_config_same_trades(trained, online):
    again = run(backtest_config(trained[0]))
    assert fingerprint(fills_of(again)) == fingerprint(fills_of(online))


def test_a_model_that_fails_to_load_leaves_the_rest_renormalised(trained, tmp_path):
    root, result = trained
    registry = tmp_path / "models"
    shutil.copytree(root / "models", registry)
    victim = next((registry / "nhits").glob("nhits-*"))
    (victim / "model.pt").write_bytes(b"not a torch file")
    cfg = backtest_config(root)
    cfg["strategies"][0]["config"]["registry"] = str(registry)
    degraded = run(cfg)
    ensemble = degraded.strategies[0].ensemble
    assert ensemble.kinds == ["xgboost", "lightgbm", "patchtst"]
    assert "checksum" in ensemble.missing["nhits"]
    assert ensemble.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ensemble.weights, np.array([0.25, 0.25, 0.20]) / 0.70)
    signals = degraded.signals.frame()
    assert len(signals) > 0 and signals["vote_nhits"].isna().all()


def test_no_loadable_model_refuses_to_start(trained, tmp_path):
    cfg = backtest_config(trained[0])
    cfg["strategies"][0]["config"]["registry"] = str(tmp_path / "empty")
    with pytest.raises((EnsembleError, ConfigError), match="no usable model, refusing to start"):
        run(cfg)


def rally_then_fall(n: int, seed: int, turn: int) -> np.ndarray:
    """+0.05% a bar up to bar `turn`, -0.05% after it, plus noise: what training learns is wrong afterwards."""
    rng = np.random.default_rng(seed)
    drift = np.where(np.arange(n) < turn, 0.0005, -0.0005)
    return np.round(100 * np.exp(np.cumsum(drift + rng.normal(0, 0.001, n))), 4)


@pytest.fixture(scope="module")
def learned_nothing(trained, tmp_path_factory):
    """`qt train` (promote: true) into a copy of the trained registry, on a market that turns down where
    validation starts: its XGBoost carries the rally (worse than the zero forecast on validation) and its
    LightGBM, allowed no split, forecasts a constant."""
    root = tmp_path_factory.mktemp("learned-nothing")
    shutil.copytree(trained[0] / "models", root / "models")
    frames = {s: candles(rally_then_fall(1400, seed=30 + i, turn=1100)) for i, s in enumerate(SYMBOLS)}
    build_catalog(root / "catalog", frames)
    models = {
        "xgboost": {"params": {"n_estimators": 30}},
        "lightgbm": {"params": {"n_estimators": 30, "min_data_in_leaf": 1_000_000}},
    }
    cfg = TrainConfig.model_validate(
        {
            "catalog": str(root / "catalog"),
            "universe": {"select": "all"},
            "dataset": {"max_train_rows": 2000, "max_eval_rows": 500},
            "models": models,
            "registry": str(root / "models"),
        }
    )
    return root, train(cfg, root / "train", progress=False)


def test_training_registers_but_never_promotes_a_model_that_learned_nothing(trained, learned_nothing):
    root, result = learned_nothing
    registry = ModelRegistry(root / "models")
    assert registry._read_registry()["production"] == trained[1].model_ids  # the earlier models stay
    skill = result.skill
    assert skill["xgboost"]["status"] == "no-skill" and skill["xgboost"]["pred_std"] > 1e-4
    assert skill["xgboost"]["mse"] > 2 * skill["xgboost"]["zero_mse"]
    assert skill["lightgbm"]["status"] == "constant" and skill["lightgbm"]["pred_std"] < 1e-8
    for kind, model_id in result.model_ids.items():
        reason = f"{skill[kind]['status']} ({skill[kind]['reason']})"
        assert registry.show(model_id)["skill"] == skill[kind]
        assert result.not_promoted[kind] == (
            f"{model_id} is not made production: {reason}; {kind}:production stays {trained[1].model_ids[kind]}"
        )
        events = [(e["action"], e.get("reason")) for e in registry.history(kind) if e["id"] == model_id]
        assert events == [("register", None), ("refuse_promote", reason)]
        assert result.ensemble_missing[kind] == f"{model_id}: {reason}"
    assert "ensemble" not in result.metrics  # nothing left to combine


def test_a_model_worse_than_the_zero_forecast_is_left_out_of_the_vote(learned_nothing, caplog):
    root, result = learned_nothing
    worse = result.model_ids["xgboost"]
    refs = [worse, "lightgbm:production", "nhits:production", "patchtst:production"]
    ensemble = load_ensemble(str(root / "models"), refs, dict(DEFAULT_WEIGHTS))
    assert ensemble.kinds == ["lightgbm", "nhits", "patchtst"]
    assert ensemble.missing == {"xgboost": f"{worse}: no-skill ({result.skill['xgboost']['reason']})"}
    np.testing.assert_allclose(ensemble.weights, np.array([0.25, 0.30, 0.20]) / 0.75)
    assert "reduced model count: 3 of 4 models" in caplog.text


def test_with_no_usable_model_the_strategy_refuses_to_start(trained, learned_nothing):
    root, result = learned_nothing
    cfg = backtest_config(trained[0], models=list(result.model_ids.values()))
    cfg["strategies"][0]["config"]["registry"] = str(root / "models")
    message = (
        r"no usable model, refusing to start \(xgboost: xgboost-\S+: no-skill \(validation MSE .*\); "
        r"lightgbm: lightgbm-\S+: constant \(validation forecast std .* <= 1e-08: it learned nothing\)\)"
    )
    with pytest.raises((EnsembleError, ConfigError), match=message):
        run(cfg)


class ShapeSensitiveModel(ForecastModel):
    """Forecasts that move with the batch's size, as a float32 network's do where BLAS picks its kernel by the
    matrix's shape (the 7th digit on an AVX-512/AMX Xeon)."""

    kind = "nhits"
    lookback = 4

    def __init__(self):
        self.batch_sizes: list[int] = []

    def predict(self, windows):
        self.batch_sizes.append(len(windows))
        return windows[:, -1, 0].astype(np.float64) * (1.0 + 1e-7 * len(windows))

    fit = save = load = None


def test_a_batch_sensitive_model_gets_the_strategys_batches_in_the_research_path():
    # Three symbols, the third listed 100 bars later: the strategy scores every ready symbol of a bar close in
    # one call, in universe order; the research path must hand the model exactly those batches.
    frames = [candles(random_walk(800, seed=i)) for i in range(2)] + [
        candles(random_walk(700, seed=2), start="2025-01-01 08:20")
    ]
    bars = [
        SymbolBars(s, f, (f["date"] + pd.Timedelta("5min")).to_numpy("datetime64[ns]").astype(np.int64))
        for s, f in zip(SYMBOLS, frames, strict=True)
    ]
    model = ShapeSensitiveModel()
    skill = {"mse": 1.0e-4, "zero_mse": 1.1e-4, "pred_std": 0.01}  # a model that beat the zero forecast
    ensemble = Ensemble([Member("nhits", "nhits-test", model, 1.0, pred_std=0.01, skill=skill)])
    ids = [instrument_id(s) for s in SYMBOLS]
    signals = batch_signals(ensemble, bars, ids)

    per_close: dict[int, list] = {}
    for sb in bars:
        features = compute_features(sb.frame).to_numpy(dtype=np.float32)
        for row in np.flatnonzero(full_windows(features, model.lookback)):
            per_close.setdefault(int(sb.close_time[row]), []).append(features[row - 3 : row + 1])
    expected = [
        (ts, float(p)) for ts in sorted(per_close) for p in ensemble.vote(np.stack(per_close[ts])).prob_up
    ]
    assert [(s.ts_event, s.prob_up) for s in signals] == expected
    assert sorted(set(model.batch_sizes)) == [2, 3]  # before and after the third symbol's listing


def test_a_warmed_up_start_scores_and_trades_as_a_run_that_started_earlier(trained, online):
    """Live, the node requests `warmup_bars` of history at start (answered from the catalog here): its first
    bars are scored as if it had been running, and it trades exactly as a run that started on the history
    with `trade_start` at the same time."""
    root, _ = trained
    start = online.start + pd.Timedelta(minutes=5 * 900)
    history_start = start - pd.Timedelta(minutes=5 * 500)
    warm = run(backtest_config(root, warmup_bars=500) | {"period": {"start": start.isoformat()}})
    earlier = run(
        backtest_config(root, trade_start=start.isoformat())
        | {"period": {"start": history_start.isoformat()}}
    )

    warm_signals = warm.signals.frame()
    earlier_signals = earlier.signals.frame()
    after = earlier_signals[earlier_signals["ts_event"] >= start].reset_index(drop=True)
    # every symbol is scored from the first bar of the period (the one closing at its start), with the very
    # same numbers; the history's own signals were published at start, when it arrived
    first_close = warm_signals.loc[warm_signals["ts_init"] > start, "ts_event"].min()
    assert first_close == start
    pd.testing.assert_frame_equal(
        warm_signals[warm_signals["ts_event"] >= start].reset_index(drop=True), after, check_exact=True
    )
    warm_fills, earlier_fills = fills_of(warm), fills_of(earlier)
    assert len(warm_fills) > 0
    trade = ["instrument_id", "side", "type", "filled_qty", "avg_px", "ts_last", "tags"]
    pd.testing.assert_frame_equal(
        warm_fills[trade].reset_index(drop=True), earlier_fills[trade].reset_index(drop=True)
    )


class _LiveLikeClock:
    """What the batch alerts meet live (Nautilus' LiveClock): a fired alert's name stays taken (setting it
    again raised KeyError and terminated the node), and a cancel does not stop an alert already queued."""

    def __init__(self):
        self.now, self.names, self.queued = 0, set(), []

    def timestamp_ns(self) -> int:
        return self.now

    def set_time_alert_ns(self, name, due, callback):
        if name in self.names:
            raise KeyError(name)
        self.names.add(name)
        self.queued.append((SimpleNamespace(name=name, ts_event=due), callback))

    def cancel_timer(self, name):
        pass  # already on the event loop: it fires anyway

    def fire_next(self):
        event, callback = self.queued.pop(0)
        self.now = max(self.now, event.ts_event)
        callback(event)


def test_live_batch_alerts_survive_late_bars_and_a_cancelled_alert_that_still_fires():
    from strategies.ensemble import BatchLatency, EnsembleStrategy

    a, b = instrument_id("AAAUSDT"), instrument_id("BBBUSDT")
    batches = []
    strategy = SimpleNamespace(
        clock=_LiveLikeClock(), config=SimpleNamespace(batch_delay_ms=100), _slot={a: 0, b: 1}, _pending={},
        _batches=0, _batch_alert="", entries=0, submit_ns=0, _scored_at=0, batch_latency=BatchLatency(),
    )  # fmt: skip

    def run_batch():
        batches.append(sorted((s, bar.ts_event) for s, bar in strategy._pending.items()))
        strategy._pending = {}

    strategy._run_batch = run_batch
    strategy._on_batch = lambda event=None: EnsembleStrategy._on_batch(strategy, event)

    def arrive(iid, close, now):
        strategy.clock.now = now
        EnsembleStrategy.on_bar(
            strategy, SimpleNamespace(bar_type=SimpleNamespace(instrument_id=iid), ts_event=close)
        )

    arrive(a, 1000, now=5)  # due 100 ms after the arrival, not after the stamped close
    assert strategy.clock.queued[0][0].ts_event == 5 + 100_000_000
    strategy.clock.fire_next()
    arrive(b, 1000, now=200_000_000)  # late kline of the same close: a batch of its own, no KeyError
    strategy.clock.fire_next()
    assert batches == [[(0, 1000)], [(1, 1000)]]

    arrive(a, 2000, now=300_000_000)
    arrive(a, 3000, now=350_000_000)  # the next close before the alert: the held batch is scored at once
    assert batches[-1] == [(0, 2000)]
    strategy.clock.fire_next()  # the cancelled alert fires anyway: ignored, the new batch waits for its own
    assert batches[-1] == [(0, 2000)] and strategy._pending
    strategy.clock.fire_next()
    assert batches[-1] == [(0, 3000)] and not strategy._pending

"""Continuous learning (SPEC section 7): drift (PSI) against the training distribution, the ledger of matured
predictions and the promotion rule, retraining on data up to "now" only, and a short backtest in which the
CLM actor retrains, shadows the candidate and decides on it, with every decision an event in the report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from backtests.sandbox import with_run_local_registry
from ml.drift import bin_shares, drift, feature_distribution, psi
from ml.lifecycle import PredictionLedger, decide
from ml.registry import ModelRegistry
from ml.retrain import retrain_config, run_retrain
from ml.skill import assess
from tests.conftest import SMALL_ENSEMBLE_SYMBOLS, build_catalog, candles, reverting_walk

GBDT = ("xgboost", "lightgbm")
TINY = {"xgboost": {"params": {"n_estimators": 30}}, "lightgbm": {"params": {"n_estimators": 30}}}
HEALTHY_SKILL = assess(np.array([0.01, -0.01, 0.02, -0.02]), np.array([0.012, -0.011, 0.018, -0.021]))
NO_SKILL = assess(np.array([0.05, -0.05, 0.05, -0.05]), np.array([-0.01, 0.01, -0.01, 0.01]))


# ---- drift --------------------------------------------------------------------------------------------
def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference = feature_distribution(rng.normal(size=(20_000, 1)), ["x"])
    same = drift(reference, rng.normal(size=(5_000, 1)), ["x"])
    small = drift(reference, rng.normal(0.2, 1, size=(5_000, 1)), ["x"])
    large = drift(reference, rng.normal(1.0, 1, size=(5_000, 1)), ["x"])
    assert same["max"] < 0.01
    assert same["max"] < small["max"] < large["max"]
    assert large["max"] > 0.25 and large["feature"] == "x"


def test_psi_by_hand_and_an_empty_bin_stays_finite():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    assert math.isfinite(psi([0.5, 0.5], [0.0, 1.0]))
    assert bin_shares(np.array([0.0, 1.0, 2.0, 3.0]), [1.5]).tolist() == [0.5, 0.5]


def test_a_model_without_a_stored_distribution_has_no_reference_rather_than_a_crash():
    assert "no reference" in drift(None, np.zeros((10, 1)), ["x"])["reason"]
    assert "no reference" in drift({}, np.zeros((10, 1)), ["x"])["reason"]


# ---- ledger and promotion rule ------------------------------------------------------------------------
def ledger_with(n_bars: int, symbols: int, candidate_quality: float, production_quality: float, seed=1):
    """Bars of `symbols` random walks; each bar's production and shadow forecasts are the realised forward
    return mixed with noise (`quality` 1: the return itself, 0: pure noise)."""
    rng = np.random.default_rng(seed)
    horizon = 3
    logp = np.cumsum(rng.normal(0, 0.01, size=(n_bars + horizon, symbols)), axis=0)
    ledger = PredictionLedger(horizon)
    for t in range(n_bars + horizon):
        for s in range(symbols):
            ledger.observe_close(f"S{s}", t, math.exp(logp[t, s]))
            if t < n_bars:
                future = logp[t + horizon, s] - logp[t, s]
                noise = rng.normal(0, 0.02, size=2)
                production = production_quality * future + (1 - production_quality) * noise[0]
                shadow = candidate_quality * future + (1 - candidate_quality) * noise[1]
                ledger.add("production", f"S{s}", t, {"xgboost": production, "ensemble": 0.0})
                ledger.add("shadow", f"S{s}", t, {"xgboost": shadow})
    return ledger


def test_a_prediction_matures_only_after_the_horizon_with_the_realised_log_return():
    ledger = PredictionLedger(horizon=2)
    ledger.add("production", "A", 0, {"ensemble": 0.1})
    ledger.observe_close("A", 0, 100.0)
    ledger.observe_close("A", 1, 105.0)
    assert len(ledger) == 0  # one bar later the label is not known yet
    ledger.observe_close("A", 2, 110.0)
    row = ledger.matured().iloc[0]
    assert row["ts"] == 0 and row["production:ensemble"] == 0.1
    assert row["realised"] == pytest.approx(math.log(110 / 100))


def test_a_better_candidate_is_promoted_after_enough_matured_predictions_and_a_worse_one_is_not():
    better = ledger_with(60, 4, candidate_quality=0.8, production_quality=0.1).matured()
    worse = ledger_with(60, 4, candidate_quality=0.0, production_quality=0.8).matured()
    assert decide(better.iloc[:50], "xgboost", HEALTHY_SKILL, min_predictions=100).reason == "waiting"
    promoted = decide(better, "xgboost", HEALTHY_SKILL, min_predictions=100, margin=0.05)
    assert promoted.promote and promoted.candidate["ic"] > promoted.production["ic"] + 0.05
    assert promoted.candidate["n"] == 240
    refused = decide(worse, "xgboost", HEALTHY_SKILL, min_predictions=100)
    assert refused.ready and not refused.promote and "does not beat" in refused.reason


def test_a_candidate_that_fails_the_skill_rule_is_never_promoted_however_well_it_ranks():
    better = ledger_with(60, 4, candidate_quality=0.9, production_quality=0.0).matured()
    for skill in (NO_SKILL, None):
        d = decide(better, "xgboost", skill, min_predictions=100)
        assert not d.promote and "validation skill" in d.reason


def test_registry_notes_lifecycle_events_without_moving_production(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    registry.note("drift_alarm", "xgboost", None, psi=0.4, feature="rsi_14", at="2025-01-01T00:00:00+00:00")
    (entry,) = registry.history("xgboost")
    assert entry["action"] == "drift_alarm" and entry["psi"] == 0.4 and entry["previous"] is None
    assert registry.production("xgboost") is None


# ---- retraining on data up to "now" -------------------------------------------------------------------
BARS = 2600
TRAINED_UNTIL = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * 1400)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """3 mean-reverting symbols, 2600 bars from 2025-01-01; tiny GBDT production models trained on the
    first 1400 bars (registered and promoted); a small `qt train` config for the actor's retrains."""
    root = tmp_path_factory.mktemp("clm")
    frames = {s: candles(reverting_walk(BARS, seed=10 + i)) for i, s in enumerate(SMALL_ENSEMBLE_SYMBOLS)}
    build_catalog(root / "catalog", frames)
    train = {
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "dataset": {"max_train_rows": 2000, "max_eval_rows": 500},
        "models": TINY,
    }
    (root / "train.yaml").write_text(yaml.safe_dump(train))
    cfg = retrain_config(
        str(root / "train.yaml"),
        now=TRAINED_UNTIL,
        window=pd.Timedelta(minutes=5 * 1400),
        kinds=GBDT,
        registry=str(root / "models"),
    )
    result = run_retrain(cfg.model_dump(mode="json"), str(root / "initial"))
    registry = ModelRegistry(root / "models")
    for model_id in result["model_ids"].values():
        registry.promote(model_id)
    return root, frames


def test_a_retrain_uses_no_bar_after_now_and_registers_without_promoting(lab, tmp_path):
    root, frames = lab
    now = pd.Timestamp("2025-01-07", tz="UTC")
    planted = {s: f.copy() for s, f in frames.items()}
    spike = planted["AAAUSDT"]["date"].searchsorted(now)  # the first bar closing after now
    planted["AAAUSDT"].loc[spike : spike + 5, ["open", "high", "low", "close"]] *= (
        50.0  # a future no model may see
    )
    build_catalog(tmp_path / "catalog", planted)
    cfg = retrain_config(
        str(root / "train.yaml"),
        now=now,
        window=pd.Timedelta(days=3),
        kinds=("xgboost",),
        registry=str(tmp_path / "models"),
        catalog=str(tmp_path / "catalog"),
    )
    assert cfg.promote is False and cfg.period.end == now.to_pydatetime()
    result = run_retrain(cfg.model_dump(mode="json"), str(tmp_path / "report"))
    registry = ModelRegistry(tmp_path / "models")
    meta = registry.show(result["model_ids"]["xgboost"])
    assert pd.Timestamp(meta["data"]["end"]) <= now
    assert all(pd.Timestamp(t) < now for t in meta["data"]["boundaries"].values())
    assert meta["feature_distribution"]["edges"]  # the drift reference is stored at registration
    # a label reaching the planted bars would be ln(50) = 3.9; the largest one seen stays a normal return
    assert abs(meta["skill"]["zero_mse"]) < 1e-3
    assert registry.production("xgboost") is None  # registered, not promoted


# ---- the actor in a backtest --------------------------------------------------------------------------
def clm_backtest_config(root, **actor) -> dict:
    return {
        "name": "clm",
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "period": {"start": "2025-01-06", "end": "2025-01-07T04:30"},
        "run_local_registry": True,
        "strategies": [
            {
                "path": "strategies.ensemble:EnsembleStrategy",
                "config": {
                    "registry": str(root / "models"),
                    "models": ["xgboost:production", "lightgbm:production"],
                    "entry_threshold": 0.3,
                },
            }
        ],
        "actors": [
            {
                "path": "actors.clm:ContinuousLearningActor",
                "config": {
                    "registry": str(root / "models"),
                    "train_config": str(root / "train.yaml"),
                    "training_window_days": 5,
                    "retrain_every_hours": 20,  # features are warm (300 bars) from about 01-07 01:00
                    "drift_every_hours": 6,
                    "retrain_on_drift": False,
                    "performance_every_hours": 2,
                    "min_shadow_predictions": 30,
                    "training_latency_minutes": 30,
                    "wait_for_training": True,
                    **actor,
                },
            }
        ],
        "report": {"tearsheet": False},
    }


def test_a_clm_backtest_retrains_shadows_and_decides_with_every_step_in_the_report(lab, tmp_path):
    root, _ = lab
    history_before = ModelRegistry(root / "models").history()
    out = tmp_path / "run"
    # a margin of -1 promotes any candidate that passes the skill rule, so the hot swap is exercised
    config = clm_backtest_config(root, promotion_margin=-1.0)
    cfg = with_run_local_registry(parse_backtest_config(config), out)
    run = run_backtest(cfg, progress=False)
    stats = write_report(run, out)

    events = pd.read_csv(out / "model_events.csv")
    actions = events["action"].tolist()
    assert actions.count("retrain_started") == 1 and actions.count("retrain_done") == 2  # one job, two kinds
    assert actions.count("shadow_started") == 2
    decisions = events[events["action"].isin(["promoted", "promotion_refused"])]
    assert sorted(decisions["kind"]) == ["lightgbm", "xgboost"]  # each kind of the candidate was decided
    assert (decisions["action"] == "promoted").all()
    assert (decisions["n"] >= 30).all() and decisions["ic"].notna().all()
    assert "drift_check" in actions or "drift_alarm" in actions
    assert "performance" in actions
    # the candidate's decisions were recorded, flagged, and never traded
    shadow = pd.read_parquet(out / "shadow_signals.parquet")
    assert len(shadow) > 0 and shadow["shadow"].all()
    traded = pd.read_parquet(out / "signals.parquet")
    assert not traded["shadow"].any()
    assert not set(shadow["model_ids"]) & set(traded["model_ids"].iloc[:1])
    # a promotion swaps the model in the running strategy: its later decisions carry the promoted id
    for row in decisions[decisions["action"] == "promoted"].itertuples():
        later = traded[traded["ts_event"] > pd.Timestamp(row.ts_event)]
        assert later["model_ids"].str.contains(row.model_id).all()
    assert (out / "clm.png").stat().st_size > 0
    assert stats["model_lifecycle"]["shadow_signals"] == len(shadow)
    # the run-local registry holds the retrained versions and the history; the user's registry is untouched
    local = ModelRegistry(out / "registry")
    noted = {e["action"] for e in local.history()}
    assert {"retrain_started", "retrain_done"} <= noted
    assert "promote" in noted
    assert {local.production(k) for k in GBDT} == set(decisions["model_id"])
    assert ModelRegistry(root / "models").history() == history_before
    assert json.loads((out / "stats.json").read_text())["model_lifecycle"]["decisions"]


# ---- promotion and rollback by command ----------------------------------------------------------------
def registered_actor(registry_root):
    """The actor on a bare clock and bus (no engine): enough for its command handling."""
    from nautilus_trader.cache.cache import Cache
    from nautilus_trader.common.component import MessageBus, TestClock
    from nautilus_trader.model.identifiers import TraderId
    from nautilus_trader.portfolio.portfolio import Portfolio

    from actors.clm import ContinuousLearningActor, ContinuousLearningActorConfig

    clock, cache = TestClock(), Cache()
    msgbus = MessageBus(TraderId("TESTER-001"), clock)
    actor = ContinuousLearningActor(ContinuousLearningActorConfig(registry=str(registry_root)))
    actor.register_base(Portfolio(msgbus, cache, clock), msgbus, cache, clock)
    return actor


def command(action: str, target: str):
    from quantum_trader.events import OperatorCommand

    return OperatorCommand(action=action, target=target, operator="tester", ts_event=0, ts_init=0)


def test_promote_and_rollback_by_command_move_production_and_are_events(lab, tmp_path):
    import shutil

    root, _ = lab
    shutil.copytree(root / "models", tmp_path / "models")
    registry = ModelRegistry(tmp_path / "models")
    first = registry.production("xgboost")
    model, record = registry.load(first)
    meta = record.meta
    kwargs = {k: meta[k] for k in ("metrics", "data", "label", "training")}
    second = registry.register(model, skill=meta["skill"], **kwargs).id
    useless = registry.register(model, skill=NO_SKILL, **kwargs).id
    actor = registered_actor(tmp_path / "models")

    actor.on_data(command("promote", second))
    assert registry.production("xgboost") == second
    actor.on_data(command("promote", useless))  # fails ml.skill's rule: refused, production stays
    assert registry.production("xgboost") == second
    actor.on_data(command("rollback", "xgboost"))
    assert registry.production("xgboost") == first

    got = [(e.action, e.model_id, e.previous_id) for e in actor.events]
    assert got == [
        ("promoted", second, first),
        ("promotion_refused", useless, ""),
        ("rollback", first, second),
    ]
    actions = [e["action"] for e in registry.history("xgboost")]
    assert actions[-3:] == ["promote", "refuse_promote", "rollback"]

"""Walk-forward evaluation: no fold sees its test window, windows tile the period, trading stays inside them,
and a fold's models that learned nothing do not vote."""

import json

import numpy as np
import pandas as pd
import pytest

from backtests.config import parse_backtest_config
from backtests.runner import run_backtest
from backtests.walkforward import (
    RayOptions,
    ScheduleConfig,
    WalkForwardConfig,
    format_summary,
    plan_folds,
    run_walkforward,
)
from ml.registry import ModelRegistry
from quantum_trader.cli import main
from quantum_trader.config import ConfigError, parse_config
from tests.conftest import build_catalog, candles, reverting_walk
from tests.test_ensemble_strategy import rally_then_fall

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
BARS_PER_DAY = 288
START = pd.Timestamp("2025-01-01", tz="UTC")
TRAIN_DAYS, STEP_DAYS = 4, 1
FIVE_MIN = pd.Timedelta(minutes=5)
TINY = {"n_estimators": 30, "n_jobs": 1}  # one thread: the test machine is small and shared


def wf_config(root) -> dict:
    return {
        "name": "tiny",
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "train": {
            "dataset": {"max_train_rows": 2000, "max_eval_rows": 500},
            "models": {"xgboost": {"params": TINY}, "lightgbm": {"params": TINY}},
            "weights": {"xgboost": 0.5, "lightgbm": 0.5},
        },
        "schedule": {"train_days": TRAIN_DAYS, "retrain_every_days": STEP_DAYS},
        "strategy": {"entry_threshold": 0.3},
    }


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("walkforward")
    days = TRAIN_DAYS + 2 * STEP_DAYS  # two folds
    # a market the tiny trees can forecast, so every fold's models beat the zero forecast and vote
    frames = {s: candles(reverting_walk(days * BARS_PER_DAY, seed=20 + i)) for i, s in enumerate(SYMBOLS)}
    build_catalog(root / "catalog", frames)
    return root


@pytest.fixture(scope="module")
def wf(catalog_root):
    cfg = WalkForwardConfig.model_validate(wf_config(catalog_root))
    return run_walkforward(cfg, catalog_root / "run1", progress=False)


def test_folds_never_train_on_data_at_or_after_their_test_window(wf):
    registry = ModelRegistry(wf.out / "models")
    assert len(wf.folds) == 2
    for fold in wf.folds:
        f = fold.fold
        assert f.train_end == f.test_start
        assert f.train_start == f.test_start - pd.Timedelta(days=TRAIN_DAYS)  # sliding
        assert set(fold.model_ids) == {"xgboost", "lightgbm"}
        for model_id in fold.model_ids.values():
            meta = registry.show(model_id)
            data = meta["data"]
            assert pd.Timestamp(data["start"]) == f.train_start
            assert pd.Timestamp(data["end"]) <= f.test_start
            newest_anchor = max(pd.Timestamp(v) for k, v in data["boundaries"].items() if k.endswith("_end"))
            assert newest_anchor + meta["label"]["horizon"] * FIVE_MIN < f.test_start  # its label too
            assert newest_anchor >= f.test_start - pd.Timedelta(hours=3)  # and training went right up to it
    assert registry._read_registry()["production"] == {}  # fold models are never promoted
    ids = [i for fold in wf.folds for i in fold.model_ids.values()]
    assert len(set(ids)) == 4


def test_test_windows_are_contiguous_and_non_overlapping(wf):
    w = wf.windows
    starts = pd.to_datetime(w["test_start"], utc=True)
    ends = pd.to_datetime(w["test_end"], utc=True)
    assert starts.iloc[0] == START + pd.Timedelta(days=TRAIN_DAYS)
    assert (ends - starts == pd.Timedelta(days=STEP_DAYS)).all()
    assert (starts.iloc[1:].to_numpy() == ends.iloc[:-1].to_numpy()).all()
    assert (pd.to_datetime(w["last_train_label"], utc=True) < starts).all()


def test_trading_happens_only_inside_the_test_windows(wf):
    total_fills = 0
    for fold in wf.folds:
        f = fold.fold
        for name in ("ensemble", "buy_hold", "momentum"):
            fills = pd.read_csv(wf.out / f"fold-{f.index + 1:02d}" / name / "fills.csv")
            ts = pd.to_datetime(fills["ts_last"], utc=True)
            assert ((ts >= f.test_start) & (ts <= f.test_end)).all(), name  # a decision at t_k fills at t_k
            total_fills += len(fills) if name == "ensemble" else 0
        signals = pd.read_parquet(wf.out / f"fold-{f.index + 1:02d}" / "ensemble" / "signals.parquet")
        # the warm-up was fed before t_k (signals there, no trades), so the window trades from its first bar
        assert (signals["ts_event"] < f.test_start).any()
        first = signals[signals["ts_event"] >= f.test_start].groupby("instrument_id")["ts_event"].min()
        assert len(first) == len(SYMBOLS) and (first == f.test_start).all()
    assert total_fills > 0


def test_stitched_report_files_and_values(wf):
    out = wf.out
    assert (out / "equity.png").stat().st_size > 10_000
    windows = pd.read_csv(out / "windows.csv")
    assert len(windows) == 2
    assert (windows["signals"] == STEP_DAYS * BARS_PER_DAY * len(SYMBOLS)).all()
    assert windows["rank_ic"].between(-1, 1).all()
    assert windows["directional_accuracy"].between(0, 1).all()
    assert (windows["ensemble_trades"] > 0).all() and (windows["buy_hold_trades"] == len(SYMBOLS)).all()
    assert (windows["models_voting"] == 2).all() and windows["models_left_out"].isna().all()
    for name in ("ensemble", "buy_hold", "momentum"):
        assert windows[f"{name}_max_drawdown"].between(-0.5, 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    assert -1 <= summary["forecast"]["rank_ic"] <= 1
    assert summary["forecast"]["leakage_alarm"] is None
    assert summary["forecast"]["scored"] > 0.9 * windows["signals"].sum()
    for name in ("ensemble", "buy_hold", "momentum"):
        s = summary["strategies"][name]
        chained = 10_000 * np.prod(1 + windows[f"{name}_total_return"].to_numpy())
        assert s["final_equity"] == pytest.approx(chained, rel=1e-9)
        assert s["trades"] == windows[f"{name}_trades"].sum()
        equity = pd.read_csv(out / f"equity_{name}.csv", index_col=0, parse_dates=True)
        assert equity["equity"].iloc[0] == 10_000 and equity.index.is_monotonic_increasing
        assert equity.index[-1] == pd.Timestamp(summary["test_period"]["end"])
    for k in (1, 2):
        assert (out / f"fold-{k:02d}" / "ensemble" / "stats.json").is_file()
        assert (out / f"fold-{k:02d}" / "train" / "metrics.json").is_file()


def test_same_config_twice_gives_the_same_windows(wf, catalog_root):
    cfg = WalkForwardConfig.model_validate(wf_config(catalog_root))
    again = run_walkforward(cfg, catalog_root / "run2", progress=False)
    assert (again.out / "windows.csv").read_bytes() == (wf.out / "windows.csv").read_bytes()


def test_folds_on_a_local_ray_give_the_same_windows_and_keep_every_registry_line(wf, catalog_root):
    cfg = WalkForwardConfig.model_validate(wf_config(catalog_root))
    on_ray = run_walkforward(cfg, catalog_root / "run-ray", progress=False, ray=RayOptions(cpus=2))
    assert (on_ray.out / "windows.csv").read_bytes() == (wf.out / "windows.csv").read_bytes()
    registered = [
        e["id"] for e in ModelRegistry(on_ray.out / "models").history() if e["action"] == "register"
    ]
    fold_models = [mid for fold in on_ray.folds for mid in fold.model_ids.values()]
    assert len(fold_models) == len(wf.folds) * len(cfg.train.kinds) > 2
    assert sorted(registered) == sorted(fold_models)  # two folds registering at once lost no line


def test_a_fold_whose_models_learned_nothing_sits_its_window_out_in_cash(tmp_path):
    # the fold trains on bars 0-1151 and validates from bar 931; the market turns at bar 900, so the trees
    # learn the rally, which is wrong on validation and in the test window
    frames = {
        s: candles(rally_then_fall((TRAIN_DAYS + STEP_DAYS) * BARS_PER_DAY, seed=40 + i, turn=900))
        for i, s in enumerate(SYMBOLS)
    }
    build_catalog(tmp_path / "catalog", frames)
    data = wf_config(tmp_path)
    data["train"]["models"]["lightgbm"] = {"params": TINY | {"min_data_in_leaf": 1_000_000}}  # no split
    data["baselines"] = {"momentum": {"enabled": False}}
    wf = run_walkforward(WalkForwardConfig.model_validate(data), tmp_path / "run", progress=False)

    window = wf.windows.iloc[0]
    assert window["ensemble_trades"] == 0 and window["signals"] == 0
    assert window["models_voting"] == 0
    fold = wf.folds[0]
    assert len(wf.folds) == 1
    assert fold.models_left_out["xgboost"].startswith("no-skill (validation MSE ")
    assert fold.models_left_out["lightgbm"].startswith("constant (validation forecast std ")
    assert window["ensemble_total_return"] == 0 and window["ensemble_fees"] == 0
    assert window["buy_hold_trades"] == len(SYMBOLS)  # the baseline trades the universe the ensemble had
    equity = wf.stitched["ensemble"]
    assert (equity["equity"] == 10_000).all() and equity.index[-1] == fold.fold.test_end
    stats = json.loads((wf.out / "fold-01" / "ensemble" / "stats.json").read_text())
    assert stats["sat_out"] and stats["trades"] == 0 and stats["models_missing"] == fold.models_left_out
    assert wf.summary["folds"][0]["models_left_out"] == fold.models_left_out
    assert "fold 1: 2 of 2 models left out of the vote: the ensemble sat the window out in cash" in (
        format_summary(wf.summary)
    )


def test_schedule_sliding_expanding_stub_and_max_folds():
    end = START + pd.Timedelta(days=10.5)
    sliding = plan_folds(ScheduleConfig(train_days=4, retrain_every_days=2), START, end)
    assert [(f.test_start - START).days for f in sliding] == [4, 6, 8]  # the 0.5-day stub is dropped
    assert all(f.test_start - f.train_start == pd.Timedelta(days=4) for f in sliding)
    expanding = plan_folds(ScheduleConfig(train_days=4, retrain_every_days=2, window="expanding"), START, end)
    assert [f.train_start for f in expanding] == [START] * 3
    assert [f.test_end for f in expanding] == [f.test_end for f in sliding]
    short_end = plan_folds(
        ScheduleConfig(train_days=4, retrain_every_days=2), START, START + pd.Timedelta(days=9)
    )
    assert short_end[-1].test_end == START + pd.Timedelta(days=9)  # a 1-day last window is kept (half a step)
    assert len(plan_folds(ScheduleConfig(train_days=4, retrain_every_days=2, max_folds=1), START, end)) == 1
    with pytest.raises(ConfigError, match="schedule.train_days"):
        plan_folds(ScheduleConfig(train_days=10, retrain_every_days=2), START, end)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"schedule": {"window": "rolling"}}, "schedule.window"),
        ({"schedule": {"train_days": 0}}, "schedule.train_days"),
        ({"schedule": {"retrain_every": 7}}, "schedule.retrain_every"),
        ({"train": {"models": {"catboost": {}}}}, "train"),
        ({"strategy": {"entry_treshold": 0.5}}, "strategy"),
        ({"strategy": {"entry_threshold": 1.5}}, "strategy"),
        ({"strategy": {"models": ["xgboost:production"]}}, "strategy"),
        ({"baselines": {"momentum": {"config": {"lookback_bar": 3}}}}, "baselines"),
        ({"venue": {"default_leverage": 0}}, "venue.default_leverage"),
    ],
)
def test_a_bad_config_names_the_field(patch, field, tmp_path):
    data = wf_config(tmp_path) | patch
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        parse_config(WalkForwardConfig, data, "wf.yaml")


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\nschedule: {window: rolling}\n")
    assert main(["walkforward", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "schedule.window" in capsys.readouterr().err


def test_momentum_goes_with_the_last_move(tmp_path):
    up, down = np.linspace(100, 110, 60), np.linspace(110, 100, 60)
    build_catalog(tmp_path / "catalog", {"UPUSDT": candles(up), "DNUSDT": candles(down)})
    cfg = {
        "catalog": str(tmp_path / "catalog"),
        "universe": {"select": "all"},
        "strategies": [
            {
                "path": "strategies.momentum:Momentum",
                "config": {"lookback_bars": 6, "rebalance_bars": 4, "trade_start": "2025-01-01T01:00:00Z"},
            }
        ],
        "report": {"tearsheet": False},
    }
    run = run_backtest(parse_backtest_config(cfg), progress=False)
    fills = run.engine.trader.generate_order_fills_report()
    by_symbol = fills.groupby("instrument_id")
    assert list(by_symbol.get_group("UPUSDT-PERP.BINANCE")["side"]) == ["BUY"]
    assert list(by_symbol.get_group("DNUSDT-PERP.BINANCE")["side"]) == ["SELL"]
    # nothing before trade_start: the first decision is on the bar closing at 01:00, filled at that close
    assert (fills["ts_last"] == pd.Timestamp("2025-01-01 01:00", tz="UTC")).all()

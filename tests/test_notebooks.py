"""The research notebooks (notebooks/*.ipynb) run end to end on a small demo's outputs, and the helpers behind
them (backtests/analysis.py, ml/diagnostics.py, catalog/explore.py) compute what they claim.

The small demo is the `make demo` pipeline in miniature: a 4-symbol mean-reverting market, XGBoost and LightGBM
trained on its first 1400 bars and promoted, and the ensemble backtested with the CHALLENGE_100 exits on the
600 bars after them. Each notebook is executed by nbclient in a kernel of this interpreter (ipykernel's own
kernelspec, which jupyter_client falls back to when none is installed), pointed at those outputs through the
same environment variables a user sets, and the test then asks the kernel for the numbers the notebook computed.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from backtests.analysis import calibration, forward_log_returns, join_outcomes, load_run, signal_horizon
from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from catalog.explore import coverage_table
from ml.diagnostics import feature_importance, production_models, registry_history
from ml.features import FEATURE_NAMES
from ml.train import TrainConfig, train
from tests.conftest import SMALL_ENSEMBLE_MODELS, build_catalog, candles, reverting_walk

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
BARS, TRAINED_BARS = 2000, 1400
HORIZON = 12  # ml.train's default label horizon
MAX_HORIZON = 16  # the IC's horizons in the model diagnostics (its default, twice the label's, costs more)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """root/catalog, root/models (xgboost and lightgbm, promoted), root/run (the ensemble's report folder)."""
    root = tmp_path_factory.mktemp("nbdemo")
    frames = {s: candles(reverting_walk(BARS, seed=10 + i)) for i, s in enumerate(SYMBOLS)}
    funding_times = pd.date_range("2025-01-01", periods=BARS // 96, freq="8h", tz="UTC")
    funding = {"AAAUSDT": pd.DataFrame({"date": funding_times, "rate": 0.0001})}
    build_catalog(root / "catalog", frames, funding)
    split = str(frames[SYMBOLS[0]]["date"].iloc[TRAINED_BARS])
    trained = train(
        TrainConfig.model_validate(
            {
                "name": "nb",
                "catalog": str(root / "catalog"),
                "universe": {"select": "all"},
                "period": {"end": split},
                "dataset": {"horizon": HORIZON, "max_train_rows": 2000, "max_eval_rows": 500},
                "models": {k: SMALL_ENSEMBLE_MODELS[k] for k in ("xgboost", "lightgbm")},
                "registry": str(root / "models"),
            }
        ),
        root / "train",
        progress=False,
    )
    assert trained.not_promoted == {}, trained.not_promoted
    backtest = {
        "name": "nb_ensemble",
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "period": {"start": split},
        "exit_profile": "challenge_100",
        "risk_profile": "moderate",
        "strategies": [
            {
                "path": "strategies.ensemble:EnsembleStrategy",
                "config": {"registry": str(root / "models"), "entry_threshold": 0.3},
            }
        ],
        "report": {"tearsheet": False},
    }
    write_report(run_backtest(parse_backtest_config(backtest), progress=False), root / "run")
    return root


def execute(name: str, demo: Path, probe: str) -> tuple[nbformat.NotebookNode, dict]:
    """Runs notebooks/<name>.ipynb against the demo's outputs, then `probe` (an expression over the notebook's
    variables) in the same kernel; returns the executed notebook and the probe's value."""
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "committed with outputs"
    )
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json\nprint(json.dumps({probe}, default=str))"))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel draws inline
    env |= {
        "QT_CATALOG": str(demo / "catalog"),
        "QT_RUN": str(demo / "run"),
        "QT_REGISTRY": str(demo / "models"),
        "QT_MAX_HORIZON": str(MAX_HORIZON),
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    }
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, on any error
    probe_output = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream")
    return notebook, json.loads(probe_output)


def figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_the_kernel_is_this_interpreter_even_without_an_installed_kernelspec():
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    manager.kernel_dirs = []  # a fresh venv: no share/jupyter/kernels anywhere
    spec = manager.get_kernel_spec("python3")
    assert spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]


def test_catalog_quality_shows_every_series_prices_funding_and_returns(demo):
    notebook, seen = execute(
        "catalog_quality",
        demo,
        '{"series": check[["instrument", "kind"]].values.tolist(), "closes": list(closes.columns), '
        '"rows": len(closes), "funding": list(funding.columns), "bars": return_stats(returns)["bars"].to_dict(), '
        '"coverage": coverage["coverage"].to_dict()}',
    )
    assert figures(notebook) == 4  # coverage, prices, funding, returns
    assert sorted(seen["series"]) == sorted(
        [[f"{s}-PERP.BINANCE", "ohlcv"] for s in SYMBOLS] + [["AAAUSDT-PERP.BINANCE", "funding"]]
    )
    assert seen["closes"] == SYMBOLS and seen["rows"] == BARS and seen["funding"] == ["AAAUSDT"]
    assert seen["bars"] == dict.fromkeys(SYMBOLS, BARS - 1)  # the first bar of each has no return
    assert seen["coverage"] == dict.fromkeys(SYMBOLS, 1.0)


def test_run_analysis_joins_every_signal_to_its_outcome_and_its_trade(demo):
    notebook, seen = execute(
        "run_analysis",
        demo,
        '{"horizon": horizon, "signals": len(joined), "traded": int(joined["traded"].sum()), '
        '"with_outcome": int(joined["outcome"].notna().sum()), "calls": int(joined["hit"].notna().sum()), '
        '"binned": int(calibrations["all directional calls"]["count"].sum()), '
        '"trade_pnl": float(joined["trade_pnl"].sum())}',
    )
    assert figures(notebook) == 4  # equity, exits, per symbol, calibration
    run = load_run(demo / "run")
    assert seen["horizon"] == HORIZON
    assert seen["signals"] == len(run.signals) == run.stats["signals"]
    assert seen["traded"] == run.stats["entries"] > 0
    # every signal has an outcome but those of the last 12 bars of each symbol, whose future is not in the
    # catalog; the very last bar has no signal (its decision time, close + 500 ms, is after the run's end)
    assert seen["with_outcome"] == len(run.signals) - (HORIZON - 1) * len(SYMBOLS)
    assert 0 < seen["calls"] == seen["binned"] <= seen["with_outcome"]
    assert seen["trade_pnl"] == pytest.approx(run.exits["pnl"].sum())


def test_model_diagnostics_scores_each_production_model_after_its_training_data(demo):
    notebook, seen = execute(
        "model_diagnostics",
        demo,
        '{"start": start, "ic": ic.to_dict(orient="records"), '
        '"importance": {k: float(v.sum()) for k, v in importances.items()}, '
        '"history": registry_history(REGISTRY)["action"].tolist()}',
    )
    assert figures(notebook) == 2  # IC by horizon, feature importance
    ic = pd.DataFrame(seen["ic"])
    assert set(ic["model"]) == {"xgboost", "lightgbm"}
    assert sorted(set(ic["horizon"])) == list(range(1, MAX_HORIZON + 1))
    # after the training data, which read bars closing before the end of its period: the 601 bars of each
    # symbol closing from that end on, less the last 16, whose 16-bar future is not in the catalog
    assert pd.Timestamp(seen["start"]) == pd.Timestamp("2025-01-01", tz="UTC") + TRAINED_BARS * pd.Timedelta(
        "5min"
    )
    assert (ic["n"] == (BARS - TRAINED_BARS + 1 - MAX_HORIZON) * len(SYMBOLS)).all()
    # the market mean-reverts, so trained models rank the next hour's returns on unseen bars, pooled and
    # across symbols
    at_horizon = ic[ic["horizon"] == HORIZON]
    assert (at_horizon["pooled_ic"] > 0.05).all() and (at_horizon["cs_ic"] > 0.05).all()
    assert seen["importance"] == pytest.approx({"xgboost": 1.0, "lightgbm": 1.0})
    assert seen["history"] == ["register", "promote", "register", "promote"]


# --- the helpers, on hand-made data -------------------------------------------------------------------------


def closes_every_5m(values, start="2025-01-01 00:05") -> pd.Series:
    return pd.Series(
        values, index=pd.date_range(start, periods=len(values), freq="5min", tz="UTC"), dtype=float
    )


def signal(ts, direction="LONG", confidence=0.5, trace_id="", iid="AUSDT-PERP.BINANCE") -> dict:
    return {
        "ts_event": pd.Timestamp(ts, tz="UTC"),
        "instrument_id": iid,
        "direction": direction,
        "confidence": confidence,
        "trace_id": trace_id,
        "model_ids": "xgboost-1",
    }


def test_an_outcome_is_the_return_after_the_signal_s_bar_never_including_it():
    # the signal's own bar jumps 100 -> 200 (the decision saw that close); the next two bars go to 220 and 242
    close = closes_every_5m([100.0, 200.0, 220.0, 242.0])
    forward = forward_log_returns(close, 2)
    assert forward.iloc[1] == pytest.approx(np.log(242 / 200))
    assert forward.iloc[2:].isna().all()  # their future is not in the data
    signals = pd.DataFrame(
        [signal("2025-01-01 00:10"), signal("2025-01-01 00:07"), signal("2025-01-01 00:15")]
    )
    joined = join_outcomes(signals, {"AUSDT-PERP.BINANCE": close}, horizon=2)
    assert joined["outcome"].iloc[0] == pytest.approx(np.log(242 / 200))
    assert (
        joined["outcome"].iloc[1:].isna().all()
    )  # no bar closes at 00:07; the 00:15 one has no 2-bar future
    assert joined["hit"].iloc[0] == 1.0 and joined["hit"].iloc[1:].isna().all()


def test_hits_follow_the_call_s_direction_and_flat_calls_have_none():
    close = closes_every_5m([100.0, 90.0, 90.0, 90.0])  # falls 10% after the first bar, then stays
    signals = pd.DataFrame(
        [
            signal("2025-01-01 00:05", "SHORT"),
            signal("2025-01-01 00:05", "LONG"),
            signal("2025-01-01 00:05", "FLAT"),
            signal("2025-01-01 00:15", "LONG"),  # an outcome of exactly 0: no direction to get right
        ]
    )
    joined = join_outcomes(signals, {"AUSDT-PERP.BINANCE": close}, horizon=1)
    assert joined["side"].tolist() == [-1, 1, 0, 1]
    assert joined["hit"].iloc[:2].tolist() == [1.0, 0.0]
    assert joined["hit"].iloc[2:].isna().all()


def test_a_traded_signal_carries_the_pnl_of_its_position_s_exits():
    close = closes_every_5m([100.0, 101.0, 102.0])
    signals = pd.DataFrame(
        [signal("2025-01-01 00:05", trace_id="t1"), signal("2025-01-01 00:10", trace_id="")]
    )
    exits = pd.DataFrame({"trace_id": ["t1", "t1", "t9"], "pnl": [2.5, -1.0, 7.0]})
    joined = join_outcomes(signals, {"AUSDT-PERP.BINANCE": close}, horizon=1, exits=exits)
    assert joined["traded"].tolist() == [True, False]
    assert joined["trade_pnl"].iloc[0] == pytest.approx(1.5) and np.isnan(joined["trade_pnl"].iloc[1])


def test_calibration_bins_count_only_directional_calls_with_an_outcome():
    joined = pd.DataFrame(
        {
            "confidence": [0.0, 0.05, 0.15, 0.15, 0.95, 0.5, 0.5],
            "side": [1, -1, 1, 1, -1, 0, 1],
            "outcome": [0.01, 0.01, 0.02, -0.02, -0.03, 0.01, np.nan],
            "hit": [1.0, 0.0, 1.0, 0.0, 1.0, np.nan, np.nan],  # the FLAT call and the NaN outcome: no hit
        }
    )
    table = calibration(joined, bins=10)
    assert table["count"].tolist() == [2, 2, 1]  # [0, 0.1] (0 included), (0.1, 0.2], (0.9, 1]
    assert table["hit_rate"].tolist() == [0.5, 0.5, 1.0]
    assert table["confidence"].tolist() == pytest.approx([0.025, 0.15, 0.95])
    assert table["calibrated_hit_rate"].tolist() == pytest.approx([0.5125, 0.575, 0.975])
    assert table["directional_return"].tolist() == pytest.approx([0.0, 0.0, 0.03])


def test_the_horizon_comes_from_the_signals_models_and_a_missing_run_is_named(demo, tmp_path):
    run = load_run(demo / "run")
    assert signal_horizon(demo / "models", run.signals) == (HORIZON, "5m")
    with pytest.raises(ValueError, match="no signals"):
        signal_horizon(demo / "models", pd.DataFrame())
    with pytest.raises(FileNotFoundError, match="no backtest report at .*stats.json missing"):
        load_run(tmp_path / "nothing")


def test_coverage_counts_missing_bars_and_lists_a_symbol_that_has_no_bars():
    check = pd.DataFrame(
        [
            ["AUSDT-PERP.BINANCE", "ohlcv", 90, "2025-01-01T00:00:00+00:00", "2025-01-01T08:15:00+00:00", 2, 10, "0 days 00:30:00"],
            ["AUSDT-PERP.BINANCE", "funding", 3, "2025-01-01T00:00:00+00:00", "2025-01-01T16:00:00+00:00", 0, 0, None],
            ["BUSDT-PERP.BINANCE", "mark", 8, "2025-01-01T00:00:00+00:00", "2025-01-01T07:00:00+00:00", 0, 0, None],
            ["BUSDT-PERP.BINANCE", "funding", 3, "2025-01-01T00:00:00+00:00", "2025-01-01T16:00:00+00:00", 0, 0, None],
        ],
        columns=["instrument", "kind", "rows", "first", "last", "gaps", "missing_bars", "largest_gap"],
    )  # fmt: skip
    table = coverage_table(check)
    assert table.loc["AUSDT", ["bars", "missing_bars", "gaps"]].tolist() == [90, 10, 2]
    assert table.loc["AUSDT", "coverage"] == pytest.approx(0.9) and table.loc["AUSDT", "also"] == "funding"
    assert table.loc["BUSDT", "bars"] == 0 and table.loc["BUSDT", "also"] == "funding, mark"


def test_gbdt_importances_are_gain_shares_over_the_feature_set(demo):
    models = production_models(demo / "models")
    assert set(models) == {"xgboost", "lightgbm"}
    for model, _ in models.values():
        share = feature_importance(model)
        assert list(share.sort_index().index) == sorted(FEATURE_NAMES)
        assert share.sum() == pytest.approx(1.0) and (share >= 0).all()
        assert share.is_monotonic_decreasing and share.iloc[0] > 0
    assert list(registry_history(demo / "models").columns) == [
        "ts",
        "action",
        "kind",
        "id",
        "previous",
        "reason",
    ]

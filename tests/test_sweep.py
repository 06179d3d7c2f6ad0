"""`qt sweep`: a grid over a backtest config, every point a backtest of stored signals run as a Ray task.

The grid's paths are checked against the config's schema before anything runs; the end-to-end sweeps run on
one local Ray (2 CPUs) started for the module, over a small generated catalog with generated decisions."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from backtests.ray_cluster import REPO_ROOT, ray_init_options
from backtests.sweep import (
    SweepConfig,
    load_sweep_config,
    results_table,
    run_sweep,
    sweep_points,
)
from backtests.sweep_grid import Point, expand_grid
from catalog.instruments import instrument_id
from catalog.store import bar_type_for
from ml.research import write_signals
from quantum_trader.cli import main as cli_main
from quantum_trader.config import ConfigError
from quantum_trader.events import Signal
from tests.conftest import build_catalog, candles, random_walk

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
BARS = 400
ENSEMBLE = "strategies.ensemble:EnsembleStrategy"


def backtest(catalog="catalog", **top) -> dict:
    return {
        "name": "replay",
        "catalog": str(catalog),
        "universe": {"select": "all"},
        "strategies": [{"path": ENSEMBLE, "config": {"signal_source": "catalog", "cooldown_seconds": 0}}],
        "report": {"tearsheet": False},
    } | top


# ---- the grid (pure) ----------------------------------------------------------------------------------------


def test_the_grid_is_the_cartesian_product_in_the_configs_order():
    points = expand_grid(
        backtest(exit_profile="challenge_100"),
        {"strategies.0.config.entry_threshold": [0.6, 0.8], "venue.slippage_bps": [0, 2, 5]},
        max_runs=10,
    )
    assert [p.index for p in points] == list(range(6))
    assert [tuple(p.params.values()) for p in points] == [
        (0.6, 0), (0.6, 2), (0.6, 5), (0.8, 0), (0.8, 2), (0.8, 5),
    ]  # fmt: skip
    assert points[4].config["strategies"][0]["config"]["entry_threshold"] == 0.8
    assert points[4].config["venue"] == {"slippage_bps": 2}
    assert points[4].config["exit_profile"] == "challenge_100"  # untouched profiles stay named


def test_a_path_into_a_named_profile_changes_that_field_and_keeps_the_rest():
    base = backtest(exit_profile="challenge_100", risk_profile="conservative")
    base["actors"] = [{"path": "actors.emergency_stop:EmergencyStop"}]
    (point,) = expand_grid(base, {"exit_profile.stop_r": [1.0], "risk_profile.max_positions": [3]}, 1)
    exits = point.config["strategies"][0]["config"]["exit_profile"]
    assert exits["stop_r"] == 1.0
    assert exits["name"] == "challenge_100" and exits["time_stop_minutes"] == 120  # the rest of challenge_100
    # the changed risk profile reaches every component that reads one, as the named one did
    for component in (point.config["strategies"][0], point.config["actors"][0]):
        assert component["config"]["risk_profile"]["max_positions"] == 3
        assert component["config"]["risk_profile"]["risk_per_trade"] == 0.01  # conservative's
    assert point.config["exit_profile"] is None and point.config["risk_profile"] is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "strategies.0.config.entry_treshold",
            "unknown key 'entry_treshold' under strategies.0.config; allowed: ",
        ),
        ("exit_profile.stopr", "allowed: ['breakeven_after_tp1', 'liquidation_buffer', 'max_stop_r'"),
        ("venu.slippage_bps", "unknown key 'venu' under the top level; allowed: ['actors', 'catalog'"),
        ("venue.slippage_bps.low", "venue.slippage_bps is a value, it has no 'low'"),
        ("strategies.1.config.entry_threshold", "strategies is a list of 1; allowed: 0..0"),
        (
            "risk_profile.supervisor.shares",
            "under risk_profile.supervisor; allowed: ['max_share', 'mode', 'window']",
        ),
    ],
)
def test_a_bad_path_is_refused_naming_it_and_the_allowed_keys(path, message):
    with pytest.raises(ConfigError, match="grid: ") as err:
        expand_grid(backtest(), {path: [1]}, 10)
    assert repr(path) in str(err.value) and message in str(err.value)


def test_a_grid_over_max_runs_is_refused_before_anything_runs():
    grid = {"venue.slippage_bps": [0, 1, 2, 3], "strategies.0.config.entry_threshold": [0.5, 0.6, 0.7]}
    with pytest.raises(ConfigError, match=r"4 x 3 = 12 runs, more than max_runs 10; shrink the grid"):
        expand_grid(backtest(), grid, max_runs=10)


def test_values_must_be_a_non_empty_list():
    with pytest.raises(ConfigError, match=r"grid.venue.slippage_bps: needs a non-empty list"):
        expand_grid(backtest(), {"venue.slippage_bps": []}, 10)


def test_a_point_with_an_invalid_value_carries_its_error_and_the_others_are_kept():
    points = expand_grid(backtest(), {"exit_profile.stop_r": [1.0, 2.0], "venue.slippage_bps": [1, -1]}, 10)
    errors = {tuple(p.params.values()): p.error for p in points}
    assert errors[(1.0, 1)] is None
    assert "stop_r 2.0 exceeds max_stop_r 1.5" in errors[(2.0, 1)]
    assert "venue.slippage_bps" in errors[(1.0, -1)]


def test_the_sweep_config_names_a_bad_objective_and_plot_axis(tmp_path):
    with pytest.raises(ValueError, match="objective"):
        SweepConfig(backtest="x.yaml", grid={"venue.slippage_bps": [1]}, objective="profit")
    with pytest.raises(
        ValueError, match=r"plot.x: 'seed' is not a grid path; allowed: \['venue.slippage_bps'\]"
    ):
        SweepConfig(backtest="x.yaml", grid={"venue.slippage_bps": [1]}, plot={"x": "seed"})


def test_the_table_is_sorted_by_the_objective_with_failures_last():
    points = [Point(i, {"venue.slippage_bps": i}, {}) for i in range(3)] + [
        Point(3, {"venue.slippage_bps": 9}, None, "bad")
    ]
    results = {
        0: {"sharpe": 0.5, "fingerprint": "a"},
        1: {"error": "boom"},
        2: {"sharpe": 1.5, "fingerprint": "b"},
    }
    cfg = SweepConfig(backtest="x.yaml", grid={"venue.slippage_bps": [0, 1, 2, 9]})
    table = results_table(points, results, cfg)
    assert table["point"].tolist() == [2, 0, 1, 3]
    assert table["error"].tolist()[2:] == ["boom", "bad"]
    low = results_table(points, results, cfg.model_copy(update={"direction": "min"}))
    assert low["point"].tolist()[:2] == [0, 2]


# ---- end to end on a local Ray ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard, no usage stats, its files in a fresh temp folder
    (short, for Ray's socket paths) that is removed afterwards."""
    import ray

    temp = tempfile.mkdtemp(prefix="qtray-", dir="/tmp")
    ray.init(**ray_init_options(cpus=2), _temp_dir=temp, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def replay_catalog(tmp_path_factory):
    """Three random walks and, for every bar close, a generated decision: direction and confidence at random."""
    root = tmp_path_factory.mktemp("sweep")
    frames = {s: candles(random_walk(BARS, seed=20 + i)) for i, s in enumerate(SYMBOLS)}
    store = build_catalog(root / "catalog", frames)
    rng = np.random.default_rng(5)
    signals = []
    for symbol in frames:
        stored = store.read_bars_frame(bar_type_for(instrument_id(symbol, "futures"), "5m"))
        closes = pd.DatetimeIndex(stored["date"]).as_unit("ns").asi8  # the bars' own stamps
        for ts in closes[30:]:
            prob_up = float(rng.uniform(0, 1))
            direction = "LONG" if prob_up > 0.5 else "SHORT"
            signals.append(
                Signal(
                    ts_event=int(ts),
                    ts_init=int(ts) + 500_000_000,
                    instrument_id=instrument_id(symbol, "futures"),
                    direction=direction,
                    confidence=abs(2 * prob_up - 1),
                    prob_up=prob_up,
                    model_ids="synthetic",
                )  # fmt: skip
            )
    write_signals(root / "catalog", signals)
    (root / "replay.yaml").write_text(yaml.safe_dump(backtest(root / "catalog")))
    return root


def sweep_config(root, **fields) -> SweepConfig:
    grid = {"strategies.0.config.entry_threshold": [0.5, 0.9], "exit_profile.stop_r": [0.5, 1.5]}
    return SweepConfig(
        name="t",
        backtest=str(root / "replay.yaml"),
        grid=grid,
        keep_reports=False,
        points_per_worker=4,
        **fields,
    )  # reused workers: the imports cost more than these small backtests


@pytest.fixture(scope="module")
def swept(local_ray, replay_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-out")
    summary = run_sweep(sweep_config(replay_catalog), out, progress=False, echo=lambda _: None)
    return out, summary


def test_every_point_is_a_row_and_the_parameters_that_matter_change_the_results(swept):
    out, summary = swept
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and sorted(table["point"]) == [0, 1, 2, 3]
    assert table["error"].isna().all()
    assert (table["trades"] > 0).all()
    assert table["fingerprint"].nunique() == 4  # each threshold and each stop changed the fills
    by_threshold = table.groupby("strategies.0.config.entry_threshold")["trades"].sum()
    assert by_threshold[0.5] > by_threshold[0.9]  # a lower threshold enters more often
    sharpe = table["sharpe"].tolist()
    assert sharpe == sorted(sharpe, reverse=True)  # best first by the objective
    assert summary["best"]["point"] == table["point"][0] and summary["worst"]["point"] == table["point"][3]
    assert summary["ray"]["cpus"] == 2 and summary["failed"] == 0 and summary["no_effect"] == []
    assert "overstate" in summary["warning"]
    assert (out / "sweep.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["points"] == 4


def test_the_same_config_gives_the_same_table(swept, replay_catalog, tmp_path):
    out, _ = swept
    run_sweep(sweep_config(replay_catalog), tmp_path, progress=False, echo=lambda _: None)
    assert (tmp_path / "results.csv").read_text() == (out / "results.csv").read_text()


def test_a_failing_point_is_a_row_with_its_error_and_the_rest_still_run(local_ray, replay_catalog, tmp_path):
    cfg = sweep_config(replay_catalog).model_copy(
        # the default: a fresh worker process for every point
        update={
            "grid": {"strategies.0.config.cooldown_seconds": [0, "soon"]},
            "keep_reports": True,
            "points_per_worker": 1,
        }
    )
    summary = run_sweep(cfg, tmp_path, progress=False, echo=lambda _: None)
    table = pd.read_csv(tmp_path / "results.csv")
    failed = table[table["error"].notna()]
    assert len(table) == 2 and len(failed) == 1 and summary["failed"] == 1
    assert failed["strategies.0.config.cooldown_seconds"].item() == "soon"
    assert "strategies[0].config" in failed["error"].item()  # the component's own config error, named
    assert (tmp_path / "points" / f"{summary['best']['point']:03d}" / "stats.json").exists()


def test_a_parameter_that_changes_no_trade_is_named(local_ray, replay_catalog, tmp_path):
    # with a risk profile the entry threshold is the profile's entry_confidence: the strategy's is not read
    base = yaml.safe_load((replay_catalog / "replay.yaml").read_text()) | {"risk_profile": "aggressive"}
    (tmp_path / "risk.yaml").write_text(yaml.safe_dump(base))
    grid = {"strategies.0.config.entry_threshold": [0.5, 0.9], "risk_profile.entry_confidence": [0.65]}
    cfg = SweepConfig(
        name="t", backtest=str(tmp_path / "risk.yaml"), grid=grid, keep_reports=False, points_per_worker=4
    )
    summary = run_sweep(cfg, tmp_path / "out", progress=False, echo=lambda _: None)
    assert summary["no_effect"] == ["strategies.0.config.entry_threshold"]


def test_qt_sweep_prints_the_top_rows_and_writes_the_report(local_ray, replay_catalog, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "backtest": str(replay_catalog / "replay.yaml"),
                "keep_reports": False,
                "points_per_worker": 4,
                "grid": {"exit_profile.stop_r": [0.5, 1.0]},
                "objective": "total_return",
            }
        )  # fmt: skip
    )
    assert cli_main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "exit_profile.stop_r" in printed and "best by total_return: point" in printed
    assert "on Ray (already running, 2 CPUs)" in printed
    assert {"results.csv", "sweep.png", "summary.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    config.write_text(
        yaml.safe_dump({"backtest": str(replay_catalog / "replay.yaml"), "grid": {"venue.fee": [1]}})
    )
    assert cli_main(["sweep", str(config), "--no-progress"]) == 2
    assert "unknown key 'fee' under venue" in capsys.readouterr().err


def test_the_shipped_sweep_configs_expand(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # their paths are relative to the repository, as every config's
    for path in ("configs/sweeps/demo.yaml", "configs/sweeps/ensemble_replay.yaml"):
        points = sweep_points(load_sweep_config(path))
        assert points and all(p.error is None for p in points), path
        # a worker elsewhere (a cluster node) gets the catalog as an absolute path
        assert all(Path(p.config["catalog"]).is_absolute() for p in points)

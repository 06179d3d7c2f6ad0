"""The torch forecasters (N-HiTS, PatchTST): they learn, they are reproducible, they save and load safely,
and a window's forecast depends on that window only."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ml.dataset import SymbolBars, WindowSet, pool
from ml.features import FEATURE_NAMES, N_FEATURES
from ml.metrics import spearman
from ml.models.base import ModelLoadError
from ml.models.nhits import NHiTSModel
from ml.models.patchtst import DEFAULT_CHANNELS, PatchTSTModel
from ml.models.torch_common import LEGACY_TRAINING, target_scale
from tests.conftest import candles, random_walk

HORIZON, LOOKBACK = 12, 64

# small networks: the tests specify behaviour, not forecasting skill
SMALL = {
    "nhits": (NHiTSModel, {"mlp_units": 32}),
    "patchtst": (PatchTSTModel, {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1}),
}


def make(kind: str, **kw):
    cls, arch = SMALL[kind]
    return cls(**{**arch, "device": "cpu", "max_epochs": 2, "batch_size": 64, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and OpenMP's spinning threads crawl when the cores are
    shared with other jobs; the previous setting is restored for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def market() -> tuple[WindowSet, WindowSet]:
    """Two random-walk symbols pooled like the real pipeline; the first 70% of anchors train, the rest
    validate."""
    bars = []
    for i in range(2):
        df = candles(random_walk(800, seed=i))
        ct = (df["date"] + pd.Timedelta("5min")).to_numpy(dtype="datetime64[ns]").astype(np.int64)
        bars.append(SymbolBars(f"S{i}", df, ct))
    ws = pool(bars, horizon=HORIZON, lookback=LOOKBACK)
    order = np.argsort(ws.times, kind="stable")
    cut = int(0.7 * len(ws))
    return ws.subset(order[:cut]), ws.subset(order[cut:])


@pytest.fixture(scope="module")
def fitted(market):
    """Models trained on the random walk. Early stopping watches the training set itself: on a random
    walk's validation split the zero forecast would win, and tests of a zero forecast would be vacuous."""
    train, _ = market
    models = {}
    for kind in SMALL:
        models[kind] = make(kind)
        assert models[kind].fit(train, train).best_iteration > 0
    return models


def learnable_set(n: int = 256, seed: int = 0) -> WindowSet:
    """n non-overlapping windows of random features whose forward path is a deterministic function of the
    window: a straight line to label = 0.002 * (sum of logret_1 over the last 8 rows)."""
    rng = np.random.default_rng(seed)
    block = LOOKBACK + HORIZON
    features = rng.normal(size=(n * block, N_FEATURES)).astype(np.float32)
    rows = np.arange(n) * block + LOOKBACK - 1
    col = FEATURE_NAMES.index("logret_1")
    labels = 0.002 * features[rows[:, None] + np.arange(-7, 1), col].astype(np.float64).sum(axis=1)
    log_close = np.zeros(n * block)
    log_close[rows[:, None] + np.arange(1, HORIZON + 1)] = (
        labels[:, None] * np.arange(1, HORIZON + 1) / HORIZON
    )
    return WindowSet(
        features=features,
        log_close=log_close,
        rows=rows.astype(np.int64),
        symbol_idx=np.zeros(n, np.int32),
        times=np.arange(n, dtype=np.int64),
        labels=labels,
        horizon=HORIZON,
        symbols=["SYN"],
    )


# -- learning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SMALL)
def test_learns_a_deterministic_function_of_the_window(kind):
    ws = learnable_set()
    model = make(kind, dropout=0.0, max_epochs=60, patience=60, batch_size=32, learning_rate=3e-3)
    report = model.fit(ws, ws)
    mse = np.mean((model.predict(ws.windows(slice(None), LOOKBACK)) - ws.labels) ** 2)
    zero_mse = np.mean(ws.labels**2)
    assert mse < 0.05 * zero_mse, f"{kind}: mse {mse:.3g} vs zero forecast {zero_mse:.3g}"
    assert report.train_loss[-1] < 0.1 * report.train_loss[0]


@pytest.mark.parametrize("kind", SMALL)
def test_fit_reports_each_epoch_and_keeps_the_best_weights(kind, market):
    train, val = market
    calls = []
    model = make(kind, max_epochs=3, patience=3, early_stopping="mse")
    report = model.fit(train, val, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert len(report.val_loss) == len(report.train_loss) == len(calls) == 3
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)] and "val loss" in calls[0][2]
    assert report.device == "cpu" and report.seconds > 0
    # epoch 0 is the zero forecast the networks start from; the best of all epochs is what is kept, and
    # the val loss recomputed from raw windows matches it
    zero_loss = np.mean((val.labels / model.target_scale) ** 2)
    losses = [zero_loss, *report.val_loss]
    assert losses[report.best_iteration] == min(losses)
    pred = model.predict(val.windows(slice(None), LOOKBACK)) / model.target_scale
    assert np.mean((pred - val.labels / model.target_scale) ** 2) == pytest.approx(min(losses), rel=1e-6)


@pytest.mark.parametrize("kind", SMALL)
def test_a_fit_that_only_hurts_on_validation_falls_back_to_the_zero_forecast(kind):
    train, val = learnable_set(), learnable_set()
    val.labels = -val.labels  # whatever is learnt from train is exactly wrong on validation
    val.log_close = -val.log_close
    model = make(kind, max_epochs=3, learning_rate=3e-3)
    report = model.fit(train, val)
    assert report.best_iteration == 0
    assert not model.predict(val.windows(slice(None), LOOKBACK)).any()


def test_time_budget_stops_after_the_current_batch(market):
    train, val = market
    report = make("nhits", max_epochs=50, max_seconds=1e-6).fit(train, val)
    assert len(report.val_loss) == 1


# -- robust targets and early stopping ----------------------------------------------------------------


def test_mad_target_scale_ignores_a_few_huge_labels():
    rng = np.random.default_rng(0)
    labels = rng.normal(0.0, 0.01, 20_000)
    labels[:20] = np.tile([1.0, -1.0], 10)  # a crash in 0.1% of the rows: 90% of the sum of squares
    labels[20] = np.nan  # non-finite labels are ignored
    assert target_scale(labels, "std") > 3 * 0.01  # the std is mostly the crash
    assert target_scale(labels, "mad") == pytest.approx(0.01, rel=0.03)  # 1.4826 x MAD ~ the bulk's std
    # a MAD of 0 (most labels 0) falls back to the std, and a constant sample to 1.0
    sparse = np.zeros(100)
    sparse[:10] = 1.0
    assert target_scale(sparse, "mad") == pytest.approx(np.std(sparse))
    assert target_scale(np.zeros(50), "mad") == 1.0 == target_scale(np.array([]), "mad")
    with pytest.raises(ValueError, match="target_scaling"):
        target_scale(labels, "iqr")


def test_fit_uses_the_configured_target_scale():
    ws = learnable_set(64)
    for scaling in ("std", "mad"):
        model = make("nhits", max_epochs=1, target_scaling=scaling)
        model.fit(ws, ws)
        assert model.target_scale == target_scale(ws.labels, scaling)


def test_target_clip_bounds_the_training_targets_but_not_the_validation_labels():
    ws = learnable_set()
    clip = 0.05  # in target-scale units: far below the scaled labels (std 1)
    model = make(
        "nhits", dropout=0.0, max_epochs=15, patience=15, batch_size=32, learning_rate=3e-3, target_clip=clip
    )
    report = model.fit(ws, ws)
    assert report.best_iteration > 0
    pred = model.predict(ws.windows(slice(None), LOOKBACK)) / model.target_scale
    y = ws.labels / model.target_scale
    # it learnt the clipped target: forecasts stay near +-clip while the labels reach several units
    assert np.abs(y).max() > 2.0 and np.abs(pred).max() < 5 * clip
    assert np.mean(np.abs(pred)) == pytest.approx(np.mean(np.abs(np.clip(y, -clip, clip))), rel=0.5)
    assert np.corrcoef(pred, np.clip(y, -clip, clip))[0, 1] > 0.8
    # ...but early stopping scored it against the raw labels
    assert report.val_loss[report.best_iteration - 1] == pytest.approx(np.mean((pred - y) ** 2), rel=1e-6)
    # "clipped_mse" scores the validation labels clipped like the training targets
    clipped = make(
        "nhits",
        dropout=0.0,
        max_epochs=15,
        patience=15,
        batch_size=32,
        learning_rate=3e-3,
        target_clip=clip,
        early_stopping="clipped_mse",
    )
    report = clipped.fit(ws, ws)
    pred = clipped.predict(ws.windows(slice(None), LOOKBACK)) / clipped.target_scale
    expected = np.mean((pred - np.clip(y, -clip, clip)) ** 2)
    assert report.val_loss[report.best_iteration - 1] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", SMALL)
def test_rank_ic_early_stopping_keeps_the_zero_forecast_unless_ic_is_positive(kind, market):
    # whatever is learnt from train ranks validation backwards: negative IC, the zero forecast (IC 0) stays
    train, val = learnable_set(), learnable_set()
    val.labels = -val.labels
    val.log_close = -val.log_close
    model = make(kind, max_epochs=3, learning_rate=3e-3, early_stopping="rank_ic")
    report = model.fit(train, val)
    assert report.best_iteration == 0 and min(report.val_loss) > 0  # val_loss = -IC
    assert not model.predict(val.windows(slice(None), LOOKBACK)).any()
    # noise (a random walk): an epoch is kept iff its IC is > 0, and val_loss holds -IC
    train, val = market
    model = make(kind, max_epochs=3, patience=3, early_stopping="rank_ic")
    report = model.fit(train, val)
    pred = model.predict(val.windows(slice(None), LOOKBACK))
    if min(report.val_loss) >= 0:
        assert report.best_iteration == 0 and not pred.any()
    else:
        assert report.val_loss[report.best_iteration - 1] == min(report.val_loss)
        assert -spearman(pred, val.labels) == pytest.approx(min(report.val_loss), abs=1e-9)
    # a learnable signal: the IC criterion keeps a trained epoch, and -IC is what it recorded
    ws = learnable_set()
    model = make(kind, dropout=0.0, max_epochs=5, batch_size=32, learning_rate=3e-3, early_stopping="rank_ic")
    report = model.fit(ws, ws)
    assert report.best_iteration > 0 and min(report.val_loss) < -0.5
    pred = model.predict(ws.windows(slice(None), LOOKBACK))
    assert -spearman(pred, ws.labels) == pytest.approx(min(report.val_loss), abs=1e-9)


def test_huber_delta_is_used():
    ws = learnable_set(64)
    losses = {}
    for delta in (0.01, 1.0):
        model = make("nhits", max_epochs=1, loss="huber", huber_delta=delta)
        losses[delta] = model.fit(ws, ws).train_loss[0]
    # scaled labels are ~1: a delta of 0.01 puts nearly every residual on the linear branch, ~0.01 * |r|
    assert losses[0.01] < 0.2 * losses[1.0]


@pytest.mark.parametrize("kind", SMALL)
def test_the_mae_loss_trains_the_trading_model_and_reports_mean_absolute_errors(kind):
    ws = learnable_set(64)
    model = make(kind, max_epochs=8, patience=8, loss="mae", batch_size=32, learning_rate=3e-3)
    report = model.fit(ws, ws)
    assert report.best_iteration > 0 and report.train_loss[-1] < report.train_loss[0]
    # MAE is not MSE: one epoch's loss from the zero start is ~ mean |scaled path|, well under its mean square
    first = make(kind, max_epochs=1, loss="mae", learning_rate=1e-9).fit(ws, ws).train_loss[0]
    paths = ws.paths() / target_scale(ws.labels)
    assert first == pytest.approx(np.mean(np.abs(paths)), rel=1e-3)


def test_bad_training_options_name_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"early_stopping must be one of .*'rank_ic'.*got 'ic'"):
        NHiTSModel(early_stopping="ic")
    with pytest.raises(ValueError, match=r"target_scaling must be one of .*'mad'.*got 'robust'"):
        PatchTSTModel(target_scaling="robust")
    with pytest.raises(ValueError, match="target_clip must be positive or None"):
        NHiTSModel(target_clip=0.0)
    with pytest.raises(ValueError, match="huber_delta must be positive"):
        NHiTSModel(huber_delta=-1.0)
    with pytest.raises(ValueError, match="clipped_mse.*target_clip"):
        NHiTSModel(early_stopping="clipped_mse", target_clip=None)


@pytest.mark.parametrize("kind", SMALL)
def test_a_model_json_without_the_training_options_loads_with_the_old_behaviour(kind, fitted, tmp_path):
    model = fitted[kind]
    model.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    for key in LEGACY_TRAINING:
        del meta["params"][key]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded = type(model).load(tmp_path)
    assert {k: loaded.params()[k] for k in LEGACY_TRAINING} == LEGACY_TRAINING
    w = learnable_set(8).windows(slice(None), LOOKBACK)
    np.testing.assert_array_equal(loaded.predict(w), model.predict(w))


# -- reproducibility and batch independence ----------------------------------------------------------


@pytest.mark.parametrize("kind", SMALL)
def test_same_seed_same_predictions(kind, market, fitted):
    train, val = market
    again = make(kind)
    again.fit(train, train)
    w = val.windows(slice(None), LOOKBACK)
    np.testing.assert_array_equal(again.predict(w), fitted[kind].predict(w))
    other = make(kind, seed=7)
    other.fit(train, train)
    assert not np.array_equal(other.predict(w), fitted[kind].predict(w))


def test_fit_leaves_the_global_torch_rng_alone(market):
    train, val = market
    state = torch.get_rng_state()
    make("nhits", max_epochs=1).fit(train, val)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("kind", SMALL)
def test_a_windows_forecast_does_not_depend_on_the_rest_of_the_batch(kind, market, fitted):
    _, val = market
    model = fitted[kind]
    w = val.windows(np.arange(40), LOOKBACK)
    batch = model.predict(w)
    alone = np.array([model.predict(w[i : i + 1])[0] for i in range(len(w))])
    shuffled = model.predict(w[::-1])[::-1]
    # bit-identical on the machines we tested (inference batches are padded); the contract is 1e-6 relative
    tol = 1e-6 * np.abs(batch).max()
    assert np.abs(alone - batch).max() <= tol and np.abs(shuffled - batch).max() <= tol
    # longer windows: only the last `lookback` rows count
    longer = val.windows(np.arange(40), LOOKBACK + 5)
    np.testing.assert_array_equal(model.predict(longer), batch)


# -- save / load --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SMALL)
def test_save_load_round_trip(kind, market, fitted, tmp_path):
    _, val = market
    model = fitted[kind]
    names = model.save(tmp_path)
    assert sorted(names) == ["model.json", "model.pt"]
    meta = json.loads((tmp_path / "model.json").read_text())
    assert (
        meta["kind"] == kind
        and meta["params"] == model.params()
        and len(meta["scaler"]["mean"]) == N_FEATURES
    )
    loaded = type(model).load(tmp_path)
    w = val.windows(slice(None), LOOKBACK)
    np.testing.assert_array_equal(loaded.predict(w), model.predict(w))
    assert loaded.params() == model.params()


@pytest.mark.parametrize("missing", ["model.pt", "model.json"])
def test_load_missing_file_names_it(missing, fitted, tmp_path):
    fitted["nhits"].save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ModelLoadError, match=missing.replace(".", r"\.")):
        NHiTSModel.load(tmp_path)


@pytest.mark.parametrize("kind", SMALL)
def test_load_truncated_weights_names_the_file(kind, fitted, tmp_path):
    fitted[kind].save(tmp_path)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.pt"):
        type(fitted[kind]).load(tmp_path)


def _touch(path):  # what a malicious pickle would run on load
    open(path, "w").close()


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_load_refuses_pickled_objects_without_running_them(fitted, tmp_path):
    fitted["nhits"].save(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(str(marker))}, tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match=r"model\.pt"):
        NHiTSModel.load(tmp_path)
    assert not marker.exists()


def test_load_rejects_weights_of_another_shape_or_kind(fitted, tmp_path):
    fitted["nhits"].save(tmp_path)
    with pytest.raises(ModelLoadError, match="nhits"):
        PatchTSTModel.load(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["params"]["mlp_units"] = 8  # the stored state_dict no longer fits the network
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"model\.pt"):
        NHiTSModel.load(tmp_path)


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SMALL)
def test_bad_windows_raise_clear_errors(kind, fitted):
    model = fitted[kind]
    with pytest.raises(ValueError, match="lookback=64"):
        model.predict(np.zeros((2, LOOKBACK - 1, N_FEATURES), np.float32))
    with pytest.raises(ValueError, match=f"{N_FEATURES}"):
        model.predict(np.zeros((2, LOOKBACK, N_FEATURES - 1), np.float32))
    with pytest.raises(ValueError, match="batch, length"):
        model.predict(np.zeros((LOOKBACK, N_FEATURES), np.float32))
    assert model.predict(np.zeros((0, LOOKBACK, N_FEATURES), np.float32)).shape == (0,)
    # non-finite raw values are neutralised by the scaler, not propagated
    assert np.isfinite(model.predict(np.full((1, LOOKBACK, N_FEATURES), np.nan, np.float32))).all()


def test_predict_before_fit_and_mismatched_horizon(market):
    train, val = market
    with pytest.raises(RuntimeError, match="before fit"):
        NHiTSModel().predict(np.zeros((1, LOOKBACK, N_FEATURES), np.float32))
    with pytest.raises(ValueError, match="horizon"):
        make("nhits", horizon=6).fit(train, val)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="unknown feature"):
        PatchTSTModel(channels=["logret_1", "no_such_feature"])
    with pytest.raises(ValueError, match="divisible"):
        PatchTSTModel(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="same length"):
        NHiTSModel(n_pool_kernel_size=[8, 4], n_freq_downsample=[4, 2, 1])
    with pytest.raises(ValueError, match="device"):
        NHiTSModel(device="tpu")


@pytest.mark.parametrize("cls", [NHiTSModel, PatchTSTModel])
def test_params_are_json_and_rebuild_the_model(cls):
    params = cls(seed=3).params()
    assert json.loads(json.dumps(params)) == params
    assert cls(**params).params() == params
    assert {"seed", "horizon", "lookback"} <= params.keys() and params["seed"] == 3
    assert set(LEGACY_TRAINING) <= params.keys()
    tuned = cls(target_scaling="mad", target_clip=5.0, early_stopping="rank_ic", huber_delta=0.5).params()
    assert cls(**tuned).params() == tuned and tuned["target_clip"] == 5.0


def test_both_nets_train_as_before_unless_the_robust_options_are_asked_for():
    # the robust options gave only noise-level test ICs on the real data (see PatchTST's docstring)
    for model in (NHiTSModel(), PatchTSTModel()):
        assert {k: model.params()[k] for k in LEGACY_TRAINING} == LEGACY_TRAINING
        assert model.params()["loss"] == "mse"


def test_default_channels_exist():
    assert set(DEFAULT_CHANNELS) <= set(FEATURE_NAMES) and "logret_1" in DEFAULT_CHANNELS

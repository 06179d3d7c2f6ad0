"""The torch forecasters (N-HiTS, PatchTST): they learn, they are reproducible, they save and load safely,
and a window's forecast depends on that window only."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ml.dataset import SymbolBars, WindowSet, pool
from ml.features import FEATURE_NAMES, N_FEATURES
from ml.models.base import ModelLoadError
from ml.models.nhits import NHiTSModel
from ml.models.patchtst import DEFAULT_CHANNELS, PatchTSTModel
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
    model = make(kind, max_epochs=3, patience=3)
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


def test_default_channels_exist():
    assert set(DEFAULT_CHANNELS) <= set(FEATURE_NAMES) and "logret_1" in DEFAULT_CHANNELS

"""The nets as general forecasters (fit_series / predict_series): any multivariate series in, the next
`horizon` values of chosen channels out, as in the PatchTST and N-HiTS papers' benchmarks."""

import json

import numpy as np
import pytest
import torch

from ml.models.nhits import NHiTSModel
from ml.models.patchtst import PatchTSTModel
from ml.models.series import SeriesWindows
from tests.test_torch_models import learnable_set

LOOKBACK, HORIZON = 48, 12
SMALL = {
    "nhits": (NHiTSModel, {"mlp_units": 64}),
    "patchtst": (PatchTSTModel, {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "patch_len": 12}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(kind: str, **kw):
    cls, arch = SMALL[kind]
    training = {"max_epochs": 10, "patience": 5, "batch_size": 32, "learning_rate": 3e-3, "device": "cpu"}
    return cls(lookback=LOOKBACK, horizon=HORIZON, **{**arch, **training, **kw})


@pytest.fixture(scope="module")
def series() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three noisy sinusoids (periods 12, 24, 37 bars; different levels and amplitudes), split in time;
    validation and test carry their `lookback` rows of history, as in the papers' loaders."""
    t = np.arange(700)
    waves = [(12, 0.0, 1.0, 5.0), (24, 1.0, 2.0, -3.0), (37, 2.0, 0.5, 0.0)]
    s = np.stack([a * np.sin(2 * np.pi * t / p + ph) + level for p, ph, a, level in waves], axis=1)
    s += 0.1 * np.random.default_rng(0).standard_normal(s.shape)
    return s[:450], s[450 - LOOKBACK : 575], s[575 - LOOKBACK :]


def held_out(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ws = SeriesWindows(test, LOOKBACK, HORIZON, [0, 1, 2])
    return ws.inputs(), ws.paths()


def standardized_mse(pred, truth, train) -> float:
    """The papers' metric: MSE on data standardized with the training split's statistics."""
    return float(np.mean(((pred - truth) / train.std(axis=0)) ** 2))


@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("kind", SMALL)
def test_each_net_forecasts_a_multivariate_series_far_better_than_naive_forecasts(kind, loss, series):
    train, val, test = series
    model = make(kind, loss=loss)
    report = model.fit_series(train, val)
    x, y = held_out(test)
    pred = model.predict_series(x)
    assert pred.shape == (len(x), HORIZON, 3)  # the whole horizon of every channel
    assert report.best_iteration > 0
    repeat_last = np.repeat(x[:, -1:, :], HORIZON, axis=1)
    train_mean = np.broadcast_to(train.mean(axis=0), y.shape)
    mse = standardized_mse(pred, y, train)
    # the naive forecasts score ~1.8 and ~0.95 here; the nets ~0.05 (the noise alone is ~0.01)
    assert mse < 0.25 * standardized_mse(repeat_last, y, train)
    assert mse < 0.25 * standardized_mse(train_mean, y, train)


@pytest.mark.parametrize("kind", SMALL)
def test_channel_independent_forecasts_read_only_their_own_channel(kind, series):
    train, val, test = series
    model = make(kind, max_epochs=2)
    model.fit_series(train, val)
    x, _ = held_out(test)
    changed = x.copy()
    changed[:, :, 1] = np.random.default_rng(1).normal(size=changed[:, :, 1].shape)
    before, after = model.predict_series(x), model.predict_series(changed)
    np.testing.assert_array_equal(after[:, :, [0, 2]], before[:, :, [0, 2]])
    assert not np.allclose(after[:, :, 1], before[:, :, 1])


def test_the_cross_channel_mix_head_lets_channels_inform_each_other(series):
    train, val, test = series
    model = make("patchtst", head="mix", max_epochs=2)
    model.fit_series(train, val)
    x, _ = held_out(test)
    changed = x.copy()
    changed[:, :, 1] *= 3.0
    assert not np.allclose(model.predict_series(changed)[:, :, 0], model.predict_series(x)[:, :, 0])


@pytest.mark.parametrize("kind", SMALL)
def test_target_channels_pick_the_forecast_columns(kind, series):
    train, val, test = series
    model = make(kind, max_epochs=1)
    model.fit_series(train, val, targets=[2])
    x, _ = held_out(test)
    assert model.predict_series(x).shape == (len(x), HORIZON, 1)
    with pytest.raises(RuntimeError, match="predict_series"):
        model.predict(x)
    with pytest.raises(ValueError, match="windows must be"):
        model.predict_series(x[:, :, :2])
    with pytest.raises(ValueError, match="targets"):
        model.fit_series(train, val, targets=[3])
    with pytest.raises(ValueError, match="lookback \\+ horizon = 60 rows"):
        model.fit_series(train, val[:59])


@pytest.mark.parametrize("kind", SMALL)
def test_save_load_round_trip_of_a_series_model(kind, series, tmp_path):
    train, val, test = series
    model = make(kind, max_epochs=2)
    model.fit_series(train, val, targets=[0, 2])
    model.save(tmp_path)
    loaded = type(model).load(tmp_path)
    x, _ = held_out(test)
    assert loaded.series == {"n_inputs": 3, "targets": [0, 2]}
    np.testing.assert_array_equal(loaded.predict_series(x), model.predict_series(x))


@pytest.mark.parametrize("kind", SMALL)
def test_same_seed_same_series_forecasts(kind, series):
    train, val, test = series
    x, _ = held_out(test)
    a, b = make(kind, max_epochs=2), make(kind, max_epochs=2)
    a.fit_series(train, val)
    b.fit_series(train, val)
    # same process, same thread count: the CPU path repeats itself; the tolerance only spares a machine
    # whose BLAS picks kernels differently between calls
    np.testing.assert_allclose(a.predict_series(x), b.predict_series(x), rtol=1e-5, atol=1e-6)


def test_a_model_json_from_before_the_head_option_loads_as_the_mix_head_with_its_affine(tmp_path):
    """Trading PatchTSTs were saved with the cross-channel mix head and a learnable RevIN affine."""
    data = learnable_set(128)
    model = PatchTSTModel(
        d_model=16, n_heads=2, d_ff=32, n_layers=1, affine=True, max_epochs=1, device="cpu", seed=3
    )
    model.fit(data, data)
    model.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["params"]["head"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded = PatchTSTModel.load(tmp_path)
    assert (loaded.head, loaded.affine) == ("mix", True)
    w = learnable_set(8, seed=1).windows(slice(None), 64)
    np.testing.assert_array_equal(loaded.predict(w), model.predict(w))


def test_new_defaults_rev_in_without_affine_and_channel_independence_only_for_series():
    model = PatchTSTModel()
    assert (model.affine, model.head, model.head_kind) == (False, "auto", "mix")
    model.series = {"n_inputs": 3, "targets": [0]}
    assert model.head_kind == "independent"
    with pytest.raises(ValueError, match="head must be one of"):
        PatchTSTModel(head="per_channel")


def test_the_trading_model_refuses_the_channel_independent_head():
    data = learnable_set(64)
    with pytest.raises(ValueError, match="trading model needs head 'mix'"):
        PatchTSTModel(head="independent", max_epochs=1, device="cpu").fit(data, data)

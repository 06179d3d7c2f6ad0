"""XGBoost and LightGBM forecasters: they learn, stop early, save natively, load back exactly, fail loudly."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from ml.dataset import SymbolBars, WindowSet, pool
from ml.features import FEATURE_NAMES
from ml.models.base import ModelLoadError
from ml.models.gbdt import LightGBMModel, XGBoostModel
from tests.conftest import candles, random_walk

MODELS = [XGBoostModel, LightGBMModel]
# one thread: small fits are quicker single-threaded, and far steadier on a busy machine
FAST = {"n_estimators": 300, "learning_rate": 0.1, "early_stopping_rounds": 20, "n_jobs": 1}
SIGNAL_FEATURE = FEATURE_NAMES.index("rsi_14")


@pytest.fixture(scope="module")
def market() -> WindowSet:
    return pooled_market()


def pooled_market() -> WindowSet:
    """Two random-walk symbols, ~5k anchors: real features, labels to be planted by each test."""
    bars = []
    for i in range(2):
        df = candles(random_walk(3000, seed=i))
        close_time = (df["date"] + pd.Timedelta("5min")).to_numpy(dtype="datetime64[ns]").astype(np.int64)
        bars.append(SymbolBars(f"S{i}", df, close_time))
    return pool(bars, horizon=12, lookback=64)


def with_labels(ws: WindowSet, labels: np.ndarray) -> WindowSet:
    return dataclasses.replace(ws, labels=np.asarray(labels, dtype=np.float64))


def split(ws: WindowSet) -> tuple[WindowSet, WindowSet]:
    """First 75% of anchors to train, the rest to validate (pooled order is fine for these tests)."""
    cut = int(len(ws) * 0.75)
    return ws.subset(np.arange(cut)), ws.subset(np.arange(cut, len(ws)))


def planted(ws: WindowSet, noise: float = 0.0002, seed: int = 0) -> WindowSet:
    """Labels that are a smooth function of one feature plus a little noise."""
    x = ws.tabular()[:, SIGNAL_FEATURE].astype(np.float64)
    z = (x - x.mean()) / x.std()
    rng = np.random.default_rng(seed)
    return with_labels(ws, 0.003 * np.tanh(z) + noise * rng.normal(size=len(ws)))


def newest_rows_as_windows(ws: WindowSet) -> np.ndarray:
    return ws.windows(slice(None), 1)


@pytest.fixture(scope="module", params=MODELS, ids=lambda c: c.kind)
def fitted(request, market):
    train, val = split(planted(market))
    model = request.param(**FAST)
    report = model.fit(train, val)
    return model, report, train, val


def test_each_model_learns_a_planted_signal(fitted):
    model, report, _, val = fitted
    pred = model.predict(newest_rows_as_windows(val))
    mse = np.mean((pred - val.labels) ** 2)
    zero_mse = np.mean(val.labels**2)
    assert mse < 0.1 * zero_mse
    # the report's curve is the MSE of the kept model: predict uses exactly the trees up to the best round
    assert report.val_loss[report.best_iteration] == pytest.approx(mse, rel=1e-3)
    assert report.best_iteration == int(np.argmin(report.val_loss))
    assert len(report.train_loss) == len(report.val_loss)
    assert report.device == "cpu" and report.seconds > 0


def test_early_stopping_stops_once_validation_loss_stops_improving(market):
    train, val = split(with_labels(market, np.random.default_rng(3).normal(0, 0.002, len(market))))
    for cls in MODELS:
        report = cls(n_estimators=1000, learning_rate=0.1, early_stopping_rounds=10, n_jobs=1).fit(train, val)
        # nothing to learn from noise: the best round comes early, then 10 more rounds, then stop
        assert len(report.val_loss) == report.best_iteration + 1 + 10 < 1000, cls.kind


def test_predict_reads_only_the_newest_row_and_each_row_alone(fitted):
    model, _, _, val = fitted
    windows = val.windows(np.arange(50), 8)
    pred = model.predict(windows)
    assert pred.dtype == np.float64 and pred.shape == (50,)
    scrambled = windows.copy()
    scrambled[:, :-1, :] = np.nan  # older rows are not the trees' business
    np.testing.assert_array_equal(model.predict(scrambled), pred)
    one_by_one = np.array([model.predict(windows[i : i + 1])[0] for i in range(50)])
    np.testing.assert_array_equal(one_by_one, pred)
    np.testing.assert_array_equal(model.predict(windows[::-1])[::-1], pred)


def test_missing_feature_values_are_allowed(fitted):
    model, _, _, val = fitted
    windows = newest_rows_as_windows(val)[:20].copy()
    windows[:, -1, ::2] = np.nan
    assert np.isfinite(model.predict(windows)).all()


def test_save_load_round_trip_gives_identical_predictions_from_native_files(fitted, tmp_path):
    model, _, _, val = fitted
    names = model.save(tmp_path)
    assert names == [model.MODEL_FILE, "model.json"]
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["params"] == model.params() and meta["best_iteration"] == model.best_iteration
    loaded = type(model).load(tmp_path)
    windows = newest_rows_as_windows(val)
    np.testing.assert_array_equal(loaded.predict(windows), model.predict(windows))
    np.testing.assert_array_equal(
        _native_predict(model.kind, tmp_path, windows[:, -1, :]), model.predict(windows)
    )


def _native_predict(kind: str, directory, rows: np.ndarray) -> np.ndarray:
    """The saved file read by the library alone, without our code: the format really is native."""
    if kind == "xgboost":
        import xgboost as xgb

        return xgb.Booster(model_file=str(directory / "model.ubj")).inplace_predict(rows).astype(np.float64)
    import lightgbm as lgb

    return lgb.Booster(model_file=str(directory / "model.txt")).predict(rows)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
    path.write_bytes(b"\x00not a model\xff" * 64)


def _delete(path):
    path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _garbage, _delete])
@pytest.mark.parametrize("which", ["model", "model.json"])
def test_a_damaged_or_missing_file_raises_model_load_error_naming_it(fitted, tmp_path, damage, which):
    model = fitted[0]
    model.save(tmp_path)
    name = model.MODEL_FILE if which == "model" else "model.json"
    damage(tmp_path / name)
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        type(model).load(tmp_path)


def test_loading_the_other_kinds_files_is_refused(fitted, tmp_path):
    model = fitted[0]
    model.save(tmp_path)
    other = LightGBMModel if isinstance(model, XGBoostModel) else XGBoostModel
    with pytest.raises(ModelLoadError, match=f"expected a {other.kind} model"):
        other.load(tmp_path)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.kind)
def test_the_same_seed_gives_identical_predictions(market, cls):
    train, val = split(planted(market))
    windows = newest_rows_as_windows(val)
    two_threads = {**FAST, "n_jobs": 2, "n_estimators": 30}  # the default threads must not add noise
    a = cls(**two_threads, seed=7)
    b = cls(**two_threads, seed=7)
    c = cls(**two_threads, seed=8)
    for m in (a, b, c):
        m.fit(train, val)
    np.testing.assert_array_equal(a.predict(windows), b.predict(windows))
    assert not np.array_equal(a.predict(windows), c.predict(windows))  # the seed does drive the sampling


def test_progress_is_reported_while_fitting(market):
    train, val = split(planted(market))
    calls = []
    XGBoostModel(**FAST).fit(train, val, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert calls and all(0 < done <= total for done, total, _ in calls)
    assert "val mse" in calls[0][2]


def test_bad_parameters_and_bad_input_are_refused(fitted):
    with pytest.raises(ValueError, match="unknown parameter.*max_dept"):
        XGBoostModel(max_dept=3)
    with pytest.raises(RuntimeError, match="before fit"):
        LightGBMModel().predict(np.zeros((1, 1, len(FEATURE_NAMES)), np.float32))
    with pytest.raises(ValueError, match="expected windows"):
        fitted[0].predict(np.zeros((3, len(FEATURE_NAMES)), np.float32))

"""Gradient-boosted trees on the newest feature row: XGBoost and LightGBM regressors of the forward return.

Both read only the newest row of each window (lookback 1), fit squared error on the label, early-stop on
the validation MSE and keep only the trees up to the best round, so the in-memory model and the saved one
are the same model. NaN features are allowed: both libraries learn a default direction for missing values.

Files are the libraries' own formats (XGBoost UBJSON `model.ubj`, LightGBM text `model.txt`) next to a
`model.json` holding the hyper-parameters and the best round. Nothing is pickled.

`FitReport.best_iteration` is the 0-based round with the lowest validation MSE, an index into `val_loss`;
the saved model holds `best_iteration + 1` trees.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import abstractmethod
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ml.dataset import WindowSet
from ml.features import N_FEATURES
from ml.models.base import FitReport, ForecastModel, ModelLoadError, Progress, read_model_json

META_FILE = "model.json"
PROGRESS_EVERY = 25  # rounds between progress reports


SMALL_BATCH = 4096


def predict_threads(rows: int, n_jobs: int) -> int:
    """One thread for the small per-bar batches of a strategy: waking a thread pool costs more than the
    trees, and on a busy machine spinning workers stall the trading loop. Big research batches use n_jobs."""
    return 1 if rows < SMALL_BATCH else n_jobs


class TreeModel(ForecastModel):
    """What XGBoost and LightGBM share: params, input checks, model.json, load/save around the booster."""

    kind: ClassVar[str]
    library: ClassVar[str]  # the package whose native format MODEL_FILE is
    MODEL_FILE: ClassVar[str]
    DEFAULTS: ClassVar[dict[str, Any]]
    lookback = 1
    batch_invariant = True  # each row walks the trees and sums its leaves alone, in tree order

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"{self.kind}: unknown parameter(s) {unknown}; known: {sorted(self.DEFAULTS)}")
        self._params = {**self.DEFAULTS, **params}
        self._booster: Any = None
        self.best_iteration: int | None = None

    def params(self) -> dict:
        return dict(self._params)

    def fit(self, train: WindowSet, val: WindowSet, progress: Progress = None) -> FitReport:
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"{self.kind}: empty training or validation set ({len(train)}, {len(val)} rows)")
        started = time.perf_counter()
        booster, train_loss, val_loss = self._train(
            train.tabular(), train.labels, val.tabular(), val.labels, progress
        )
        best = int(np.argmin(val_loss))
        self._booster = self._keep_rounds(booster, best + 1)
        self.best_iteration = best
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(
                len(val_loss), len(val_loss), f"stopped; best round {best + 1}, val mse {val_loss[best]:.4g}"
            )
        return FitReport(best, val_loss, train_loss, seconds, "cpu")

    def predict(self, windows: np.ndarray) -> np.ndarray:
        if self._booster is None:
            raise RuntimeError(f"{self.kind}: predict before fit or load")
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[2] != N_FEATURES or windows.shape[1] < 1:
            raise ValueError(
                f"{self.kind}: expected windows (batch, length, {N_FEATURES}), got {windows.shape}"
            )
        if len(windows) == 0:
            return np.empty(0, dtype=np.float64)
        rows = np.ascontiguousarray(windows[:, -1, :], dtype=np.float32)
        return np.asarray(self._predict_rows(rows), dtype=np.float64)

    def save(self, directory: Path) -> list[str]:
        if self._booster is None:
            raise RuntimeError(f"{self.kind}: save before fit or load")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_booster(directory / self.MODEL_FILE)
        meta = {
            "kind": self.kind,
            "model_file": self.MODEL_FILE,
            "model_sha256": _sha256(directory / self.MODEL_FILE),
            "params": self._params,
            "best_iteration": self.best_iteration,
            "trees": self.best_iteration + 1,
            "n_features": N_FEATURES,
            "library": {self.library: version(self.library)},
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return [self.MODEL_FILE, META_FILE]

    @classmethod
    def load(cls, directory: Path) -> TreeModel:
        directory = Path(directory)
        meta = read_model_json(directory / META_FILE, cls.kind)
        try:
            model = cls(**meta["params"])
            best = int(meta["best_iteration"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(
                f"{directory / META_FILE}: not a valid {cls.kind} model.json ({err})"
            ) from err
        path = directory / cls.MODEL_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file missing")
        # the native parsers are not safe on damaged input (LightGBM aborts the process on a truncated
        # file), so only bytes that match what save wrote ever reach them
        if _sha256(path) != meta.get("model_sha256"):
            raise ModelLoadError(
                f"{path}: corrupt model file (its sha256 differs from the one in model.json)"
            )
        try:
            booster = model._load_booster(path)
            trees = model._rounds(booster)
        except Exception as err:  # the libraries raise their own error types on unreadable files
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{path}: unreadable {cls.library} model ({first_line})") from err
        if trees != best + 1:
            raise ModelLoadError(
                f"{path}: holds {trees} trees, model.json says {best + 1}; the file is damaged"
            )
        model._booster, model.best_iteration = booster, best
        return model

    # --- what each library does -----------------------------------------------------------------------

    @abstractmethod
    def _train(
        self, x_train, y_train, x_val, y_val, progress: Progress
    ) -> tuple[Any, list[float], list[float]]:
        """Boost with early stopping; return (booster, train MSE per round, val MSE per round)."""

    @abstractmethod
    def _keep_rounds(self, booster: Any, rounds: int) -> Any:
        """A booster holding only the first `rounds` rounds."""

    @abstractmethod
    def _rounds(self, booster: Any) -> int: ...

    @abstractmethod
    def _predict_rows(self, rows: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _save_booster(self, path: Path) -> None: ...

    @abstractmethod
    def _load_booster(self, path: Path) -> Any: ...


class XGBoostModel(TreeModel):
    kind = "xgboost"
    library = "xgboost"
    MODEL_FILE = "model.ubj"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_estimators": 2000,
        "learning_rate": 0.05,
        "max_depth": 6,
        "min_child_weight": 50.0,  # rows per leaf (hessian is 1 per row for squared error)
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "reg_alpha": 0.0,
        "max_bin": 256,
        "early_stopping_rounds": 50,
        "seed": 0,
        "n_jobs": 2,
    }

    def _booster_params(self) -> dict:
        p = self._params
        return {
            "objective": "reg:squarederror",
            "eval_metric": "rmse",
            "tree_method": "hist",
            "eta": p["learning_rate"],
            "max_depth": p["max_depth"],
            "min_child_weight": p["min_child_weight"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "lambda": p["reg_lambda"],
            "alpha": p["reg_alpha"],
            "max_bin": p["max_bin"],
            "seed": p["seed"],
            "nthread": p["n_jobs"],
            "verbosity": 0,
        }

    def _train(self, x_train, y_train, x_val, y_val, progress):
        import xgboost as xgb

        p = self._params
        dtrain = xgb.DMatrix(x_train, label=y_train, missing=np.nan, nthread=p["n_jobs"])
        dval = xgb.DMatrix(x_val, label=y_val, missing=np.nan, nthread=p["n_jobs"])
        curves: dict = {}
        callbacks = [_xgb_progress(progress, p["n_estimators"])] if progress is not None else None
        booster = xgb.train(
            self._booster_params(),
            dtrain,
            num_boost_round=p["n_estimators"],
            evals=[(dtrain, "train"), (dval, "val")],  # early stopping watches the last one
            early_stopping_rounds=p["early_stopping_rounds"],
            evals_result=curves,
            verbose_eval=False,
            callbacks=callbacks,
        )
        return booster, _squared(curves["train"]["rmse"]), _squared(curves["val"]["rmse"])

    def _keep_rounds(self, booster, rounds):
        return booster[:rounds]

    def _rounds(self, booster) -> int:
        return booster.num_boosted_rounds()

    def _predict_rows(self, rows):
        threads = predict_threads(len(rows), self._params["n_jobs"])
        if threads != getattr(self, "_predict_nthread", None):
            self._booster.set_param({"nthread": threads})
            self._predict_nthread = threads
        return self._booster.inplace_predict(rows, missing=np.nan)

    def _save_booster(self, path):
        self._booster.save_model(str(path))

    def _load_booster(self, path):
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))
        booster.set_param({"nthread": self._params["n_jobs"]})  # threads are not part of the saved model
        return booster


class LightGBMModel(TreeModel):
    kind = "lightgbm"
    library = "lightgbm"
    MODEL_FILE = "model.txt"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_estimators": 2000,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "max_depth": -1,
        "min_data_in_leaf": 100,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "max_bin": 255,
        "early_stopping_rounds": 50,
        "seed": 0,
        "n_jobs": 2,
    }

    def _booster_params(self) -> dict:
        p = self._params
        return {
            "objective": "regression",
            "metric": "l2",
            "learning_rate": p["learning_rate"],
            "num_leaves": p["num_leaves"],
            "max_depth": p["max_depth"],
            "min_data_in_leaf": p["min_data_in_leaf"],
            "feature_fraction": p["feature_fraction"],
            "bagging_fraction": p["bagging_fraction"],
            "bagging_freq": p["bagging_freq"],
            "lambda_l2": p["lambda_l2"],
            "max_bin": p["max_bin"],
            "seed": p["seed"],
            "num_threads": p["n_jobs"],
            "deterministic": True,
            # many rows, few columns: row-wise histograms; forcing it also skips the timing-based choice,
            # which would otherwise make the run depend on the machine's speed
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _train(self, x_train, y_train, x_val, y_val, progress):
        import lightgbm as lgb

        p = self._params
        params = self._booster_params()
        dtrain = lgb.Dataset(x_train, label=y_train, params=params)
        dval = lgb.Dataset(x_val, label=y_val, reference=dtrain, params=params)
        curves: dict = {}
        callbacks = [
            lgb.early_stopping(p["early_stopping_rounds"], first_metric_only=True, verbose=False),
            lgb.record_evaluation(curves),
        ]
        if progress is not None:
            callbacks.append(_lgb_progress(progress, p["n_estimators"]))
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=p["n_estimators"],
            valid_sets=[dtrain, dval],
            valid_names=["train", "val"],
            callbacks=callbacks,
        )
        return booster, list(map(float, curves["train"]["l2"])), list(map(float, curves["val"]["l2"]))

    def _keep_rounds(self, booster, rounds):
        import lightgbm as lgb

        # a round trip through the text format is how LightGBM drops trees; it is also what save writes
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))

    def _rounds(self, booster) -> int:
        return booster.current_iteration()

    def _predict_rows(self, rows):
        return self._booster.predict(rows, num_threads=predict_threads(len(rows), self._params["n_jobs"]))

    def _save_booster(self, path):
        self._booster.save_model(str(path))

    def _load_booster(self, path):
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _squared(rmse: list[float]) -> list[float]:
    return [float(r) ** 2 for r in rmse]


def _xgb_progress(progress, total: int):
    import xgboost as xgb

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            if (epoch + 1) % PROGRESS_EVERY == 0:
                progress(epoch + 1, total, f"val mse {evals_log['val']['rmse'][-1] ** 2:.4g}")
            return False  # never stops training itself

    return Report()


def _lgb_progress(progress, total: int):
    def report(env) -> None:
        done = env.iteration + 1
        if done % PROGRESS_EVERY == 0:
            val = next(r[2] for r in env.evaluation_result_list if r[0] == "val")
            progress(done, total, f"val mse {val:.4g}")

    return report


__all__ = ["LightGBMModel", "TreeModel", "XGBoostModel"]

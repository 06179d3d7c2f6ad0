"""The vote: forecasts -> direction and confidence, weights renormalised over the models that can vote."""

from pathlib import Path

import numpy as np
import pytest

from ml.ensemble import LONG, SHORT, Ensemble, EnsembleError, Member
from ml.models.base import FitReport, ForecastModel


class Fixed(ForecastModel):
    """Forecasts the newest row's first feature: enough to drive the vote from the test."""

    kind = "fixed"

    def fit(self, train, val, progress=None) -> FitReport:
        return FitReport(0)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0].astype(np.float64)

    def save(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def load(cls, directory: Path) -> "Fixed":
        return cls()


def member(
    kind: str, weight: float, pred_std: float = 0.01, pred_mean: float = 0.0, val_mse: float = 1.0e-4
) -> Member:
    """A model whose validation record has the zero forecast at MSE 1.2e-4: below that it has skill."""
    skill = {"mse": val_mse, "zero_mse": 1.2e-4, "pred_std": pred_std}
    return Member(kind, f"{kind}-1", Fixed(), weight, pred_std, pred_mean, skill)


def windows(*values: float) -> np.ndarray:
    w = np.zeros((len(values), 1, 49), dtype=np.float32)
    w[:, 0, 0] = values
    return w


def test_agreeing_models_one_spread_out_give_confidence_068():
    ens = Ensemble([member("a", 0.5), member("b", 0.5)])
    votes = ens.vote(windows(0.01, -0.01, 0.0))
    np.testing.assert_allclose(votes.confidence, [0.6827, 0.6827, 0.0], atol=1e-4)
    assert votes.direction.tolist() == [LONG, SHORT, 0]


def test_votes_are_centred_on_each_models_validation_mean():
    biased = Ensemble([member("a", 1.0, pred_std=0.01, pred_mean=0.05)])
    votes = biased.vote(windows(0.05))  # the model's usual forecast is no signal at all
    assert votes.confidence[0] == pytest.approx(0.0, abs=1e-6)


def test_a_constant_forecaster_is_left_out_and_the_weights_renormalised():
    ens = Ensemble([member("a", 0.25), member("dead", 0.30, pred_std=0.0), member("b", 0.20)])
    assert ens.kinds == ["a", "b"]
    assert ens.missing["dead"].startswith("dead-1: constant (validation forecast std 0 <= 1e-08")
    np.testing.assert_allclose(ens.weights, [0.25 / 0.45, 0.20 / 0.45])


def test_a_spread_of_float_noise_is_constant_too():
    # 8.7e-19 is what a LightGBM that never split spreads: as a vote's scale it would blow noise up to +-4
    ens = Ensemble([member("a", 0.5), member("flat", 0.5, pred_std=8.7e-19)])
    assert ens.kinds == ["a"] and ens.missing["flat"].startswith("flat-1: constant")


def test_a_model_worse_than_the_zero_forecast_on_validation_is_left_out_though_its_forecasts_vary(caplog):
    ens = Ensemble([member("a", 0.25), member("drift", 0.25, val_mse=1.3e-4), member("b", 0.50)])
    assert ens.kinds == ["a", "b"]
    assert ens.missing["drift"] == (
        "drift-1: no-skill (validation MSE 0.00013 is not below the zero forecast's 0.00012)"
    )
    np.testing.assert_allclose(ens.weights, [1 / 3, 2 / 3])
    assert "reduced model count: 2 of 3 models" in caplog.text


def test_a_model_with_no_validation_record_never_votes():
    ens = Ensemble([member("a", 0.5), Member("old", "old-1", Fixed(), 0.5, 0.01)])
    why = "no validation record of skill was registered with it; retrain it"
    assert ens.missing == {"old": f"old-1: no-skill ({why})"}


def test_no_model_left_refuses_with_the_reasons():
    refusal = r"no usable model, refusing to start \(dead: dead-1: constant"
    with pytest.raises(EnsembleError, match=refusal) as err:
        Ensemble([member("dead", 1.0, pred_std=0.0)])
    assert list(err.value.missing) == ["dead"]


def test_flat_below_turns_weak_votes_flat():
    ens = Ensemble([member("a", 1.0)], flat_below=0.5)
    assert ens.vote(windows(0.001, 0.02)).direction.tolist() == [0, LONG]

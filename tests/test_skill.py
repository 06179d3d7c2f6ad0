"""The one rule every model kind is held to before it may vote or be promoted (ml/skill.py)."""

import numpy as np
import pytest

from ml.skill import CONSTANT, HEALTHY, NO_SKILL, assess, verdict

LABELS = np.array([0.002, -0.001, 0.003, -0.004])  # the zero forecast's MSE: 7.5e-6


def test_a_forecast_that_beats_the_zero_forecast_on_validation_is_usable():
    skill = assess(LABELS / 2, LABELS)  # squared errors a quarter of the labels'
    assert skill["zero_mse"] == pytest.approx(7.5e-6) and skill["mse"] == pytest.approx(7.5e-6 / 4)
    assert skill["rows"] == 4
    assert skill["status"] == HEALTHY and skill["reason"] is None
    assert verdict(skill).usable


def test_a_forecast_no_better_than_zero_is_no_skill_even_when_it_only_ties():
    assert assess(-LABELS, LABELS)["status"] == NO_SKILL
    tie = {"mse": 7.5e-6, "zero_mse": 7.5e-6, "pred_std": 0.002}  # strictly below, or it adds only noise
    assert verdict(tie) == (NO_SKILL, "validation MSE 7.5e-06 is not below the zero forecast's 7.5e-06")


def test_a_constant_forecast_is_constant_whatever_its_score():
    # a constant at the labels' mean beats zero when they drift, yet says nothing about any one bar
    drifting = LABELS + 0.01
    skill = assess(np.full(4, drifting.mean()), drifting)
    assert skill["mse"] < skill["zero_mse"]
    assert skill["status"] == CONSTANT
    assert skill["reason"] == "validation forecast std 0 <= 1e-08: it learned nothing"


def test_a_missing_or_broken_record_is_no_skill():
    assert verdict(None).status == NO_SKILL
    assert verdict({"mse": None, "zero_mse": 1e-4, "pred_std": 0.01}) == (
        NO_SKILL,
        "its validation forecasts or their scores are not finite",
    )
    assert assess(np.array([np.nan, 0, 0, 0]), LABELS)["status"] == NO_SKILL

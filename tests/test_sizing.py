"""Position sizing (SPEC section 6): margin = clamp(equity * risk * (1 + (conf - 0.70) * 2) * rl, min, max)."""

import math

import pytest

from actors.risk_profile import RiskProfile, load_risk_profile
from strategies.sizing import Sizing, position_size

MODERATE = load_risk_profile("moderate")  # 2% risk, margin 100..2000 USD, 20x
CONSERVATIVE = load_risk_profile("conservative")  # 1% risk, margin 100..1000 USD, 10x
AGGRESSIVE = load_risk_profile("aggressive")  # 5% risk, margin 100..3000 USD, 30x


def test_moderate_at_085_confidence_puts_up_260_usd():
    # base 10_000 * 2% = 200; confidence factor 1 + (0.85 - 0.70) * 2 = 1.3 -> 260 USD margin
    s = position_size(10_000, 0.85, MODERATE, account_leverage=10)
    assert s.requested_margin == pytest.approx(260.0)
    assert s.margin == pytest.approx(260.0)
    assert s.leverage == 10.0
    assert s.notional == pytest.approx(2_600.0)
    assert s.clamped == ""


def test_confidence_at_the_pivot_gives_the_base():
    assert position_size(10_000, 0.70, MODERATE, 5).margin == pytest.approx(200.0)


def test_lower_confidence_gives_less_margin():
    # 1 + (0.60 - 0.70) * 2 = 0.8 -> 160 USD
    assert position_size(10_000, 0.60, MODERATE, 5).margin == pytest.approx(160.0)


def test_rl_adjustment_multiplies_the_request():
    profile = MODERATE.model_copy(update={"rl_adjustment": 1.5})
    assert position_size(10_000, 0.85, profile, 5).margin == pytest.approx(390.0)


def test_request_above_the_maximum_is_cut_to_it():
    # 100_000 * 2% * 1.4 = 2800 -> 2000 (moderate's max_position_usd)
    s = position_size(100_000, 0.90, MODERATE, 20)
    assert s.requested_margin == pytest.approx(2_800.0)
    assert s.margin == 2_000.0
    assert s.notional == 40_000.0
    assert s.clamped == "max"


def test_request_below_the_minimum_is_raised_to_it():
    # 3000 * 2% * 1.0 = 60 -> 100 (min_position_usd)
    s = position_size(3_000, 0.70, MODERATE, 10)
    assert s.requested_margin == pytest.approx(60.0)
    assert s.margin == 100.0
    assert s.notional == 1_000.0
    assert s.clamped == "min"


def test_request_exactly_at_a_limit_is_not_reported_as_clamped():
    # 100_000 * 2% * 1.0 = 2000 = max_position_usd
    s = position_size(100_000, 0.70, MODERATE, 1)
    assert s.margin == pytest.approx(2_000.0)
    assert s.clamped == ""


@pytest.mark.parametrize(
    ("profile", "account_leverage", "expected"),
    [
        (MODERATE, 50, 20.0),  # cut to max_leverage
        (CONSERVATIVE, 50, 10.0),
        (AGGRESSIVE, 50, 30.0),
        (MODERATE, 20, 20.0),  # exactly at the maximum
        (MODERATE, 0.5, 1.0),  # at least 1x
        (MODERATE, 7, 7.0),
    ],
)
def test_leverage_is_held_between_1x_and_the_profile_maximum(profile, account_leverage, expected):
    s = position_size(10_000, 0.85, profile, account_leverage)
    assert s.leverage == expected
    assert s.notional == pytest.approx(s.margin * expected)


def test_profiles_size_the_same_signal_differently():
    # 10_000 equity, confidence 0.85 (factor 1.3): 1% -> 130, 2% -> 260, 5% -> 650
    assert position_size(10_000, 0.85, CONSERVATIVE, 5).margin == pytest.approx(130.0)
    assert position_size(10_000, 0.85, MODERATE, 5).margin == pytest.approx(260.0)
    assert position_size(10_000, 0.85, AGGRESSIVE, 5).margin == pytest.approx(650.0)


@pytest.mark.parametrize(
    ("equity", "confidence", "account_leverage"),
    [
        (0.0, 0.85, 10),
        (-500.0, 0.85, 10),
        (math.nan, 0.85, 10),
        (math.inf, 0.85, 10),
        (10_000, math.nan, 10),
        (10_000, 0.85, math.nan),
        (10_000, 0.85, math.inf),
    ],
)
def test_inputs_that_cannot_be_sized_give_no_position(equity, confidence, account_leverage):
    s = position_size(equity, confidence, MODERATE, account_leverage)
    assert s.margin == 0.0
    assert s.notional == 0.0
    assert s.clamped == ""
    assert 1.0 <= s.leverage <= MODERATE.max_leverage


def test_a_non_positive_request_is_not_raised_to_the_minimum():
    # 1 + (0.10 - 0.70) * 2 = -0.2: the formula asks for no position; the minimum clamp does not invent one
    s = position_size(10_000, 0.10, MODERATE, 10)
    assert s.requested_margin == pytest.approx(-40.0)
    assert s.margin == 0.0 and s.notional == 0.0


def test_sizing_is_a_frozen_value():
    s = position_size(10_000, 0.85, RiskProfile(), 10)
    assert isinstance(s, Sizing)
    with pytest.raises(AttributeError):
        s.margin = 1.0

"""A backtest collects young garbage rarely while it runs, and leaves the process' GC settings as it found them."""

import gc

import pytest

from backtests.runner import rare_young_gc_passes


def test_the_young_generation_threshold_is_raised_only_inside_the_run():
    before = gc.get_threshold()
    with rare_young_gc_passes(threshold=12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
    assert gc.get_threshold() == before


def test_a_failing_run_restores_the_threshold_too():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), rare_young_gc_passes():
        raise RuntimeError("the engine failed")
    assert gc.get_threshold() == before

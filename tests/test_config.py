"""A bad config fails before any work, naming the field and what was expected."""

import pytest

from backtests.config import build_component_config, load_backtest_config, parse_backtest_config
from backtests.runner import run_backtest
from quantum_trader.config import ConfigError

STRATEGY = [{"path": "strategies.ema_cross:EmaCross"}]


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_backtest_config(data, "test.yaml")
    return str(err.value)


def test_an_unknown_field_is_named():
    msg = error_of({"strategies": STRATEGY, "venue": {"slipage_bps": 3}})
    assert "venue.slipage_bps" in msg and "unknown field" in msg


def test_a_bad_choice_lists_the_allowed_values():
    msg = error_of({"strategies": STRATEGY, "venue": {"fill_timing": "instant"}})
    assert (
        "venue.fill_timing" in msg and "'next_bar_close'" in msg and "'bar_close'" in msg and "instant" in msg
    )


def test_an_out_of_range_number_names_the_field_and_the_bound():
    msg = error_of({"strategies": STRATEGY, "venue": {"default_leverage": 500}})
    assert "venue.default_leverage" in msg and "125" in msg


def test_a_universe_larger_than_200_is_refused():
    assert "universe.size" in error_of({"strategies": STRATEGY, "universe": {"size": 201}})


def test_at_least_one_strategy_is_required():
    assert "strategies" in error_of({"strategies": []})


def test_a_strategy_that_cannot_be_imported_is_named():
    msg = error_of({"strategies": [{"path": "strategies.nope:Nothing"}]})
    assert "strategies.0.path" in msg and "strategies.nope" in msg


def test_a_strategy_module_that_fails_to_import_names_the_path_and_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "qt_syntax_error.py").write_text("SIZE = 1\nPERIODS = (3, 5\n")
    (tmp_path / "qt_missing_dependency.py").write_text("import qt_no_such_package\n")
    monkeypatch.syspath_prepend(tmp_path)
    msg = error_of({"strategies": [{"path": "qt_syntax_error:Mine"}]})
    assert (
        "strategies.0.path: Value error, cannot import module 'qt_syntax_error': "
        f"{tmp_path}/qt_syntax_error.py:2: SyntaxError: '(' was never closed" in msg
    )
    msg = error_of({"strategies": [{"path": "qt_missing_dependency:Mine"}]})
    assert (
        "strategies.0.path: Value error, cannot import module 'qt_missing_dependency': "
        f"{tmp_path}/qt_missing_dependency.py:1: ModuleNotFoundError: No module named 'qt_no_such_package'"
        in msg
    )


def test_a_strategy_path_without_a_class_is_explained():
    assert "module:Class" in error_of({"strategies": [{"path": "strategies.ema_cross"}]})


def test_an_interval_the_catalog_cannot_hold_lists_the_allowed_ones():
    msg = error_of({"strategies": STRATEGY, "universe": {"interval": "7m"}})
    assert "universe.interval: Value error, unsupported interval '7m'" in msg
    assert (
        "allowed: 1m, 2m, 3m, 4m, 5m, 6m, 10m, 12m, 15m, 20m, 30m, 1h, 2h, 3h, 4h, 6h, 8h, 12h or whole days"
        in msg
    )


def test_selecting_symbols_needs_a_symbol_list():
    assert "symbols" in error_of({"strategies": STRATEGY, "universe": {"select": "symbols"}})


def test_a_period_that_ends_before_it_starts_is_refused():
    msg = error_of({"strategies": STRATEGY, "period": {"start": "2025-02-01", "end": "2025-01-01"}})
    assert "period" in msg and "before" in msg


def test_a_strategy_config_field_of_the_wrong_type_is_named():
    cfg = parse_backtest_config(
        {"strategies": [{"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": "x"}}]}
    )
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.config\.fast_period"):
        build_component_config(cfg.strategies[0], "strategies[0]")


def test_an_unknown_strategy_config_field_lists_the_allowed_ones():
    cfg = parse_backtest_config(
        {"strategies": [{"path": "strategies.ema_cross:EmaCross", "config": {"fastt": 3}}]}
    )
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['fastt'\].*fast_period"):
        build_component_config(cfg.strategies[0], "strategies[0]")


def test_a_missing_file_and_broken_yaml_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_backtest_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategies: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_backtest_config(bad)


def test_an_unknown_symbol_in_the_universe_lists_what_the_catalog_has(walk_catalog):
    cfg = parse_backtest_config(
        {
            "catalog": str(walk_catalog),
            "universe": {"select": "symbols", "symbols": ["NOPEUSDT"]},
            "strategies": STRATEGY,
        }
    )
    with pytest.raises(ConfigError, match=r"NOPEUSDT.*T0USDT"):
        run_backtest(cfg, progress=False)


def test_every_shipped_backtest_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/backtests/*.yaml"))
    assert configs
    for path in configs:
        cfg = load_backtest_config(path)
        for i, comp in enumerate(cfg.strategies):
            build_component_config(comp, f"strategies[{i}]")


def test_an_unknown_exit_or_risk_profile_lists_the_known_ones():
    msg = error_of({"strategies": STRATEGY, "exit_profile": "challenge_1000"})
    assert "exit_profile" in msg and "'challenge_100'" in msg and "'default'" in msg
    msg = error_of({"strategies": STRATEGY, "risk_profile": "reckless"})
    assert "risk_profile" in msg and "'aggressive'" in msg and "'conservative'" in msg and "'moderate'" in msg


def test_a_bad_value_in_a_profile_file_names_the_field_and_the_bound(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("risk_per_trade: 0.5\nsupervisor: {mode: enforced}\n")
    msg = error_of({"strategies": STRATEGY, "risk_profile": str(profile)})
    assert "risk_per_trade" in msg and "0.05" in msg
    assert "supervisor.mode" in msg and "'enforce'" in msg and "'observe'" in msg


def test_an_inconsistent_exit_profile_says_why():
    from strategies.exit_profile import exit_profile_from

    with pytest.raises(ConfigError) as err:
        exit_profile_from({"stop_r": 2.0, "take_profits": [{"r": 1.0, "fraction": 0.5}]})
    msg = str(err.value)
    assert "stop_r 2.0 exceeds max_stop_r 1.5" in msg
    with pytest.raises(ConfigError) as err:
        exit_profile_from({"take_profits": [{"r": 1.0, "fraction": 0.5}]})
    assert "fractions must add up to 1" in str(err.value)

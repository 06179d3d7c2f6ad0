"""The live config file: what `qt live CONFIG` accepts, and how a bad one is refused (the field, the allowed
values), before anything connects."""

from pathlib import Path

import pytest

from live.config import LiveConfig, load_live_config, parse_live_config
from live.node import KEY_VARIABLES, build_live_node, check_keys, check_mainnet
from quantum_trader.config import ConfigError

EMA = {"path": "strategies.ema_cross:EmaCross"}
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "live").glob("*.yaml"))


def config(**fields) -> LiveConfig:
    return parse_live_config({"symbols": ["BTCUSDT"], "strategies": [EMA]} | fields)


def refused(match: str, **fields):
    with pytest.raises(ConfigError, match=match) as err:
        config(**fields)
    return str(err.value)


# ---- defaults ------------------------------------------------------------------------------------------
def test_the_defaults_are_testnet_5m_with_redis_streams_and_no_paper():
    cfg = config()
    assert cfg.environment == "testnet" and cfg.interval == "5m"
    assert cfg.redis.enabled and cfg.streams_enabled and cfg.message_bus.heartbeat_seconds > 0
    assert not cfg.paper and not cfg.flatten_on_stop and cfg.endpoints is None
    assert 1 <= cfg.leverage.default <= 125


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_in_configs_live_loads(path):
    cfg = load_live_config(path)
    assert cfg.environment in ("testnet", "demo")  # no example trades on mainnet


def test_redis_enabled_false_needs_no_other_redis_field_and_switches_the_streams_off():
    cfg = config(redis={"enabled": False})
    assert not cfg.redis.enabled and not cfg.streams_enabled


# ---- errors name the field and what is allowed ---------------------------------------------------------
def test_an_unknown_environment_names_the_field_and_the_allowed_values():
    message = refused("environment", environment="mainnet")
    assert "'testnet', 'demo' or 'live'" in message and "'mainnet'" in message


def test_a_bad_symbol_names_the_field_and_the_expected_form():
    message = refused(r"symbols: .*'btc-usd'", symbols=["BTCUSDT", "btc-usd"])
    assert "USDT-quoted Binance symbol such as BTCUSDT" in message


def test_symbols_must_be_given_and_unique():
    with pytest.raises(ConfigError, match="symbols"):
        parse_live_config({"strategies": [EMA]})
    refused("duplicated symbols", symbols=["BTCUSDT", "BTCUSDT"])


def test_an_unknown_interval_lists_the_binance_intervals():
    message = refused("interval", interval="7m")
    assert "'1m'" in message and "'5m'" in message and "'1d'" in message


def test_leverage_outside_1_to_125_is_refused_by_field():
    refused(r"leverage\.default", leverage={"default": 0})
    refused(r"leverage\.default", leverage={"default": 126})
    refused(r"within \[1, 125\]", leverage={"per_symbol": {"BTCUSDT": 200}})


def test_per_symbol_leverage_for_a_symbol_not_traded_is_refused():
    refused(r"leverage.per_symbol: \['ETHUSDT'\] not in symbols", leverage={"per_symbol": {"ETHUSDT": 3}})


def test_an_endpoint_override_is_refused_for_environment_live():
    endpoints = {"http": "http://127.0.0.1:18765", "ws": "ws://127.0.0.1:18765"}
    assert config(endpoints=endpoints, environment="demo").endpoints.http == "http://127.0.0.1:18765"
    refused("only allowed with environment testnet or demo", endpoints=endpoints, environment="live")


def test_endpoint_urls_must_have_the_right_scheme():
    refused(r"endpoints\.http.*http:// or https://", endpoints={"http": "ws://x:1", "ws": "ws://x:1"})
    refused(r"endpoints\.ws.*ws:// or wss://", endpoints={"http": "http://x:1", "ws": "http://x:1"})


def test_a_misspelt_field_is_an_unknown_field():
    refused(r"flaten_on_stop: unknown field", flaten_on_stop=True)
    refused(r"redis\.prot: unknown field", redis={"prot": 1})


def test_a_trader_id_without_a_hyphen_is_refused():
    refused(r"trader_id.*NAME-TAG", trader_id="QT001")


def test_a_bad_component_path_or_profile_is_refused_like_in_a_backtest():
    refused(r"strategies\.0\.path.*cannot import module", strategies=[{"path": "strategies.nope:Nope"}])
    refused(r"exit_profile.*unknown profile 'fast'", exit_profile="fast")


# ---- mainnet gating and keys ---------------------------------------------------------------------------
def test_mainnet_needs_both_the_flag_and_environment_live():
    check_mainnet(config(environment="live"), mainnet=True)  # both: allowed
    check_mainnet(config(), mainnet=False)  # testnet, no flag: allowed
    with pytest.raises(ConfigError, match="pass --mainnet as well"):
        check_mainnet(config(environment="live"), mainnet=False)
    with pytest.raises(ConfigError, match=r"--mainnet needs `environment: live`.*it says 'testnet'"):
        check_mainnet(config(), mainnet=True)
    with pytest.raises(ConfigError, match="it says 'demo'"):
        check_mainnet(config(environment="demo"), mainnet=True)


def test_building_a_node_applies_the_mainnet_gate_before_anything_else():
    with pytest.raises(ConfigError, match="pass --mainnet"):
        build_live_node(config(environment="live", redis={"enabled": False}), mainnet=False, environ={})


@pytest.mark.parametrize("environment", ["testnet", "demo", "live"])
def test_a_missing_key_names_the_variable_of_the_environment(environment):
    key_var, secret_var = KEY_VARIABLES[environment]
    with pytest.raises(ConfigError, match=f"^{key_var} is not set"):
        check_keys(config(environment=environment), environ={})
    with pytest.raises(ConfigError, match=f"^{secret_var} is not set") as err:
        check_keys(config(environment=environment), environ={key_var: "SENTINEL-KEY-VALUE"})
    assert "SENTINEL" not in str(err.value) and "\n" not in str(err.value)


def test_the_testnet_reads_the_futures_testnet_variables():
    assert KEY_VARIABLES["testnet"] == (
        "BINANCE_FUTURES_TESTNET_API_KEY",
        "BINANCE_FUTURES_TESTNET_API_SECRET",
    )
    assert KEY_VARIABLES["live"] == ("BINANCE_API_KEY", "BINANCE_API_SECRET")
    assert KEY_VARIABLES["demo"] == ("BINANCE_DEMO_API_KEY", "BINANCE_DEMO_API_SECRET")


def test_only_hmac_secrets_are_accepted_and_the_error_does_not_show_the_secret():
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----"
    env = {"BINANCE_FUTURES_TESTNET_API_KEY": "k", "BINANCE_FUTURES_TESTNET_API_SECRET": pem}
    with pytest.raises(ConfigError, match="HMAC keys only") as err:
        check_keys(config(), environ=env)
    assert "MC4CAQ" not in str(err.value)


def test_paper_trading_needs_no_keys():
    check_keys(config(paper=True), environ={})

"""PPO position sizing (ml/rl, strategies/rl_sizing.py): the environment, the saved agent, and the strategy
asking it at entry time in shadow and active mode."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

from actors.risk_profile import RiskProfile
from ml.dataset import SymbolBars
from ml.models.base import ModelLoadError
from ml.registry import ModelRegistry
from ml.research import SignalTable
from ml.rl.agent import load_agent, save_agent
from ml.rl.env import RewardConfig, SizingEnv, multiplier, sizing_data
from ml.rl.observation import OBS_DIM, ObsNorm
from strategies.sizing import position_size
from tests.conftest import candles, random_walk

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]


def symbol_bars(frames: dict[str, pd.DataFrame]) -> list[SymbolBars]:
    out = []
    for symbol, frame in frames.items():
        close_time = (frame["date"] + pd.Timedelta("5min")).to_numpy(dtype="datetime64[ns]").astype(np.int64)
        out.append(SymbolBars(symbol, frame, close_time))
    return out


def signal_table(bars: list[SymbolBars], seed: int = 0) -> SignalTable:
    """A stored decision for every bar of every symbol, random direction, confidence and votes."""
    rng = np.random.default_rng(seed)
    ts = np.concatenate([sb.close_time for sb in bars])
    inst = np.concatenate([np.full(len(sb.close_time), k, dtype=np.int32) for k, sb in enumerate(bars)])
    order = np.lexsort((inst, ts))
    n = len(ts)
    return SignalTable(
        ts_event=ts[order],
        instrument=inst[order],
        instrument_ids=[f"{sb.symbol}-PERP.BINANCE" for sb in bars],
        direction=rng.choice(np.array([-1, 0, 1], dtype=np.int8), n),
        confidence=rng.uniform(0.5, 1.0, n),
        prob_up=rng.uniform(0, 1, n),
        forecast=rng.normal(0, 0.01, n),
        votes={"xgboost": rng.normal(0, 1, n), "lightgbm": rng.normal(0, 1, n)},
        model_ids=np.array(["m"] * n, dtype=object),
        features_hash=np.array(["h"] * n, dtype=object),
    )


def frames(n: int = 700) -> dict[str, pd.DataFrame]:
    return {s: candles(random_walk(n, seed=i)) for i, s in enumerate(SYMBOLS)}


@pytest.fixture(scope="module")
def data():
    bars = symbol_bars(frames())
    return sizing_data(bars, signal_table(bars), threshold=0.7, hold_bars=12)


def make_env(data, norm=None, steps: int = 40, **kw) -> SizingEnv:
    return SizingEnv(data, norm or ObsNorm.fit(data.raw_market()), RiskProfile(), episode_steps=steps, **kw)


def rollout(env: SizingEnv, actions, seed: int = 3, start: int | None = None):
    obs, _ = env.reset(seed=seed, options={"start": start} if start is not None else None)
    observations, rewards = [obs], []
    for a in actions:
        obs, r, _, truncated, _ = env.step(np.array([a], dtype=np.float32))
        observations.append(obs)
        rewards.append(r)
        if truncated:
            break
    return np.array(observations), np.array(rewards)


def test_the_env_passes_gymnasiums_checker_and_observes_64_values(data):
    env = make_env(data)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (OBS_DIM,) == (64,)


def test_opportunities_are_the_strategys_entries_one_open_trade_per_symbol(data):
    assert len(data) > 50
    assert (data.confidence >= 0.7).all() and set(np.unique(data.direction)) <= {-1, 1}
    for k in range(len(SYMBOLS)):
        mine = data.symbol == k
        assert (data.ts[mine][1:] >= data.exit_ts[mine][:-1]).all()  # the next entry after the last exit
    assert (np.diff(data.ts) >= 0).all()


def test_an_episode_is_the_same_for_the_same_seed_and_actions(data):
    actions = np.linspace(-1, 1, 40)
    first = rollout(make_env(data), actions, seed=7)
    again = rollout(make_env(data), actions, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_changing_later_bars_changes_no_observation_up_to_then(data):
    """The state at a step uses only data up to its bar close: bars after t are rewritten (prices and
    volumes), and every observation of a decision at or before t is unchanged."""
    original = frames(900)
    cut = original[SYMBOLS[0]]["date"].iloc[650]
    changed = {}
    for s, f in original.items():
        g = f.copy()
        later = g["date"] > cut
        g.loc[later, ["open", "high", "low", "close"]] *= 1.3
        g.loc[later, "volume"] *= 5
        changed[s] = g
    before, after = symbol_bars(original), symbol_bars(changed)
    table = signal_table(before)
    d1 = sizing_data(before, table, 0.7, 12)
    d2 = sizing_data(after, table, 0.7, 12)
    norm = ObsNorm.fit(d1.raw_market())
    decided_by_cut = int(np.searchsorted(d1.ts, cut.value + 5 * 60 * 10**9, side="right"))
    assert decided_by_cut > 60 and len(d2) > decided_by_cut + 10
    start = decided_by_cut - 40
    actions = np.sin(np.arange(50))
    obs1, _ = rollout(make_env(d1, norm, steps=50), actions, start=start)
    obs2, _ = rollout(make_env(d2, norm, steps=50), actions, start=start)
    np.testing.assert_array_equal(obs1[:40], obs2[:40])  # the 40 decisions up to the cut
    assert not np.array_equal(obs1[40:], obs2[40:])  # (the later bars do matter after it)


def test_the_reward_is_profit_times_one_minus_risk_penalty_plus_the_sharpe_bonus(data):
    reward = RewardConfig(exposure_weight=0.5, exposure_limit=0.05, sharpe_weight=0.1)
    env = make_env(data, reward=reward, fee_rate=0.0005, slippage_bps=2.0)
    env.reset(seed=0, options={"start": 0})
    _, r, _, _, info = env.step(np.array([1.0], dtype=np.float32))  # the top of the bounds: 2.0
    assert info["multiplier"] == 2.0
    sizing = position_size(10_000.0, data.confidence[0], RiskProfile(), 5.0, rl_adjustment=2.0)
    n, move = sizing.notional, data.exit[0] / data.entry[0]
    pnl = data.direction[0] * n * (move - 1) - n * 0.0007 - n * move * 0.0007
    profit = 100 * pnl / 10_000.0
    # right after the entry: the equity is down by the entry's costs (a drawdown from the starting peak)
    equity = 10_000.0 - n * 0.0007
    drawdown, exposure = 1 - equity / 10_000.0, n / equity
    penalty = math.copysign(min(0.9, 2.0 * drawdown + 0.5 * max(0.0, exposure - 0.05)), profit)
    assert info["profit"] == pytest.approx(profit, rel=1e-12)
    assert r == pytest.approx(profit * (1 - penalty) + 0.0, rel=1e-9)  # one trade: no Sharpe yet, no bonus


def test_actions_map_linearly_onto_the_bounds_and_are_clipped():
    assert multiplier([-1.0], 0.25, 2.0) == 0.25
    assert multiplier([1.0], 0.25, 2.0) == 2.0
    assert multiplier([0.0], 0.5, 1.5) == 1.0
    assert multiplier([7.0], 0.25, 2.0) == 2.0


def test_a_saved_agent_reloads_with_equal_actions_and_a_changed_file_is_refused(data, tmp_path):
    from stable_baselines3 import PPO

    env = make_env(data)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16, 16]})  # fmt: skip
    model.learn(64)
    arch = {"obs_dim": OBS_DIM, "net_arch": [16, 16], "activation": "tanh"}
    version = save_agent(tmp_path, model.policy, env.norm, (0.25, 2.0), arch, {}, {})
    agent = load_agent(tmp_path, "ppo_sizer:latest")
    assert agent.id == version
    obs = np.stack([env.reset(seed=s)[0] for s in range(8)])
    np.testing.assert_array_equal(agent.action(obs), model.predict(obs, deterministic=True)[0])

    weights = tmp_path / "ppo_sizer" / version / "policy.pt"
    blob = bytearray(weights.read_bytes())
    blob[-20] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="checksum mismatch for policy.pt"):
        load_agent(tmp_path, version)


# ---- the strategy asking a trained agent: `qt rl train --evaluate` on a small synthetic market ----------------
def strategy_config(root, **extra) -> dict:
    return {
        "registry": str(root / "models"),
        "models": ["xgboost:production", "lightgbm:production"],
        "weights": {"xgboost": 0.5, "lightgbm": 0.5},
        "cooldown_seconds": 0,
        # a low entry threshold, so the tiny market has entries
        "risk_profile": {"entry_confidence": 0.3, "min_confidence": 0.2, "supervisor": {"mode": "observe"}},
        **extra,
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two small forecast models and their stored signals on a 3-symbol market, an agent trained by `qt rl train`
    on its first days, and `--evaluate`'s three backtests of the later days."""
    from backtests.config import parse_backtest_config
    from backtests.signals import write_backtest_signals
    from quantum_trader.cli import main
    from tests.conftest import train_small_ensemble

    root = tmp_path_factory.mktemp("rl")
    train_small_ensemble(root, kinds=("xgboost", "lightgbm"))
    backtest = {
        "name": "rl",
        "catalog": str(root / "catalog"),
        "universe": {"select": "all"},
        "strategies": [{"path": "strategies.ensemble:EnsembleStrategy", "config": strategy_config(root)}],
        "report": {"tearsheet": False},
    }
    write_backtest_signals(parse_backtest_config(backtest), progress=False)
    backtest["strategies"][0]["config"]["signal_source"] = "catalog"
    (root / "backtest.yaml").write_text(yaml.safe_dump(backtest))
    rl = {
        "name": "tiny",
        "backtest": str(root / "backtest.yaml"),
        "train_period": {"start": "2025-01-01", "end": "2025-01-03T12:00"},
        "eval_period": {"start": "2025-01-03T12:00", "end": "2025-01-05T20:00"},
        "env": {"episode_steps": 32},
        "ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 1, "net_arch": [16, 16], "total_timesteps": 128},
    }
    (root / "rl.yaml").write_text(yaml.safe_dump(rl))
    code = main(
        [
            "rl",
            "train",
            str(root / "rl.yaml"),
            "--evaluate",
            "--out",
            str(root / "eval"),
        ]  # with progress bars
    )
    return root, root / "eval", code


def test_qt_rl_train_registers_an_agent_and_evaluate_compares_the_three_runs(evaluated):
    root, out, code = evaluated
    assert code == 0
    agent = load_agent(root / "models", "ppo_sizer:latest")
    assert agent.bounds == (0.25, 2.0)
    registry = ModelRegistry(root / "models")
    assert registry.status(registry.get(agent.id)).status == "healthy"  # `qt models list` shows it sound
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["rule", "shadow", "active"]
    assert {"total_return", "sharpe", "max_drawdown"} <= set(table.columns)
    assert table["trades"].min() > 0
    assert (out / "comparison.png").stat().st_size > 0


def test_shadow_mode_publishes_each_suggestion_and_trades_the_rule_based_size(evaluated):
    _, out, _ = evaluated
    assert (out / "shadow" / "fingerprint.txt").read_text() == (out / "rule" / "fingerprint.txt").read_text()
    events = pd.read_csv(out / "shadow" / "sizing_events.csv")
    assert len(events) > 0 and (events["mode"] == "shadow").all()
    assert events["rl_multiplier"].between(0.25, 2.0).all()
    assert events["trace_id"].str.len().gt(0).all()
    assert pd.read_csv(out / "rule" / "sizing_events.csv").empty  # no RL sizer, no events


def test_active_mode_trades_the_margin_the_agent_asked_for(evaluated):
    _, out, _ = evaluated
    events = pd.read_csv(out / "active" / "sizing_events.csv")
    entered = events[events["entered"]]
    assert len(entered) > 0 and (entered["mode"] == "active").all()
    fills = pd.read_csv(out / "active" / "fills.csv")
    entries = fills[fills["tags"].astype(str).str.contains("ENTRY")].drop_duplicates("trace_id")
    joined = entered.merge(entries, on="trace_id")
    assert len(joined) == len(entered)
    margin = joined["filled_qty"] * joined["avg_px"] / 5.0  # venue leverage 5
    np.testing.assert_allclose(margin, joined["rl_margin"], rtol=2e-3)  # qty rounding and slippage
    assert (joined["rl_margin"] != joined["rule_margin"]).any()


def test_an_rl_sizer_needs_a_risk_profile_and_names_a_bad_field(tmp_path):
    from quantum_trader.config import ConfigError
    from strategies.ensemble import EnsembleStrategy, EnsembleStrategyConfig

    def strategy(**config):
        return EnsembleStrategy(
            EnsembleStrategyConfig(signal_source="catalog", registry=str(tmp_path), **config)
        )

    with pytest.raises(ValueError, match="rl_sizer needs a risk_profile"):
        strategy(rl_sizer={"mode": "shadow"})
    with pytest.raises(ConfigError, match=r"rl_sizer[\s\S]*mode[\s\S]*'shadow' or 'active'"):
        strategy(rl_sizer={"mode": "bold"}, risk_profile="moderate")
    with pytest.raises(ValueError, match="no ppo_sizer agents"):
        strategy(rl_sizer={"mode": "active"}, risk_profile="moderate")

"""PPO position sizing (ml/rl, strategies/rl_sizing.py): the environment, the saved agent, and the strategy
asking it at entry time in shadow and active mode."""

import math

import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from actors.risk_profile import RiskProfile
from ml.dataset import SymbolBars
from ml.models.base import ModelLoadError
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

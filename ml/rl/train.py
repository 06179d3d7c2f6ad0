"""`qt rl train CONFIG` and `qt rl evaluate CONFIG`: the PPO sizing agent, trained offline, judged on later data.

The RL config (configs/rl/ppo_sizing.yaml) names a backtest config: its catalog, universe, venue (leverage,
fees, slippage), risk profile and EnsembleStrategy entry rule are the environment's, so the agent learns on
the trades the strategy would take. Signals are the ensemble decisions stored in that catalog (`qt signals`).

train:    SizingEnv over `train_period` -> stable-baselines3 PPO -> the policy's weights in the registry
          (ml/rl/agent.py). The observation standardisation is fitted on the train period only.
evaluate: three backtests of the backtest config over `eval_period` (later, unseen by the agent and by the
          standardisation): rule-based (no RL sizer), shadow (must trade exactly as rule-based) and active;
          a table of return, Sharpe and max drawdown (comparison.csv), the equity curves (comparison.png).
Training never runs in a trading process: the strategy only loads the saved weights.
"""

import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from actors.risk_profile import risk_profile_from
from backtests.config import BacktestConfig, PeriodConfig, load_backtest_config
from backtests.runner import select_universe, utc
from catalog.store import CatalogStore
from ml.dataset import load_symbol_bars
from ml.research import read_signal_table
from ml.rl.env import RewardConfig, SizingData, SizingEnv, sizing_data
from ml.rl.observation import OBS_DIM, ObsNorm
from quantum_trader.config import ConfigError, StrictModel, load_config

ENSEMBLE = "strategies.ensemble:EnsembleStrategy"
FEATURE_WARMUP = pd.Timedelta(
    days=3
)  # bars before a period that warm its features up (EMAs, 288-bar windows)


class RewardSettings(StrictModel):
    drawdown_weight: float = Field(2.0, ge=0)
    exposure_weight: float = Field(0.25, ge=0)
    exposure_limit: float = Field(
        1.0, ge=0, description="gross notional / equity above which it is penalised"
    )
    max_penalty: float = Field(0.9, ge=0, lt=1)
    sharpe_weight: float = Field(0.1, ge=0)
    sharpe_window: int = Field(32, ge=2)


class EnvSettings(StrictModel):
    bounds: tuple[float, float] = (0.25, 2.0)
    hold_bars: int = Field(12, ge=1, description="bars a simulated trade is held")
    episode_steps: int = Field(256, ge=8, description="entry opportunities per episode")
    fee_rate: float = Field(0.0005, ge=0, le=0.01, description="per side (Binance USDT-M taker)")
    slippage_bps: float | None = Field(None, ge=0, description="null: the backtest's venue.slippage_bps")
    reward: RewardSettings = RewardSettings()

    @model_validator(mode="after")
    def _bounds(self):
        low, high = self.bounds
        if not 0 < low < high <= 2.0:
            raise ValueError(
                f"bounds must satisfy 0 < low < high <= 2.0 (the profile's rl_adjustment), got {[low, high]}"
            )
        return self


class PPOSettings(StrictModel):
    learning_rate: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    n_steps: int = Field(512, ge=8)
    batch_size: int = Field(64, ge=2)
    n_epochs: int = Field(5, ge=1)
    ent_coef: float = Field(0.0, ge=0)
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu"] = "tanh"
    total_timesteps: int = Field(20_000, ge=1)


class RLConfig(StrictModel):
    name: str = "ppo_sizing"
    backtest: str = Field(
        description="the backtest config whose catalog, universe, venue and strategy it sizes"
    )
    signals: Literal["catalog"] = "catalog"
    train_period: PeriodConfig
    eval_period: PeriodConfig
    registry: str | None = Field(None, description="null: the EnsembleStrategy's registry")
    env: EnvSettings = EnvSettings()
    ppo: PPOSettings = PPOSettings()
    seed: int = 42

    @model_validator(mode="after")
    def _later_eval(self):
        if not (self.train_period.end and self.eval_period.start):
            raise ValueError("train_period.end and eval_period.start are required")
        if self.eval_period.start < self.train_period.end:
            raise ValueError(
                f"eval_period.start {self.eval_period.start} is before train_period.end {self.train_period.end}: "
                "the evaluation must be on later, unseen data"
            )
        return self


def load_rl_config(path) -> RLConfig:
    return load_config(RLConfig, path)


# ---- the environment from a config -------------------------------------------------------------------------
def _ensemble_config(bt: BacktestConfig) -> dict:
    found = [s for s in bt.strategies if s.path == ENSEMBLE]
    if len(found) != 1:
        raise ConfigError(f"backtest: the RL sizer needs exactly one EnsembleStrategy, found {len(found)}")
    return found[0].config


def _profile(bt: BacktestConfig):
    profile = risk_profile_from(_ensemble_config(bt).get("risk_profile") or bt.risk_profile)
    if profile is None:
        raise ConfigError(
            "backtest: risk_profile is required (the multiplier is the sizing formula's rl_adjustment)"
        )
    return profile


def period_data(cfg: RLConfig, bt: BacktestConfig, period: PeriodConfig) -> SizingData:
    """The entry opportunities of `period`: stored signals over the backtest config's universe."""
    scoped = bt.model_copy(update={"period": period})
    universe = select_universe(CatalogStore(Path(bt.catalog)), scoped)
    start, end = utc(period.start), utc(period.end)
    bars = load_symbol_bars(bt.catalog, universe.bar_types, start - FEATURE_WARMUP, end)
    table = read_signal_table(bt.catalog, start, end)
    if not len(table):
        raise ConfigError(
            f"no Signal events in {bt.catalog} between {start} and {end}: run `qt signals {cfg.backtest}` "
            "over that period first (with signal_source: models)"
        )
    threshold = _profile(bt).entry_confidence
    return sizing_data(bars, table, threshold, cfg.env.hold_bars)


def make_env(cfg: RLConfig, bt: BacktestConfig, data: SizingData, norm: ObsNorm) -> SizingEnv:
    e = cfg.env
    return SizingEnv(
        data,
        norm,
        _profile(bt),
        bounds=e.bounds,
        leverage=bt.venue.default_leverage,
        starting_balance=bt.venue.starting_balance,
        fee_rate=e.fee_rate,
        slippage_bps=bt.venue.slippage_bps if e.slippage_bps is None else e.slippage_bps,
        episode_steps=e.episode_steps,
        reward=RewardConfig(**e.reward.model_dump()),
    )


# ---- train ---------------------------------------------------------------------------------------------------
def train_agent(cfg: RLConfig, progress: bool = True) -> dict:
    """Train on the train period and register the agent; returns a summary (id, opportunities, rewards)."""
    import torch
    from stable_baselines3 import PPO

    from ml.rl.agent import save_agent

    bt = load_backtest_config(cfg.backtest)
    registry = cfg.registry or _ensemble_config(bt).get("registry", "models")
    t0 = time.perf_counter()
    data = period_data(cfg, bt, cfg.train_period)
    norm = ObsNorm.fit(data.raw_market())
    env = make_env(cfg, bt, data, norm)
    torch.manual_seed(cfg.seed)
    p = cfg.ppo
    arch = {"obs_dim": OBS_DIM, "net_arch": list(p.net_arch), "activation": p.activation}
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=p.learning_rate,
        gamma=p.gamma,
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        ent_coef=p.ent_coef,
        seed=cfg.seed,
        device="cpu",
        verbose=0,
        policy_kwargs={"net_arch": list(p.net_arch), "activation_fn": _activation(p.activation)},
    )
    model.learn(
        total_timesteps=p.total_timesteps, callback=_progress(p.total_timesteps) if progress else None
    )
    rewards = _episode_rewards(env, model, cfg.seed)
    summary = {
        "opportunities": len(data),
        "timesteps": p.total_timesteps,
        "seconds": round(time.perf_counter() - t0, 1),
        "mean_episode_reward": rewards,
    }
    version = save_agent(
        registry,
        model.policy,
        norm,
        cfg.env.bounds,
        arch,
        training={**summary, "ppo": p.model_dump(), "env": cfg.env.model_dump(), "seed": cfg.seed},
        data={
            "backtest": cfg.backtest,
            "catalog": bt.catalog,
            "train_period": cfg.train_period.model_dump(mode="json"),
        },
    )
    return {"id": version, "registry": str(registry), **summary}


def _progress(total: int):
    """A tqdm bar over the timesteps (stable-baselines3's own progress bar needs `rich`, not a dependency)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total, desc="PPO", unit="step", file=sys.stderr)

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def _activation(name: str):
    from ml.rl.agent import ACTIVATIONS

    return ACTIVATIONS[name]


def _episode_rewards(env: SizingEnv, model, seed: int) -> dict:
    """Mean reward per episode over a few seeded episodes: the trained policy vs a constant multiplier of 1."""
    out = {}
    one = 2.0 * (1.0 - env.bounds[0]) / (env.bounds[1] - env.bounds[0]) - 1.0  # the action for multiplier 1
    for name, act in (
        ("agent", lambda o: model.predict(o, deterministic=True)[0]),
        ("rule", lambda o: np.array([one])),
    ):
        totals = []
        for k in range(4):
            obs, _ = env.reset(seed=seed + k)
            total, done = 0.0, False
            while not done:
                obs, r, term, trunc, _ = env.step(act(obs))
                total, done = total + r, term or trunc
            totals.append(total)
        out[name] = round(float(np.mean(totals)), 4)
    return out


# ---- evaluate ------------------------------------------------------------------------------------------------
MODES = ("rule", "shadow", "active")
SHOWN = ("total_return", "sharpe", "max_drawdown", "trades", "win_rate", "final_equity")


def eval_backtest(cfg: RLConfig, bt: BacktestConfig, mode: str, model: str, registry: str) -> BacktestConfig:
    """The backtest config over the eval period, with the RL sizer in `mode` (none for "rule")."""
    strategies = []
    for component in bt.strategies:
        config = dict(component.config)
        if component.path == ENSEMBLE:
            config.pop("rl_sizer", None)
            if mode != "rule":
                config["rl_sizer"] = {"model": model, "mode": mode, "registry": str(registry)}
        strategies.append(component.model_copy(update={"config": config}))
    return bt.model_copy(
        update={"period": cfg.eval_period, "strategies": strategies, "name": f"{cfg.name}-{mode}"}
    )


def evaluate_agent(cfg: RLConfig, model: str, out: Path, progress: bool = True) -> pd.DataFrame:
    """Backtest the eval period rule-based, in shadow and in active mode; write the comparison to `out`."""
    from backtests.report import write_report
    from backtests.runner import run_backtest

    bt = load_backtest_config(cfg.backtest)
    registry = cfg.registry or _ensemble_config(bt).get("registry", "models")
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = {}, {}
    for mode in MODES:
        run = run_backtest(eval_backtest(cfg, bt, mode, model, registry), progress=progress)
        stats = write_report(run, out / mode)
        rows[mode] = {k: stats.get(k) for k in SHOWN} | {"fingerprint": stats["fingerprint"]}
        events = pd.read_csv(out / mode / "sizing_events.csv")
        entered = events[events["entered"]]
        if len(events):
            rows[mode]["sizing_events"] = len(events)
            rows[mode]["mean_multiplier"] = float(entered["rl_multiplier"].mean()) if len(entered) else None
        curves[mode] = run.equity.frame()["equity"] if len(run.equity.frame()) else pd.Series(dtype=float)
    table = pd.DataFrame(rows).T
    table["shadow_trades_as_rule"] = table["fingerprint"] == rows["rule"]["fingerprint"]
    table.to_csv(out / "comparison.csv")
    (out / "comparison.json").write_text(json.dumps({"model": model, **rows}, indent=2, default=str))
    _plot(
        curves,
        f"{cfg.name}: eval {cfg.eval_period.start:%Y-%m-%d} - {cfg.eval_period.end:%Y-%m-%d}",
        out / "comparison.png",
    )
    return table


def _plot(curves: dict[str, pd.Series], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (eq_ax, dd_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    for mode, eq in curves.items():
        if len(eq):
            style = "--" if mode == "shadow" else "-"
            eq_ax.plot(eq.index, eq.values, style, label=mode)
            dd_ax.plot(eq.index, (eq / eq.cummax() - 1).values * 100, style, label=mode)
    eq_ax.set_ylabel("equity (USDT)")
    dd_ax.set_ylabel("drawdown (%)")
    eq_ax.legend()
    for ax in (eq_ax, dd_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

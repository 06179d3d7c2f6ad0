"""SizingEnv: a gymnasium environment in which an agent chooses the size multiplier of each entry.

One step is one entry opportunity: a stored ensemble decision (ml/research.py) that the EnsembleStrategy's
entry rule would act on (direction not FLAT, confidence >= the entry threshold, an ATR, the symbol not already in
a trade). Opportunities are ordered by bar close, then symbol. The set of opportunities does not depend on the
agent's actions: a trade is held a fixed `hold_bars` bars, so which signals find their symbol free is known
up front (`sizing_data`). An episode is `episode_steps` consecutive opportunities from a start drawn with the
env's seed, so it is deterministic given the seed.

The account is simulated at the trades' own prices: the entry at the signal bar's close, the exit at the close
`hold_bars` later, each side paying `fee_rate` and `slippage_bps`. Margin and notional come from the same
formula the strategy uses (strategies/sizing.py) with `rl_adjustment` = the agent's multiplier. A trade's
pnl reaches the cash at its exit; until then it counts as unrealised, marked at each symbol's latest close.

Action: Box(-1, 1), mapped linearly onto [low, high] of the configured bounds (PPO's Gaussian policy learns a
symmetric, normalised action space far better than [0.25, 2.0]; `multiplier()` is the mapping).

Reward, for the trade opened by the step:
    reward       = profit * (1 - risk_penalty) + sharpe_bonus
    profit       = the trade's realised pnl after fees, in percent of the equity at entry
    risk_penalty = sign(profit) * min(max_penalty, drawdown_weight * drawdown
                                                   + exposure_weight * max(0, exposure - exposure_limit))
                   with the drawdown from peak and the gross exposure / equity right after the entry: the
                   penalty shrinks a gain and enlarges a loss taken while in drawdown or over-exposed
    sharpe_bonus = sharpe_weight * (S_after - S_before), S = mean / std of the last `sharpe_window` trade
                   profits (0 with fewer than 2): the trade's marginal effect on the recent Sharpe ratio

No lookahead: the observation at a step uses the features and signal of its bar and the account as it stands
at that bar's close (trades closed by then, open ones marked at closes up to then); only the reward reads the
trade's later exit.
"""

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from nautilus_trader.model.identifiers import InstrumentId

from actors.risk_profile import RiskProfile
from catalog.instruments import symbol_of
from ml.dataset import SymbolBars
from ml.features import FEATURE_NAMES, N_FEATURES, compute_features
from ml.research import SignalTable
from ml.rl.observation import CLIP, N_MARKET, OBS_DIM, AccountState, ObsNorm, build_observation
from quantum_trader.events import MODEL_KINDS
from strategies.sizing import position_size

NS_PER_DAY = 86_400_000_000_000
ATR = FEATURE_NAMES.index("atr_14")


@dataclass
class RewardConfig:
    drawdown_weight: float = 2.0
    exposure_weight: float = 0.25
    exposure_limit: float = 1.0
    max_penalty: float = 0.9
    sharpe_weight: float = 0.1
    sharpe_window: int = 32


@dataclass
class SizingData:
    """Every entry opportunity of a period, as arrays (one row per opportunity, in time order), and each
    symbol's closes for marking open trades."""

    ts: np.ndarray  # int64 bar close of the decision
    symbol: np.ndarray  # int64 index into `symbols`
    direction: np.ndarray  # int8, +1 / -1
    confidence: np.ndarray
    votes: np.ndarray  # (n, len(MODEL_KINDS)), NaN where a model did not vote
    features: np.ndarray  # (n, N_FEATURES) float32
    entry: np.ndarray  # close of the decision bar
    exit_ts: np.ndarray
    exit: np.ndarray  # close hold_bars later
    symbols: list[str]
    close_time: list[np.ndarray]  # per symbol
    close: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)

    def raw_market(self) -> np.ndarray:
        """The market part of every opportunity's raw observation (for ObsNorm.fit)."""
        flat = AccountState()  # the account part is not standardised (ObsNorm)
        rows = [
            build_observation(
                self.features[i], self.confidence[i], int(self.direction[i]), self.vote_dict(i), flat
            )
            for i in range(len(self))
        ]
        return np.array(rows, dtype=np.float32)[:, :N_MARKET] if rows else np.empty((0, N_MARKET), np.float32)

    def vote_dict(self, i: int) -> dict[str, float]:
        return {kind: float(self.votes[i, j]) for j, kind in enumerate(MODEL_KINDS)}


def sizing_data(bars: list[SymbolBars], table: SignalTable, threshold: float, hold_bars: int) -> SizingData:
    """The opportunities in `table` (stored signals) over `bars` (each symbol's bars, features computed from
    them): decisions at or above `threshold` whose symbol is free and whose exit bar exists."""
    index = {sb.symbol: k for k, sb in enumerate(bars)}
    features = [compute_features(sb.frame).to_numpy(dtype=np.float32) for sb in bars]
    closes = [sb.frame["close"].to_numpy(dtype=np.float64) for sb in bars]
    sym_of_row = np.array(
        [index.get(symbol_of(InstrumentId.from_str(iid)), -1) for iid in table.instrument_ids] or [-1],
        dtype=np.int64,
    )[table.instrument]
    wanted = (table.direction != 0) & (table.confidence >= threshold) & (sym_of_row >= 0)
    picked: list[tuple[int, int, int]] = []  # (row in table, symbol, bar index of the decision)
    free_at = np.full(len(bars), np.iinfo(np.int64).min)
    for row in np.flatnonzero(wanted).tolist():
        k, ts = int(sym_of_row[row]), int(table.ts_event[row])
        times = bars[k].close_time
        at = int(np.searchsorted(times, ts))
        if at + hold_bars >= len(times) or times[at] != ts or ts < free_at[k]:
            continue  # no such bar, no exit bar in the data, or the symbol is still in its previous trade
        if not features[k][at, ATR] > 0:
            continue  # the strategy enters only with an ATR (its exits are set from it)
        picked.append((row, k, at))
        free_at[k] = int(times[at + hold_bars])
    rows, syms, ats = (
        (np.array(col, dtype=np.int64) for col in zip(*picked, strict=True))
        if picked
        else (np.empty(0, np.int64),) * 3
    )
    votes = np.full((len(rows), len(MODEL_KINDS)), np.nan)
    for j, kind in enumerate(MODEL_KINDS):
        if kind in table.votes:
            votes[:, j] = table.votes[kind][rows]
    pairs = list(zip(syms.tolist(), ats.tolist(), strict=True))
    return SizingData(
        ts=table.ts_event[rows].astype(np.int64),
        symbol=syms,
        direction=np.sign(table.direction[rows]).astype(np.int8),
        confidence=table.confidence[rows].astype(np.float64),
        votes=votes,
        features=np.array([features[k][a] for k, a in pairs], dtype=np.float32).reshape(
            len(rows), N_FEATURES
        ),
        entry=np.array([closes[k][a] for k, a in pairs], dtype=np.float64),
        exit_ts=np.array([bars[k].close_time[a + hold_bars] for k, a in pairs], dtype=np.int64),
        exit=np.array([closes[k][a + hold_bars] for k, a in pairs], dtype=np.float64),
        symbols=[sb.symbol for sb in bars],
        close_time=[sb.close_time for sb in bars],
        close=closes,
    )


def multiplier(action, low: float, high: float) -> float:
    """The size multiplier an action in [-1, 1] asks for (clipped there first)."""
    a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return low + (a + 1.0) * 0.5 * (high - low)


@dataclass
class _Trade:
    symbol: int
    sign: float
    notional: float
    entry: float
    exit_ts: int
    exit_cash: float  # what reaches the cash at the exit (price move less the exit's costs)


class SizingEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        data: SizingData,
        norm: ObsNorm,
        profile: RiskProfile,
        bounds: tuple[float, float] = (0.25, 2.0),
        leverage: float = 5.0,
        starting_balance: float = 10_000.0,
        fee_rate: float = 0.0005,
        slippage_bps: float = 2.0,
        episode_steps: int = 256,
        reward: RewardConfig | None = None,
    ) -> None:
        if len(data) < 1:
            raise ValueError("no entry opportunities in the period: widen it or lower the entry threshold")
        if not 0 < bounds[0] < bounds[1] <= 2.0:
            raise ValueError(
                f"bounds must satisfy 0 < low < high <= 2 (the profile's rl_adjustment), got {bounds}"
            )
        self.data, self.norm, self.profile = data, norm, profile
        self.bounds, self.leverage, self.balance = bounds, leverage, starting_balance
        self.cost = fee_rate + slippage_bps / 1e4  # per side, as a fraction of the notional
        self.episode_steps = min(episode_steps, len(data))
        self.reward_cfg = reward or RewardConfig()
        self.observation_space = gym.spaces.Box(-CLIP, CLIP, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    # ---- gymnasium ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        last_start = len(self.data) - self.episode_steps
        start = (options or {}).get("start")
        self._start = int(start) if start is not None else int(self.np_random.integers(0, last_start + 1))
        self._k = 0
        self._cash = self._peak = self._day_start = self.balance
        self._day = -1
        self._open: list[_Trade] = []
        self._profits: list[float] = []
        return self._observe(), {}

    def step(self, action):
        i = self._start + self._k
        d = self.data
        m = multiplier(action, *self.bounds)
        equity = self._equity(int(d.ts[i]))
        sizing = position_size(equity, float(d.confidence[i]), self.profile, self.leverage, rl_adjustment=m)
        n, sign = sizing.notional, float(d.direction[i])
        move = sign * n * (d.exit[i] / d.entry[i] - 1.0)
        exit_cost = n * (d.exit[i] / d.entry[i]) * self.cost
        pnl = move - n * self.cost - exit_cost
        self._cash -= n * self.cost
        self._open.append(
            _Trade(int(d.symbol[i]), sign, n, float(d.entry[i]), int(d.exit_ts[i]), move - exit_cost)
        )
        profit = 100.0 * pnl / equity if equity > 0 else 0.0
        reward = self._reward(profit, int(d.ts[i]))
        self._k += 1
        truncated = self._k >= self.episode_steps
        obs = self._observe() if not truncated else self._observe(last=True)
        info = {"multiplier": m, "profit": profit, "notional": n, "margin": sizing.margin}
        return obs, float(reward), False, truncated, info

    # ---- internals ------------------------------------------------------------------------------------
    def _reward(self, profit: float, ts: int) -> float:
        r = self.reward_cfg
        equity = self._equity(ts)
        drawdown = max(0.0, 1.0 - equity / self._peak) if self._peak > 0 else 0.0
        exposure = sum(t.notional for t in self._open) / equity if equity > 0 else 0.0
        penalty = min(
            r.max_penalty,
            r.drawdown_weight * drawdown + r.exposure_weight * max(0.0, exposure - r.exposure_limit),
        )
        risk_penalty = math.copysign(penalty, profit) if profit else 0.0
        before = _sharpe(self._profits[-r.sharpe_window :])
        self._profits.append(profit)
        after = _sharpe(self._profits[-r.sharpe_window :])
        return profit * (1.0 - risk_penalty) + r.sharpe_weight * (after - before)

    def _observe(self, last: bool = False) -> np.ndarray:
        i = min(self._start + self._k, len(self.data) - 1) if not last else self._start + self._k - 1
        d = self.data
        ts = int(d.ts[i])
        equity = self._equity(ts)
        day = ts // NS_PER_DAY
        if day != self._day:
            self._day, self._day_start = day, equity
        self._peak = max(self._peak, equity)
        account = AccountState.of(
            equity,
            sum(t.notional for t in self._open),
            self._unrealised(ts),
            self._peak,
            self._day_start,
            len(self._open),
            self.profile.max_positions,
        )
        raw = build_observation(
            d.features[i], float(d.confidence[i]), int(d.direction[i]), d.vote_dict(i), account
        )
        return self.norm(raw)

    def _equity(self, ts: int) -> float:
        """Cash after settling every trade that exited by `ts`, plus the open trades' unrealised pnl."""
        still = []
        for t in self._open:
            if t.exit_ts <= ts:
                self._cash += t.exit_cash
            else:
                still.append(t)
        self._open = still
        return self._cash + self._unrealised(ts)

    def _unrealised(self, ts: int) -> float:
        total = 0.0
        for t in self._open:
            times = self.data.close_time[t.symbol]
            at = int(np.searchsorted(times, ts, side="right")) - 1
            mark = self.data.close[t.symbol][at] if at >= 0 else t.entry
            total += t.sign * t.notional * (mark / t.entry - 1.0)
        return total


def _sharpe(profits: list[float]) -> float:
    if len(profits) < 2:
        return 0.0
    std = float(np.std(profits))
    return float(np.mean(profits)) / std if std > 1e-12 else 0.0

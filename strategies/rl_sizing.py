"""The RL sizer at entry time (ml/rl): the trained agent's size multiplier for each entry, never training.

A strategy with `rl_sizer: {model, mode, bounds, registry}` (and a risk profile: the multiplier is the
sizing formula's `rl_adjustment`, strategies/sizing.py) asks the agent at every entry it is about to send.
The observation is built by ml/rl/observation.py, the function the training environment uses, from the
signal's features, confidence and votes and the account as the RiskControl sees it.

- shadow (the default): the rule-based size is traded; the agent's suggestion is only published.
- active: the multiplier replaces the profile's rl_adjustment for this entry; the margin is still clamped to
  the profile's limits and the risk gates still review the result.
Either way a SizingEvent (quantum_trader/events.py) says what the rule and the agent would put up.
"""

import math
from typing import Literal

import numpy as np
from nautilus_trader.model.data import DataType
from nautilus_trader.model.identifiers import InstrumentId
from pydantic import Field, model_validator

from ml.rl.observation import AccountState
from quantum_trader.config import StrictModel, parse_config
from quantum_trader.events import SizingEvent
from strategies.sizing import position_size

SIZING_EVENT_TYPE = DataType(SizingEvent)


class RLSizerSettings(StrictModel):
    model: str = Field("ppo_sizer:latest", description="a ppo_sizer version id or ppo_sizer:latest")
    mode: Literal["shadow", "active"] = "shadow"
    bounds: tuple[float, float] | None = Field(None, description="narrower than the agent's own, or null")
    registry: str | None = Field(None, description="null: the strategy's registry")

    @model_validator(mode="after")
    def _ordered(self):
        if self.bounds is not None and not 0 < self.bounds[0] <= self.bounds[1] <= 2.0:
            raise ValueError(f"bounds must satisfy 0 < low <= high <= 2.0, got {list(self.bounds)}")
        return self


class RLSizing:
    def __init__(self, strategy, value: dict, registry: str) -> None:
        if strategy.risk is None:
            raise ValueError(
                "rl_sizer needs a risk_profile: its multiplier is the sizing formula's rl_adjustment"
            )
        self.strategy = strategy
        self.settings = parse_config(RLSizerSettings, dict(value), "rl_sizer")
        from ml.rl.agent import load_agent  # torch: imported only by strategies that use an agent

        self.agent = load_agent(self.settings.registry or registry, self.settings.model)
        low, high = self.agent.bounds
        if self.settings.bounds is not None:
            low, high = max(low, self.settings.bounds[0]), min(high, self.settings.bounds[1])
        self.bounds = (low, high)
        self.active = self.settings.mode == "active"
        self._pending: SizingEvent | None = None

    def adjustment(self, iid: InstrumentId, batch, i: int, features: np.ndarray, trace: str) -> float | None:
        """The agent's multiplier for row `i` of `batch`; what `enter` should use as rl_adjustment (None in
        shadow mode). The SizingEvent is held until `entered` says how the entry went."""
        risk = self.strategy.risk
        equity = risk.equity()
        votes = {kind: float(values[i]) for kind, values in batch.votes.items()}
        confidence, direction = float(batch.confidence[i]), int(batch.direction[i])
        m = self.agent.suggest(features, confidence, direction, votes, self._account(equity))
        m = float(min(max(m, self.bounds[0]), self.bounds[1]))
        leverage = self.strategy.leverage(iid)
        rule = position_size(equity or math.nan, confidence, risk.profile, leverage)
        with_rl = position_size(equity or math.nan, confidence, risk.profile, leverage, rl_adjustment=m)
        now = self.strategy.clock.timestamp_ns()
        self._pending = SizingEvent(
            ts_event=now,
            ts_init=now,
            symbol=iid.symbol.value,
            mode=self.settings.mode,
            confidence=confidence,
            rule_margin=rule.margin,
            rl_multiplier=m,
            rl_margin=with_rl.margin,
            model_id=self.agent.id,
            trace_id=trace,
        )
        return m if self.active else None

    def entered(self, sent: bool) -> None:
        event, self._pending = self._pending, None
        if event is not None:
            event.entered = sent
            self.strategy.publish_data(SIZING_EVENT_TYPE, event)

    def _account(self, equity: float | None) -> AccountState:
        risk = self.strategy.risk
        if equity is None or not equity > 0:
            return AccountState()
        book = risk.book(equity)
        return AccountState.of(
            equity,
            sum(abs(v) for v in book.open_notional.values()),
            risk.unrealised_pnl(),
            book.peak_equity,
            book.day_start_equity,
            len(book.open_notional),
            risk.profile.max_positions,
        )

"""A progress bar for a running backtest, driven by simulated time (the engine's run call blocks)."""

import sys

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from tqdm import tqdm


class ProgressActorConfig(ActorConfig, frozen=True):
    start_ns: int
    end_ns: int
    bars: int = 0
    steps: int = 200


class ProgressActor(Actor):
    def __init__(self, config: ProgressActorConfig):
        super().__init__(config)
        self._bar: tqdm | None = None
        self._done = 0

    def on_start(self) -> None:
        span = max(self.config.end_ns - self.config.start_ns, 1)
        self._bar = tqdm(total=100, desc=f"backtest {self.config.bars:,} bars", unit="%", file=sys.stderr)
        step = max(span // self.config.steps, 60_000_000_000)
        self.clock.set_timer("progress", interval=pd.Timedelta(step, unit="ns"), callback=self._tick)

    def _tick(self, _event) -> None:
        span = max(self.config.end_ns - self.config.start_ns, 1)
        pct = min(100, int(100 * (self.clock.timestamp_ns() - self.config.start_ns) / span))
        if pct > self._done and self._bar is not None:
            self._bar.update(pct - self._done)
            self._done = pct

    def on_stop(self) -> None:
        if self._bar is not None:
            self._bar.update(100 - self._done)
            self._bar.close()

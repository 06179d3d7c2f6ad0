"""A retrain outside the trading loop: ml.train.train in a spawned process, on data up to "now" only.

`retrain_config` builds the TrainConfig: the base config (a `qt train` file, or the defaults) with its period
set to the `window` ending at `now` (the caller's clock: simulated time in a backtest), the given kinds only,
the given registry, and `promote: false`: the new versions are registered, never made production here (the
continuous-learning actor shadows them first). ml.dataset keeps only bars that close before period.end, and
labels are read from those bars, so nothing after `now` reaches the model.

`RetrainRunner.start` runs it in a fresh process (multiprocessing "spawn": no state of the trading process is
inherited) and returns a Future the caller polls (live) or waits on (a backtest at its latency deadline).
"""

from __future__ import annotations

import multiprocessing
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from ml.train import TrainConfig, load_train_config


def retrain_config(
    base: str | dict | None,
    *,
    now: pd.Timestamp,
    window: pd.Timedelta,
    kinds: tuple[str, ...],
    registry: str,
    catalog: str | None = None,
    symbols: list[str] | None = None,
) -> TrainConfig:
    """The TrainConfig of one retrain (see the module docstring). `base` is a path or a mapping."""
    if isinstance(base, str):
        data = load_train_config(base).model_dump()
    else:
        data = TrainConfig.model_validate(base or {}).model_dump()
    data["period"] = {"start": (now - window).to_pydatetime(), "end": now.to_pydatetime()}
    data["models"] = {
        k: data["models"].get(k, {"enabled": True, "params": {}}) | {"enabled": True} for k in kinds
    }
    data["registry"] = registry
    data["promote"] = False
    if catalog is not None:
        data["catalog"] = catalog
    if symbols is not None:
        data["universe"] = data["universe"] | {"select": "symbols", "symbols": list(symbols)}
    return TrainConfig.model_validate(data)


def run_retrain(config: dict, out: str) -> dict:
    """Train and register (not promote); what the actor needs back, in plain values."""
    from ml.train import train

    cfg = TrainConfig.model_validate(config)
    try:
        result = train(cfg, Path(out), progress=False)
    except Exception as err:  # reported to the actor as a retrain_failed event, never raised into the node
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    return {
        "model_ids": dict(result.model_ids),
        "skill": {k: {"status": v["status"], "reason": v["reason"]} for k, v in result.skill.items()},
        "data": {"start": str(cfg.period.start), "end": str(cfg.period.end)},
    }


class RetrainRunner:
    """One worker process, started on the first retrain and kept for the next ones (spawning imports
    Nautilus, numpy and the model libraries: seconds)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def start(self, cfg: TrainConfig, out: Path) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(run_retrain, cfg.model_dump(mode="json"), str(out))

    def close(self, abandon: bool = False) -> None:
        """Stop the worker; with `abandon`, a retrain still running is killed rather than waited for (a node
        that stops must not wait minutes for a model it will not use). The registry writes each version and
        registry.json atomically, so a killed job leaves no half-written version."""
        if self._pool is None:
            return
        if abandon:
            for process in list((self._pool._processes or {}).values()):  # no public API stops a running job
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


__all__ = ["RetrainRunner", "retrain_config", "run_retrain"]

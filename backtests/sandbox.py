"""A backtest that may change models (the continuous-learning actor retrains and promotes) works on a copy.

With `run_local_registry: true` in a backtest config, every registry a component names (`registry:`) is copied
into the run's report folder (`<out>/registry`) and the components are pointed at the copy; components with an
`out_dir` field (the CLM actor's retrain reports) write under `<out>/clm`. The user's registry is only read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from backtests.config import BacktestConfig
from quantum_trader.components import resolve_component


def with_run_local_registry(cfg: BacktestConfig, out: Path) -> BacktestConfig:
    """`cfg` with its components on a copy of their registry inside `out` (unchanged without the flag)."""
    if not cfg.run_local_registry:
        return cfg
    copies: dict[str, Path] = {}
    strategies = [_localise(c, out, copies) for c in cfg.strategies]
    actors = [_localise(c, out, copies) for c in cfg.actors]
    return cfg.model_copy(update={"strategies": strategies, "actors": actors})


def _localise(component, out: Path, copies: dict[str, Path]):
    _, config_cls = resolve_component(component.path)
    fields = {f.name: f for f in msgspec.structs.fields(config_cls)}
    config = dict(component.config)
    if "registry" in fields:
        source = str(config.get("registry", fields["registry"].default))
        if source not in copies:
            copies[source] = _copy_registry(
                Path(source), out / ("registry" if not copies else f"registry-{len(copies)}")
            )
        config["registry"] = str(copies[source])
    if "out_dir" in fields:
        config["out_dir"] = str(out / "clm")
    return component.model_copy(update={"config": config})


def _copy_registry(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)  # an earlier run's copy in the same report folder
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".staging-*", ".*.tmp"))
    else:
        target.mkdir(parents=True)
    return target

"""The component schema shared by backtest and live configs: strategies and actors by import path, the exit
and risk profiles given to every component that has the field, and how their Nautilus configs are built.

A backtest (backtests/config.py, backtests/runner.py) and a live node (live/config.py, live/node.py) read the
same `strategies:` / `actors:` entries and build them with `build_components`, so one entry means the same
thing in both. What each runner adds (bar types from its universe, fill timing, the live OMS) is passed in as
`injected`: a component receives an injected value only for a field its config class has, and its own
`config:` mapping wins over it.
"""

import importlib
import traceback
from typing import Any

import msgspec
from pydantic import Field, field_validator

from quantum_trader.config import ConfigError, StrictModel


class ComponentConfig(StrictModel):
    """A strategy or actor by import path, `module:Class`; its config class is `ClassConfig` beside it."""

    path: str
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _importable(cls, path: str):
        resolve_component(path)
        return path


class ProfileFields(StrictModel):
    """The exit and risk profiles of a run, handed to every component whose config has the field."""

    exit_profile: str | None = Field(
        None, description="configs/exits/<name>.yaml or a path; given to every component with the field"
    )
    risk_profile: str | None = Field(
        None, description="configs/risk/<name>.yaml or a path; given to every component with the field"
    )

    @field_validator("exit_profile")
    @classmethod
    def _exit_profile_loads(cls, name: str | None):
        if name is not None:
            from strategies.exit_profile import load_exit_profile

            load_exit_profile(name)
        return name

    @field_validator("risk_profile")
    @classmethod
    def _risk_profile_loads(cls, name: str | None):
        if name is not None:
            from actors.risk_profile import load_risk_profile

            load_risk_profile(name)
        return name

    def profile_injections(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ("exit_profile", "risk_profile") if getattr(self, name)}


def resolve_component(path: str) -> tuple[type, type]:
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"expected 'module:Class', e.g. 'strategies.ema_cross:EmaCross', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a module that fails while importing is as much a bad path as a missing one
        raise ValueError(f"cannot import module {module_name!r}: {_import_failure(err)}") from None
    cls = getattr(module, class_name, None)
    config_cls = getattr(module, f"{class_name}Config", None)
    if cls is None or config_cls is None:
        raise ValueError(f"module {module_name!r} must define {class_name} and {class_name}Config")
    return cls, config_cls


def _import_failure(err: Exception) -> str:
    """The module's own error on one line, at the line that raised it: `mine.py:3: SyntaxError: ...`."""
    if isinstance(err, SyntaxError):
        where, message = f"{err.filename}:{err.lineno}: ", err.msg
    else:
        # The first frame is resolve_component, then importlib's: none of them is the module's.
        frames = [
            f
            for f in traceback.extract_tb(err.__traceback__)[1:]
            if f.filename != importlib.__file__ and not f.filename.startswith("<frozen")
        ]
        where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
        message = str(err)
    return where + f"{type(err).__name__}: " + " ".join(message.split())


def config_fields(config_cls: type) -> set[str]:
    return {f.name for f in msgspec.structs.fields(config_cls)}


def build_component_config(component: ComponentConfig, where: str, **injected):
    """The component's own (msgspec) config; field errors are reported as `where.config.<field>`."""
    _, config_cls = resolve_component(component.path)
    fields = config_fields(config_cls)
    data = {k: v for k, v in injected.items() if k in fields} | component.config
    unknown = sorted(set(component.config) - fields)
    if unknown:
        raise ConfigError(f"{where}.config: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    try:
        return msgspec.convert(data, config_cls)
    except (msgspec.ValidationError, TypeError) as err:
        detail = str(err).replace("$.", f"{where}.config.")
        raise ConfigError(f"{where}.config: {detail}") from None


def build_components(
    strategies: list[ComponentConfig],
    actors: list[ComponentConfig],
    injected: dict[str, Any],
    finish_strategy_config=None,
) -> tuple[list, list]:
    """Instantiate the configured strategies and actors (their models load here, in their constructors).

    Strategies also get `order_id_tag` NNN (their index): two instances of one class need distinct ids.
    `finish_strategy_config(config, where)`, when given, returns the strategy's final config (the live node
    sets its OMS and order claims there).
    """
    built_strategies = []
    for i, comp in enumerate(strategies):
        cls, _ = resolve_component(comp.path)
        where = f"strategies[{i}]"
        config = build_component_config(comp, where, **(injected | {"order_id_tag": f"{i:03d}"}))
        if finish_strategy_config is not None:
            config = finish_strategy_config(config, where)
        built_strategies.append(cls(config))
    built_actors = []
    for i, comp in enumerate(actors):
        cls, _ = resolve_component(comp.path)
        built_actors.append(cls(build_component_config(comp, f"actors[{i}]", **injected)))
    return built_strategies, built_actors


def bind_risk_engine(components, risk_engine) -> None:
    """The emergency stop halts through Nautilus' own trading state, which lives on the risk engine; strategies
    read the order rate it enforces. Whoever builds the system binds it, backtest or live."""
    for component in components:
        if hasattr(component, "bind_risk_engine"):
            component.bind_risk_engine(risk_engine)


def bind_strategies(components, strategies) -> None:
    """Components that read the strategies' own state (the control API: entries on or off, exit levels) get them;
    they read it on the engine's thread only."""
    for component in components:
        if hasattr(component, "bind_strategies"):
            component.bind_strategies(strategies)

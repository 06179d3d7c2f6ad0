"""A sweep's grid: dotted paths into a backtest config, each with a list of values, expanded to the cartesian
product of backtest configs (pure: no Ray, no engine; backtests/sweep.py runs them).

A path names a field as the backtest config file spells it: `venue.slippage_bps`, `strategies.0.config.
entry_threshold` (a list item by its index), `exit_profile.stop_r`, `risk_profile.supervisor.max_share`,
`strategies.0.config.exit_profile.stop_r`. A profile given by name (`exit_profile: challenge_100`) is opened
into its fields when a path goes into it, so a point changes one field of the named profile and keeps the
rest; a profile left out starts from the profile model's defaults (DEFAULT exits, the moderate risk profile).
Every path is checked against the config's schema before anything runs: a typo fails with the allowed keys.
"""

import copy
import itertools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from actors.risk_profile import RiskProfile, load_risk_profile
from backtests.config import BacktestConfig, parse_backtest_config
from quantum_trader.components import config_fields, resolve_component
from quantum_trader.config import ConfigError, parse_config
from strategies.exit_profile import ExitProfile, load_exit_profile

PROFILES: dict[str, tuple[type[BaseModel], Any]] = {
    "exit_profile": (ExitProfile, load_exit_profile),
    "risk_profile": (RiskProfile, load_risk_profile),
}
_COMPONENT_LISTS = ("strategies", "actors")


@dataclass(frozen=True)
class Point:
    """One backtest of the sweep: its number, the grid values that made it and its config (None: `error`)."""

    index: int
    params: dict[str, Any]
    config: dict | None
    error: str | None = None


def expand_grid(base: dict, grid: dict[str, list], max_runs: int) -> list[Point]:
    """Every combination of the grid's values applied to `base` (the backtest config file as a mapping), in the
    grid's key order (the last key varies fastest). A bad path or an over-large grid is a ConfigError; a point
    whose values make an invalid config carries the reason in `error` and is not run."""
    if not grid:
        raise ConfigError("grid: needs at least one path with a list of values")
    for path, values in grid.items():
        check_path(path, base)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{path}: needs a non-empty list of values, got {values!r}")
    sizes = [len(v) for v in grid.values()]
    runs = math.prod(sizes)
    if runs > max_runs:
        raise ConfigError(
            f"grid: {' x '.join(map(str, sizes))} = {runs} runs, more than max_runs {max_runs}; "
            "shrink the grid or raise max_runs"
        )
    points = []
    for index, combo in enumerate(itertools.product(*grid.values())):
        params = dict(zip(grid, combo, strict=True))
        try:
            config = point_config(base, params)
        except ConfigError as err:
            points.append(Point(index, params, None, str(err)))
            continue
        points.append(Point(index, params, config))
    return points


def point_config(base: dict, params: dict[str, Any]) -> dict:
    """`base` with each path set to its value, the profiles inlined where the components read them, validated."""
    data = copy.deepcopy(base)
    for path, value in params.items():
        set_path(data, path.split("."), value)
    _inline_top_level_profiles(data)
    _validate_profiles(data)
    parse_backtest_config(data, f"sweep point {params}")
    return data


def set_path(data: dict, parts: list[str], value: Any) -> None:
    node: Any = data
    for part in parts[:-1]:
        key: Any = int(part) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(key)
        if part in PROFILES and not isinstance(child, dict):
            child = _open_profile(part, child)
            node[key] = child
        elif child is None:
            child = {}
            node[key] = child
        node = child
    last = parts[-1]
    node[int(last) if isinstance(node, list) else last] = value


def _open_profile(kind: str, named: str | None) -> dict:
    """A profile given by name (or left out) as its mapping of fields, so one of them can be changed."""
    model, load = PROFILES[kind]
    profile = load(named) if named is not None else model()
    return profile.model_dump(mode="json")


def _inline_top_level_profiles(data: dict) -> None:
    """A backtest config's top-level profile is a name that the runner hands to every component with the field;
    a changed one is a mapping, which only the components' own configs take. So it goes there, where the runner
    would have put it: to each component whose config has the field and does not set it itself."""
    for kind in PROFILES:
        mapping = data.get(kind)
        if not isinstance(mapping, dict):
            continue
        data[kind] = None
        for section in _COMPONENT_LISTS:
            for component in data.get(section) or []:
                _, config_cls = resolve_component(component["path"])
                own = component.setdefault("config", {})
                if kind in config_fields(config_cls) and kind not in own:
                    own[kind] = mapping


def _validate_profiles(data: dict) -> None:
    for section in _COMPONENT_LISTS:
        for i, component in enumerate(data.get(section) or []):
            for kind, (model, _) in PROFILES.items():
                value = (component.get("config") or {}).get(kind)
                if isinstance(value, dict):
                    parse_config(model, value, f"{section}.{i}.config.{kind}")


# ---- checking a path against the schema -------------------------------------------------------------------

_FREE = object()  # a mapping of any keys (venue.leverage, a strategy's weights): its values are checked later
_VALUE = object()  # a plain value: nothing below it


@dataclass(frozen=True)
class _List:
    """A list in the config: items by index, each with the schema `item` gives for it."""

    item: Any
    items: list


@dataclass(frozen=True)
class _Component:
    """One `strategies:` / `actors:` entry: the fields of its `config` are those of its class's config."""

    entry: dict


def check_path(path: str, base: dict) -> None:
    """ConfigError naming the first bad part of `path` and the keys allowed there."""
    parts = path.split(".")
    node: Any = BacktestConfig
    data: Any = base
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the top level"
        if node is _FREE:
            return
        if node is _VALUE:
            raise ConfigError(f"grid: {path!r}: {where} is a value, it has no {part!r}")
        if isinstance(node, _List):
            if not part.isdigit() or int(part) >= len(node.items):
                raise ConfigError(
                    f"grid: {path!r}: {where} is a list of {len(node.items)}; allowed: 0..{len(node.items) - 1}"
                )
            data = node.items[int(part)]
            node = node.item(data)
            continue
        allowed = _allowed_keys(node)
        if part not in allowed:
            raise ConfigError(
                f"grid: {path!r}: unknown key {part!r} under {where}; allowed: {sorted(allowed)}"
            )
        node, data = _child_schema(node, part), data.get(part) if isinstance(data, dict) else None
        if part in PROFILES and not isinstance(data, dict):
            data = _open_profile(part, data)
        if isinstance(node, _List):
            node = _List(node.item, data or [])


def _allowed_keys(node: Any) -> set[str]:
    if isinstance(node, _Component):
        return {"path", "config"}
    if isinstance(node, set):  # a component config's field names
        return node
    return set(node.model_fields)


def _child_schema(node: Any, part: str) -> Any:
    if part in PROFILES:
        return PROFILES[part][0]
    if node is BacktestConfig and part in _COMPONENT_LISTS:
        return _List(_Component, [])
    if isinstance(node, _Component):
        return config_fields(resolve_component(node.entry["path"])[1]) if part == "config" else _VALUE
    if isinstance(node, set):  # a field of a component's own (msgspec) config: the backtest checks its value
        return _FREE
    return _annotation_schema(node.model_fields[part].annotation)


def _annotation_schema(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _annotation_schema(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin is dict:
        return _FREE
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return _List(lambda _item, model=args[0]: model, [])
    return _VALUE

"""Loading YAML configs into typed, strict pydantic models.

Every runnable thing reads one file under `configs/`. A mistake in that file must fail before
any work starts, with the dotted path of the bad field and what was expected there.
"""

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config file that cannot be used. The message names each bad field."""


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; allowed fields are listed in the README)"
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config[M: BaseModel](model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """A YAML file whose top level is a mapping, or a ConfigError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level, got {type(data).__name__}")
    return data


def load_config[M: BaseModel](model: type[M], path: str | Path) -> M:
    return parse_config(model, read_yaml_mapping(path), str(path))


def profile_path(name_or_path: str, directory: Path) -> Path:
    """`moderate` -> configs/risk/moderate.yaml; anything with a slash or .yaml is a path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name_or_path!r}; allowed: {known} or a path to a YAML file")
    return path


def load_profile_data(name_or_path: str, directory: Path) -> dict:
    return read_yaml_mapping(profile_path(name_or_path, directory), "profile")


def profile_from[M: BaseModel](
    model: type[M], value: str | dict | None, directory: Path, where: str
) -> M | None:
    """A config's profile field: a name in `directory`, a path to a YAML file, an inline mapping, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_config(model, load_profile_data(value, directory), f"{where} {value}")
    return parse_config(model, value, where)

"""Checks a composed config before any work, so that a bad value fails in a second with one message."""
import dataclasses
import importlib
from typing import Any

from omegaconf import DictConfig, ListConfig

from effdet.config.schema import Config
from effdet.errors import ConfigError


def validate(cfg: DictConfig, schema: type = Config, path: str = "") -> None:
    """Raises ConfigError naming the first key whose value is out of range or not a registered name."""
    for spec in dataclasses.fields(schema):
        key = f"{path}{spec.name}"
        value = cfg.get(spec.name)
        if dataclasses.is_dataclass(spec.type) and value is not None:
            validate(value, spec.type, key + ".")
            continue
        _check_range(key, value, spec.metadata)
        if "choices" in spec.metadata and value is not None:
            _check_choice(key, value, spec.metadata)
        if "registry" in spec.metadata and value is not None:
            _imported(spec.metadata["registry"]).get(value, where=key)


def choices_of(choices) -> list:
    """A field's valid values: its metadata's list, or the list (or dict's keys) that "module:NAME" names."""
    return list(_imported(choices) if isinstance(choices, str) else choices)


def _check_choice(key: str, value: Any, metadata) -> None:
    choices = choices_of(metadata["choices"])
    or_path = metadata.get("or_path")
    many = metadata.get("many", False)
    values = list(value) if many and isinstance(value, (list, tuple, ListConfig)) else [value]
    for one in values:
        if one in choices or (or_path and isinstance(one, str) and one.endswith(or_path)):
            continue
        valid = ", ".join(map(str, choices)) + (f", or the path of a {or_path} file" if or_path else "") + \
            (" (or a list of them)" if many else "")
        raise ConfigError(f"{key}={value} is not valid: choose one of {valid}")
    if many and not values:
        raise ConfigError(f"{key}=[] is empty: choose one or more of {', '.join(map(str, choices))}")


def _imported(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _check_range(key: str, value: Any, metadata) -> None:
    low, high = metadata.get("min"), metadata.get("max")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if low is not None and value < low:
        raise ConfigError(f"{key}={value} is too small: {_valid(low, high)}")
    if high is not None and value > high:
        raise ConfigError(f"{key}={value} is too large: {_valid(low, high)}")


def _valid(low, high) -> str:
    if high is None:
        return f"it must be ≥ {low}"
    if low is None:
        return f"it must be ≤ {high}"
    return f"it must be between {low} and {high}"

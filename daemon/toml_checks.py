"""Checks of decoded TOML values, with errors that name the key."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from replicad.daemon.durations import parse_duration


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key."""


def check_keys(d: dict[str, Any], where: str, allowed: AbstractSet[str]) -> None:
    for key in d:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"{name}: unknown key (allowed: {', '.join(sorted(allowed))})")


def check_table(d: dict[str, Any], key: str | None, name: str) -> dict[str, Any]:
    value = d.get(key, {}) if key is not None else d
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a table")
    return value


def check_opt(d: dict[str, Any], key: str, typ: type, name: str) -> Any:
    if key not in d:
        return None
    value = d[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: must be {_TOML_TYPES[typ]}, not {_toml_type(value)}")
    return value


_TOML_TYPES: dict[type, str] = {
    str: "a string", int: "an integer", bool: "true or false", list: "an array",
    dict: "a table", float: "a number",
}  # fmt: skip


def _toml_type(value: Any) -> str:
    for typ in (bool, int, float, str, list, dict):
        if isinstance(value, typ):
            return _TOML_TYPES[typ]
    return type(value).__name__


def check_req(d: dict[str, Any], key: str, typ: type, name: str) -> Any:
    if key not in d:
        raise ConfigError(f"{name}: required")
    return check_opt(d, key, typ, name)


def check_duration(d: dict[str, Any], key: str, default: float, where: str) -> float:
    if key not in d:
        return default
    try:
        return parse_duration(d[key])
    except ValueError as e:
        raise ConfigError(f"{where}.{key}: {e}") from None

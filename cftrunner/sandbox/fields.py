"""Reading typed fields out of decoded JSON request bodies, raising Invalid on anything else."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class WorldError(Exception):
    """The sandbox refused a request."""


class Invalid(WorldError):
    """A request body or query is malformed or has an invalid field."""


class NotFound(WorldError):
    """A referenced resource does not exist."""


class Unavailable(WorldError):
    """The resource exists but cannot serve the request now (503)."""


def decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("request body is not valid JSON") from None


def as_object(value: object, what: str = "request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be a JSON object")
    return value


def _pick(data: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The first of names present with a non-null value; JSON null counts as absent."""
    for name in names:
        if data.get(name) is not None:
            return data[name]
    return None


def optional_text(data: Mapping[str, Any], *names: str, max_len: int | None = None) -> str | None:
    value = _pick(data, names)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{names[0]} must be a string")
    if max_len is not None and len(value) > max_len:
        raise Invalid(f"{names[0]} must be at most {max_len} characters")
    return value


def text(data: Mapping[str, Any], *names: str, max_len: int | None = None) -> str:
    value = optional_text(data, *names, max_len=max_len)
    if value is None:
        raise Invalid(f"{names[0]} is required")
    return value


def non_empty_text(data: Mapping[str, Any], *names: str) -> str:
    value = text(data, *names)
    if not value.strip():
        raise Invalid(f"{names[0]} must not be empty")
    return value


def optional_number(data: Mapping[str, Any], *names: str, low: float, high: float) -> float | None:
    value = _pick(data, names)
    if value is None:
        return None
    # bool is an int subclass in Python, but true is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{names[0]} must be a number")
    if not low <= value <= high:
        raise Invalid(f"{names[0]} must be between {low:g} and {high:g}")
    return float(value)


def number(data: Mapping[str, Any], *names: str, low: float, high: float) -> float:
    value = optional_number(data, *names, low=low, high=high)
    if value is None:
        raise Invalid(f"{names[0]} is required")
    return value


def optional_integer(
    data: Mapping[str, Any], name: str, *, low: int, high: int | None = None
) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{name} must be an integer")
    if high is not None and not low <= value <= high:
        raise Invalid(f"{name} must be between {low} and {high}")
    if value < low:
        raise Invalid(f"{name} must be at least {low}")
    return value


def integer(data: Mapping[str, Any], name: str, *, low: int, high: int, default: int) -> int:
    value = optional_integer(data, name, low=low, high=high)
    return default if value is None else value


def object_list(data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = data.get(name)
    if not isinstance(value, list) or not value:
        raise Invalid(f"{name} must be a non-empty list")
    return [as_object(item, f"each of {name}") for item in value]

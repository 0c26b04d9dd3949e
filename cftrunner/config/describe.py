"""The resolved settings as `cftrunner config` lists them: each key's value as text and where it came from."""

from __future__ import annotations

from typing import Any

from cftrunner.config.cycle import CYCLE_KEYS
from cftrunner.config.cycle_file import ENTRY_SOURCE
from cftrunner.config.resolution import Resolved
from cftrunner.config.settings import KEYS
from cftrunner.config.values import Key, duration_text, number_text, shown

NOT_SET = "(not set)"


def describe(resolved: Resolved) -> list[tuple[str, str, str]]:
    """(dotted key, value as text, source) for every setting in the file's order; the key redacted."""
    rows: list[tuple[str, str, str]] = []
    for key in KEYS:
        rows.append((key.name, _text(key, _value(resolved, key)), resolved.sources[key.name]))
        if key.name == "api_key_file":
            rows.append(("api_key", redact(resolved.settings.api_key), resolved.sources["api_key"]))
    return rows


def describe_cycles(resolved: Resolved) -> list[str]:
    """One line per [[cycles]] entry, "cycle NAME: KEY = VALUE, ..." for the keys it sets itself;
    none without [[cycles]]."""
    lines: list[str] = []
    for cycle, cycle_sources in zip(resolved.cycles, resolved.cycle_sources, strict=True):
        if cycle.origin is None:
            continue
        own = [f"{key.name} = {_text(key, getattr(cycle, key.target.removeprefix('cycle.')))}"
               for key in CYCLE_KEYS if ENTRY_SOURCE in cycle_sources[key.name]]
        lines.append(f"cycle {cycle.title}: {', '.join(own) or 'every key inherited'}")
    return lines


def redact(api_key: str) -> str:
    """The key as shown: its last four characters at most, and none of a key too short to spare them."""
    if not api_key:
        return NOT_SET
    return "****" + (api_key[-4:] if len(api_key) >= 12 else "")


def _value(resolved: Resolved, key: Key) -> Any:
    value: Any = resolved
    for part in key.target.split("."):
        value = getattr(value, part)
    return value


def _text(key: Key, value: Any) -> str:
    if value is None:
        return "never" if key.rule.never else NOT_SET
    if key.rule.kind == "duration":
        return duration_text(value)
    if key.rule.kind == "boolean":
        return shown(value)
    if key.rule.kind in ("integer", "number"):
        return number_text(value)
    return str(value)

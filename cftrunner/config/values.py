"""A setting's value: the rule a key's value must meet, how it is parsed and checked, and how it is shown."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cftrunner.exceptions import InputError

Kind = Literal["integer", "number", "duration", "boolean", "choice", "text", "path", "url", "db"]
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DB_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                  "false": False, "0": False, "no": False, "off": False}


def _names_host(url: str) -> bool:
    """Whether an http(s) URL names a host, and a port that is a number if any ("http://:80" and
    "http://x:y" do not: no request could be sent to them)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a ValueError for a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname)


@dataclass(frozen=True)
class Rule:
    """Which values a key accepts, and what each becomes."""

    kind: Kind
    low: float | None = None
    high: float | None = None
    above: bool = False  # `low` itself is refused
    choices: tuple[str, ...] = ()
    never: bool = False  # a duration that may be "never" (None)
    example: str = ""  # a value the message about a refused db URL shows
    exact: bool = False  # a URL kept as written, a trailing "/" included (a webhook's)

    @property
    def requirement(self) -> str:
        """What a value must be, to finish "KEY must be ..."."""
        if self.kind in ("integer", "number", "duration"):
            noun = {"integer": "an integer", "number": "a number", "duration": "a duration"}[self.kind]
            if self.low is not None and self.high is not None:
                bound = f" from {number_text(self.low)} to {number_text(self.high)}"
            else:
                bound = f" {'>' if self.above else '>='} {number_text(self.low or 0)}"
            forms = ' ("90s", "30m", "24h", "7d" or a number of seconds)' if self.kind == "duration" else ""
            if self.never:
                forms = forms.replace(" or a number", ", a number").replace(")", ' or "never")')
            return noun + bound + forms
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        return {"text": "a non-empty string", "path": "a non-empty string (a path)",
                "url": "a URL starting with http:// or https://",
                "db": f"an SQLAlchemy URL such as {self.example}"}[self.kind]

    def check(self, value: object, text: bool) -> Any:
        """The setting's value for `value`, or ValueError. `text`: strings may spell numbers."""
        if self.kind in ("integer", "number"):
            if text and isinstance(value, str):
                value = (int if self.kind == "integer" else float)(value)
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    self.kind == "integer" and not isinstance(value, int)):
                raise ValueError(value)
            return self._bounded(value) if self.kind == "integer" else float(self._bounded(value))
        if self.kind == "boolean":
            if text and isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
                return _BOOLEAN_WORDS[value.strip().lower()]
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if self.kind == "duration":
            if self.never and isinstance(value, str) and value.strip().lower() == "never":
                return None
            if isinstance(value, str):
                value = parse_duration(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(value)
            return float(self._bounded(value))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(value)
        if self.kind == "choice":
            if value.strip().lower() not in self.choices:
                raise ValueError(value)
            return value.strip().lower()
        if self.kind == "url":
            url = value.strip() if self.exact else value.strip().rstrip("/")
            if not re.fullmatch(r"https?://[^/\s]+.*", url) or not _names_host(url):
                raise ValueError(value)
            return url
        if self.kind == "db" and not _DB_URL.match(value.strip()):
            raise ValueError(value)
        return value.strip()

    def _bounded(self, value: float) -> float:
        as_float = float(value)  # OverflowError, a ValueError-like refusal, for an absurd integer
        if not math.isfinite(as_float) or (self.high is not None and value > self.high):
            raise ValueError(value)
        if self.low is not None and (value < self.low or (self.above and value == self.low)):
            raise ValueError(value)
        return value


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "24h", "7d" or "90"; ValueError for anything else."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def number_text(value: float) -> str:
    """A number as written in a config file: 30 rather than 30.0."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def duration_text(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 86400 -> "1d", 5400 -> "90m"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{number_text(seconds / size)}{unit}"
    return f"{number_text(seconds)}s"


def shown(value: object) -> str:
    """A refused value as the message quotes it: strings in double quotes, tables by name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Key:
    """One setting: its dotted key in the config file, where its value lands, its rule and default."""

    name: str
    target: str  # "settings.<field>", "settings.retry.<field>", "cycle.<field>", or a Resolved field
    rule: Rule
    default: Any
    env: str | None = None

    def check(self, value: object, *, text: bool, label: str) -> Any:
        """The setting's value; an InputError "LABEL must be ..., not VALUE" if the rule refuses it."""
        try:
            return self.rule.check(value, text)
        except (ValueError, OverflowError):
            raise InputError(f"{label} must be {self.rule.requirement}, not {shown(value)}") from None

"""Fault rules and the thread-safe book that picks which one, if any, hits a request."""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass
from typing import Any

KINDS = ("status", "drop", "late", "latency", "hold", "malformed", "truncated", "no_content",
         "lora_flag", "advise")


@dataclass(frozen=True)
class FaultRule:
    """One way to misbehave, and which requests it hits.

    kind "status" answers `status` without acting (or after acting, with `after_action`); "drop"
    acts and closes the connection without an answer; "late" acts and answers after `delay`;
    "latency" waits `delay` and then acts; "hold" waits until the holds are released (see
    FaultBook.release; at most `delay` seconds when it is above 0) and then acts; "malformed"
    acts and answers a judge call with an invalid judgment, any other request with a body that
    is not JSON; "truncated" acts and answers a chat call with the first half of its content and
    finish_reason "length", any other request (or a chat call refused with a 4xx) with the first
    half of its body, which is not JSON; "no_content" acts and answers a chat call with `content:
    null` and finish_reason "content_filter", as the SDK allows; "lora_flag" acts and answers a
    recommendations poll in the API's older shape, each experiment's `lora` true or false instead
    of its `training_type`. The last two answer any other request as it is. "advise" acts and
    answers as it would, with a `Retry-After` of `retry_after` seconds: a successful poll that
    asks to be made again no sooner.
    """

    route: str = "*"
    kind: str = "status"
    status: int = 503
    retry_after: float | None = None
    after_action: bool = False
    delay: float = 0.0
    times: int | None = None
    every: int | None = None
    probability: float = 1.0
    match: str | None = None
    judge: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.delay < 0 or (self.retry_after is not None and self.retry_after < 0):
            raise ValueError("delay and retry_after must not be negative")
        if (self.times is not None and self.times < 1) or (
            self.every is not None and self.every < 1
        ):
            raise ValueError("times and every must be at least 1")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")

    @classmethod
    def from_json(cls, data: object) -> FaultRule:
        """The rule a control request describes; ValueError on unknown fields or wrong types."""
        if not isinstance(data, dict):
            raise ValueError("a fault rule must be a JSON object")
        unknown = set(data) - set(_JSON_TYPES)
        if unknown:
            raise ValueError(f"unknown fault rule fields: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            if not _json_type(value) & set(_JSON_TYPES[name]):
                raise ValueError(f"fault rule field {name} has the wrong type")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        if float(self.retry_after).is_integer():
            return str(int(self.retry_after))
        return str(self.retry_after)


_JSON_TYPES: dict[str, tuple[str, ...]] = {
    "route": ("str",),
    "kind": ("str",),
    "status": ("int",),
    "retry_after": ("number", "null"),
    "after_action": ("bool",),
    "delay": ("number",),
    "times": ("int", "null"),
    "every": ("int", "null"),
    "probability": ("number",),
    "match": ("str", "null"),
    "judge": ("bool", "null"),
}


def _json_type(value: object) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"bool"}
    if isinstance(value, int):
        return {"int", "number"}
    if isinstance(value, float):
        return {"number"}
    return {"str"} if isinstance(value, str) else set()


@dataclass(frozen=True)
class Request:
    """What fault selection may look at: route name, raw body, and for chat whether it judges."""

    route: str
    body: bytes
    judge: bool | None = None


@dataclass
class _Entry:
    rule: FaultRule
    seen: int = 0
    fired: int = 0


class FaultBook:
    """Rules in order; the first that matches a request and fires is the one applied."""

    def __init__(self, *, seed: int = 0, routes: frozenset[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._routes = routes
        self._entries: list[_Entry] = []
        self._malformed = 0
        self._released = threading.Event()

    def add(self, rule: FaultRule) -> None:
        if self._routes is not None and rule.route != "*" and rule.route not in self._routes:
            raise ValueError(f"unknown route {rule.route!r}")
        with self._lock:
            if rule.kind == "hold" and self._released.is_set():
                self._released = threading.Event()  # holds again, after an earlier release
            self._entries.append(_Entry(rule))

    def clear(self) -> int:
        """Remove every rule, and let go of the requests held."""
        with self._lock:
            cleared = len(self._entries)
            self._entries.clear()
            self._released.set()
            return cleared

    def release(self) -> None:
        """Let the requests "hold" rules are holding go on, and those they would hold from now on
        until another "hold" rule is added."""
        with self._lock:
            self._released.set()

    def wait_released(self, timeout: float | None = None) -> bool:
        """Block until the holds are released (False: `timeout` seconds passed first)."""
        with self._lock:
            released = self._released
        return released.wait(timeout)

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return [entry.rule for entry in self._entries]

    def select(self, request: Request) -> FaultRule | None:
        with self._lock:
            for entry in self._entries:
                if _matches(entry, request) and self._fires(entry):
                    return entry.rule
            return None

    def next_malformed(self) -> int:
        """A counter that cycles the malformed variants across all rules."""
        with self._lock:
            self._malformed += 1
            return self._malformed - 1

    def _fires(self, entry: _Entry) -> bool:
        entry.seen += 1
        rule = entry.rule
        if rule.every is not None and (entry.seen - 1) % rule.every != 0:
            return False
        if rule.probability < 1.0 and self._random.random() >= rule.probability:
            return False
        entry.fired += 1
        return True


def _matches(entry: _Entry, request: Request) -> bool:
    rule = entry.rule
    if rule.times is not None and entry.fired >= rule.times:
        return False
    if rule.route not in ("*", request.route):
        return False
    if rule.judge is not None and request.judge is not rule.judge:
        return False
    return rule.match is None or rule.match.encode("utf-8") in request.body

"""Retry decisions as pure values: whether a failed request is tried again, and after how long."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from cftrunner.exceptions import (
    ApiError,
    AuthError,
    BadResponseError,
    RejectedError,
    TransientError,
)

Decision = Literal["retry", "permanent", "stop"]

_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")
# 2**62 times any sane base_delay is far past any max_delay; capping the exponent keeps
# float arithmetic from overflowing for absurd attempt numbers.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, one request is tried."""

    max_attempts: int = 6  # attempts in total for one request, the first included
    # Refusals with 429 are counted apart: the API asking to slow down is not the request
    # failing, and the shared rate limiter is already slowing the whole run.
    max_rate_limited: int = 40
    base_delay: float = 0.5  # seconds before the second attempt, at most
    max_delay: float = 30.0  # cap on the computed backoff
    max_retry_after: float = 300.0  # a longer Retry-After gives up rather than sleeping that long

    def __post_init__(self) -> None:
        for name in ("max_attempts", "max_rate_limited"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")


def classify(error: BaseException) -> Decision:
    """What a failure means: "retry" it, the request is "permanent"ly refused, or "stop" the run."""
    # An unreadable 2xx is retried too: for a request with an effect, the retry reconciles
    # first and finds what the lost answer would have said.
    if isinstance(error, TransientError | BadResponseError):
        return "retry"
    if isinstance(error, RejectedError) and not isinstance(error, AuthError):
        return "permanent"
    return "stop"


def rate_limited(error: BaseException) -> bool:
    """A 429: surely not acted on, and a request to slow down rather than a failure."""
    return isinstance(error, TransientError) and error.status_code == 429


def next_delay(
    policy: RetryPolicy,
    error: BaseException,
    attempt: int,
    rand: Callable[[], float],
) -> float | None:
    """Seconds to wait before the next try after attempt number `attempt` failed; None gives up.
    For a 429, `attempt` counts the 429s alone, within `max_rate_limited`.

    The backoff is capped exponential with full jitter (`rand` returns a float in [0, 1)); a
    Retry-After from the server is a floor, never shortened, but one beyond the policy's patience
    gives up.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    budget = policy.max_rate_limited if rate_limited(error) else policy.max_attempts
    if classify(error) != "retry" or attempt >= budget:
        return None
    exponent = min(attempt - 1, _MAX_EXPONENT)
    backoff = min(policy.max_delay, policy.base_delay * 2.0**exponent) * rand()
    retry_after = error.retry_after if isinstance(error, ApiError) else None
    if retry_after is None:
        return backoff
    if retry_after > policy.max_retry_after:
        return None
    return max(retry_after, backoff)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` that an HTTP Retry-After value asks to wait; None if it is unusable.

    Accepts delta-seconds ("120", and "1.5" though HTTP wants an integer) or an HTTP-date; a date
    already past means 0.0.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # An HTTP-date is always GMT; parsedate_to_datetime leaves "-0000" dates naive.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())

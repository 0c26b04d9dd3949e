"""Retry classification, backoff and Retry-After parsing, all without a clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cftrunner.exceptions import (
    ApiError,
    AuthError,
    BadResponseError,
    JudgeOutputError,
    RejectedError,
    TransientError,
)
from cftrunner.retry import RetryPolicy, classify, next_delay, parse_retry_after

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def always(value: float) -> Callable[[], float]:
    return lambda: value


def sequence(*values: float) -> Callable[[], float]:
    items: Iterator[float] = iter(values)
    return lambda: next(items)


def transient(retry_after: float | None = None) -> TransientError:
    return TransientError("503", status_code=503, retry_after=retry_after, maybe_happened=True)


# classify


@pytest.mark.parametrize(
    "error",
    [
        TransientError("connection refused", maybe_happened=False),
        TransientError("read timeout", maybe_happened=True),
        TransientError("request timeout", status_code=408),
        TransientError("too many requests", status_code=429, retry_after=3.0),
        TransientError("bad gateway", status_code=502, maybe_happened=True),
    ],
)
def test_transient_errors_are_retried(error: TransientError) -> None:
    assert classify(error) == "retry"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_rejected_requests_are_permanent(status: int) -> None:
    assert classify(RejectedError("no", status_code=status)) == "permanent"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_stop_the_run(status: int) -> None:
    assert classify(AuthError("bad key", status_code=status)) == "stop"


@pytest.mark.parametrize(
    "error",
    [
        ApiError("unknown", status_code=503),
        JudgeOutputError("score 7 is outside [0, 1]"),
        RuntimeError("bug"),
        KeyboardInterrupt(),
    ],
)
def test_anything_else_stops_the_run(error: BaseException) -> None:
    assert classify(error) == "stop"


def test_unreadable_answers_are_retried() -> None:
    """A 2xx whose body cannot be read is tried again (after reconciling, for effects)."""
    assert classify(BadResponseError("not JSON", maybe_happened=True)) == "retry"


# next_delay


def test_backoff_doubles_with_each_attempt() -> None:
    delays = [next_delay(POLICY, transient(), attempt, always(1.0)) for attempt in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_backoff_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(max_attempts=100)
    assert next_delay(policy, transient(), 20, always(1.0)) == 30.0


def test_backoff_survives_absurd_attempt_numbers() -> None:
    policy = RetryPolicy(max_attempts=10**6)
    assert next_delay(policy, transient(), 10**5, always(1.0)) == 30.0


def test_jitter_scales_the_backoff_between_zero_and_the_cap() -> None:
    rand = sequence(0.0, 0.5, 0.999)
    delays = [next_delay(POLICY, transient(), 4, rand) for _ in range(3)]
    assert delays == [0.0, 2.0, pytest.approx(3.996)]


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    assert next_delay(POLICY, transient(retry_after=42.0), 1, always(1.0)) == 42.0


def test_retry_after_never_shortens_the_backoff() -> None:
    assert next_delay(POLICY, transient(retry_after=0.1), 5, always(1.0)) == 8.0


def test_retry_after_is_a_floor_even_with_zero_jitter() -> None:
    assert next_delay(POLICY, transient(retry_after=5.0), 3, always(0.0)) == 5.0


def test_retry_after_at_the_limit_is_still_waited() -> None:
    assert next_delay(POLICY, transient(retry_after=300.0), 1, always(0.5)) == 300.0


def test_retry_after_beyond_the_limit_gives_up() -> None:
    assert next_delay(POLICY, transient(retry_after=300.5), 1, always(0.5)) is None


def test_gives_up_after_max_attempts() -> None:
    assert next_delay(POLICY, transient(), 5, always(1.0)) is not None
    assert next_delay(POLICY, transient(), 6, always(1.0)) is None


def test_refusals_with_429_have_their_own_budget() -> None:
    policy = RetryPolicy(max_attempts=2, max_rate_limited=10)
    refused = TransientError("slow down", status_code=429)
    assert next_delay(policy, transient(), 2, always(1.0)) is None
    assert next_delay(policy, refused, 9, always(1.0)) is not None
    assert next_delay(policy, refused, 10, always(1.0)) is None
    assert next_delay(policy, TransientError("busy", status_code=503), 2, always(1.0)) is None


def test_single_attempt_policy_never_retries() -> None:
    assert next_delay(RetryPolicy(max_attempts=1), transient(), 1, always(1.0)) is None


@pytest.mark.parametrize(
    "error",
    [RejectedError("no", status_code=400), AuthError("key", status_code=401), ValueError("x")],
)
def test_non_retryable_errors_give_up_at_once(error: BaseException) -> None:
    assert next_delay(POLICY, error, 1, always(1.0)) is None


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_delay(POLICY, transient(), 0, always(1.0))


@pytest.mark.parametrize(
    "fields",
    [{"max_attempts": 0}, {"max_rate_limited": 0}, {"base_delay": -1.0},
     {"max_delay": float("inf")}],
)
def test_policy_refuses_nonsense_settings(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)


# parse_retry_after


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 1.5 ", 1.5)])
def test_parses_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_parses_an_http_date_in_the_future() -> None:
    assert parse_retry_after("Fri, 14 Mar 2025 12:01:30 GMT", NOW) == 90.0


def test_parses_an_http_date_with_a_minus_zero_offset_as_utc() -> None:
    assert parse_retry_after("Fri, 14 Mar 2025 12:00:10 -0000", NOW) == 10.0


def test_an_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Fri, 14 Mar 2025 11:00:00 GMT", NOW) == 0.0


def test_date_arithmetic_uses_the_given_now() -> None:
    later = NOW + timedelta(seconds=30)
    assert parse_retry_after("Fri, 14 Mar 2025 12:01:30 GMT", later) == 60.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "1e3", "inf", "nan", "0x10", "Fri, 32 Mar 2025 12:00:00 GMT"]
)
def test_unusable_values_mean_no_retry_after(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_retry_after("120", NOW.replace(tzinfo=None))

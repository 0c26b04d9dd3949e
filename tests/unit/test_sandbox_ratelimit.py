"""The sandbox's token bucket, given the time: burst, refill, and what a refused request is told."""

from __future__ import annotations

import pytest

from cftrunner.clock import utcnow
from cftrunner.retry import parse_retry_after
from cftrunner.sandbox.ratelimit import RateLimit, retry_after_text


def test_without_a_limit_every_request_is_let_through_unrecorded() -> None:
    assert [RateLimit().take(100.0) for _ in range(50)] == [None] * 50


def test_a_burst_is_admitted_at_once_then_the_next_waits_for_a_token() -> None:
    limit = RateLimit(rps=10.0, burst=3)
    assert [limit.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take(100.0) == pytest.approx(0.1)
    assert limit.take(100.04) == pytest.approx(0.06)


def test_tokens_come_back_at_the_rate() -> None:
    limit = RateLimit(rps=10.0, burst=1)
    assert limit.take(100.0) == 0.0
    assert limit.take(100.05) == pytest.approx(0.05)
    assert limit.take(100.1) == 0.0


def test_a_refused_request_takes_no_token() -> None:
    limit = RateLimit(rps=10.0, burst=1)
    limit.take(100.0)
    for at in (100.02, 100.04, 100.06, 100.08):
        assert (limit.take(at) or 0.0) > 0
    assert limit.take(100.1) == 0.0


def test_idle_time_saves_up_no_more_than_the_burst() -> None:
    limit = RateLimit(rps=10.0, burst=2)
    limit.take(100.0)
    assert [limit.take(200.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_over_any_span_at_most_burst_plus_rate_times_span_are_admitted() -> None:
    limit = RateLimit(rps=20.0, burst=5)
    admitted = [t / 1000 for t in range(0, 3000, 7) if limit.take(t / 1000) == 0.0]
    assert len(admitted) <= 5 + 20 * 3
    for i, start in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t < start + 1.0) <= 5 + 20


def test_configure_lifts_or_changes_the_limit_with_a_full_bucket() -> None:
    limit = RateLimit(rps=1.0)
    limit.take(100.0)
    limit.configure(None)
    assert limit.take(100.0) is None
    limit.configure(2.0, burst=2)
    assert [limit.take(100.0) for _ in range(2)] == [0.0, 0.0]
    assert limit.to_json() == {"rps": 2.0, "burst": 2}


@pytest.mark.parametrize("rps, burst", [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_an_impossible_limit_is_refused(rps: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rps, burst)


@pytest.mark.parametrize(
    "data", [{"rps": "5"}, {"rps": True}, {"burst": 2}, {"rps": 5, "burst": 1.5}, {"rps": 5, "x": 1}, [5]]
)
def test_a_control_request_with_a_wrong_shape_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(data)


def test_a_control_request_parses_to_rate_and_burst() -> None:
    assert RateLimit.parse({"rps": 5}) == (5.0, 1)
    assert RateLimit.parse({"rps": None, "burst": 3}) == (None, 3)


@pytest.mark.parametrize(
    "seconds, text", [(0.05, "0.05"), (0.0421, "0.043"), (0.0001, "0.001"), (1.0, "1"), (2.5, "2.5")]
)
def test_retry_after_is_rounded_up_to_the_millisecond(seconds: float, text: str) -> None:
    assert retry_after_text(seconds) == text
    assert parse_retry_after(text, utcnow()) == pytest.approx(float(text))

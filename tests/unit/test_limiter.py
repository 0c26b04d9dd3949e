"""The shared rate limiter, on a fake clock: ceiling, push-back, recovery."""

from __future__ import annotations

import pytest

from cftrunner.limiter import MIN_RATE, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_without_a_ceiling_or_push_back_nothing_waits(clock: Clock) -> None:
    limiter = RateLimiter(None, clock, clock.sleep)
    assert [limiter.wait_turn() for _ in range(100)] == [0.0] * 100


def test_a_ceiling_spaces_requests_evenly(clock: Clock) -> None:
    limiter = RateLimiter(4.0, clock, clock.sleep)
    for _ in range(9):
        limiter.wait_turn()
    assert clock.now == pytest.approx(100.0 + 8 * 0.25)


def test_a_push_back_halves_the_rate_and_pauses_everyone(clock: Clock) -> None:
    limiter = RateLimiter(10.0, clock, clock.sleep)
    limiter.wait_turn()
    limiter.pushed_back(retry_after=2.0)
    assert limiter.rate == 5.0
    limiter.wait_turn()
    assert clock.now == pytest.approx(102.0)
    limiter.wait_turn()
    assert clock.now == pytest.approx(102.2)


def test_successes_regain_the_rate_up_to_the_ceiling(clock: Clock) -> None:
    limiter = RateLimiter(10.0, clock, clock.sleep)
    limiter.pushed_back(None)
    rates = []
    for _ in range(200):
        limiter.went_through()
        rates.append(limiter.rate)
    assert rates == sorted(rates) and rates[-1] == 10.0


def test_an_unlimited_run_pushed_back_slows_to_half_what_it_achieved_then_recovers(
        clock: Clock) -> None:
    limiter = RateLimiter(None, clock, clock.sleep)
    for _ in range(21):  # 20 requests a second
        limiter.wait_turn()
        clock.now += 0.05
    limiter.pushed_back(None)
    assert limiter.rate == pytest.approx(10.0, rel=0.1)
    for _ in range(10_000):
        limiter.went_through()
        if limiter.rate is None:
            break
    assert limiter.rate is None


def test_the_rate_never_drops_below_the_floor(clock: Clock) -> None:
    limiter = RateLimiter(1.0, clock, clock.sleep)
    for _ in range(20):
        limiter.pushed_back(None)
    assert limiter.rate == MIN_RATE

"""The shared rate limiter, on a fake clock: ceiling, push-back, recovery."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cftrunner.limiter import MIN_RATE, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.during_sleep: Callable[[], object] | None = None  # run once, in the next sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.during_sleep is not None:
            hook, self.during_sleep = self.during_sleep, None
            hook()


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
    for _ in range(21):  # 20 requests a second, each going through
        limiter.wait_turn()
        limiter.went_through()
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


def test_requests_refused_together_halve_the_rate_once(clock: Clock) -> None:
    """Eight requests in flight refused by one push-back are one signal, not eight."""
    limiter = RateLimiter(16.0, clock, clock.sleep)
    sent = threading.Barrier(8, timeout=5)

    def request() -> None:
        limiter.wait_turn()
        sent.wait()
        limiter.pushed_back(None)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limiter.rate == 8.0


def test_a_request_sent_after_the_halving_and_refused_halves_again(clock: Clock) -> None:
    limiter = RateLimiter(16.0, clock, clock.sleep)
    limiter.wait_turn()
    limiter.pushed_back(None)
    limiter.wait_turn()
    limiter.pushed_back(None)
    assert limiter.rate == 4.0


def test_a_refusal_of_a_request_sent_before_the_halving_still_pauses(clock: Clock) -> None:
    limiter = RateLimiter(10.0, clock, clock.sleep)
    limiter.wait_turn()
    limiter.pushed_back(None)
    limiter.pushed_back(retry_after=3.0)
    assert limiter.rate == 5.0
    limiter.wait_turn()
    assert clock.now == pytest.approx(103.0)


def test_a_pause_holds_back_a_request_already_waiting_for_its_turn(clock: Clock) -> None:
    """A turn is given when it comes, not booked ahead, so a later push-back delays it too."""
    limiter = RateLimiter(1.0, clock, clock.sleep)
    limiter.wait_turn()
    clock.during_sleep = lambda: limiter.pushed_back(retry_after=5.0)  # at 101, as it is due
    limiter.wait_turn()
    assert clock.now == pytest.approx(106.0)


def test_a_push_back_halves_from_what_went_through_when_that_is_lower(clock: Clock) -> None:
    """A rate of 40 that only ever achieved 10 becomes 5, not 20, which would slow nothing."""
    limiter = RateLimiter(40.0, clock, clock.sleep)
    for _ in range(11):
        limiter.wait_turn()
        limiter.went_through()
        clock.now += 0.1
    limiter.rate = 40.0
    limiter.pushed_back(None)
    assert limiter.rate == pytest.approx(5.0, rel=0.1)


def test_an_unlimited_run_is_released_only_at_double_the_rate_refused_not_the_rate_achieved(
        clock: Clock) -> None:
    """Refused at 10 a second while only 2 went through: unlimited again at 20, not at 4."""
    limiter = RateLimiter(None, clock, clock.sleep)
    for _ in range(21):  # 20 requests a second
        limiter.wait_turn()
        limiter.went_through()
        clock.now += 0.05
    limiter.pushed_back(None)
    assert limiter.rate == pytest.approx(10.0, rel=0.1)
    clock.now += 2.0
    for _ in range(4):  # 2 a second
        limiter.wait_turn()
        limiter.went_through()
        clock.now += 0.5
    refused = limiter.rate
    assert refused is not None
    limiter.pushed_back(None)
    assert limiter.rate == pytest.approx(1.0, rel=0.1)
    rates = []
    while limiter.rate is not None:
        rates.append(limiter.rate)
        limiter.went_through()
    assert max(rates) + 1 / max(rates) >= 2 * refused


def test_one_request_going_through_raises_a_low_rate_by_an_eighth_at_most(clock: Clock) -> None:
    limiter = RateLimiter(10.0, clock, clock.sleep)
    for _ in range(20):
        limiter.pushed_back(None)
    limiter.went_through()
    assert limiter.rate == pytest.approx(MIN_RATE * 1.125)

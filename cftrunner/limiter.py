"""One rate for the whole run: an optional ceiling, halved when the API pushes back, regained slowly."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MIN_RATE = 0.5  # requests per second; the slowest the run is ever throttled to
# Assumed rate of an unlimited run pushed back before it has a measurable history.
FALLBACK_RATE = 8.0


class RateLimiter:
    """Shared by every request of a run, so a 429 slows all of them, not only the one refused.

    With no ceiling and no push-back it never waits. A push-back (429, or a Retry-After) halves
    the rate from what was being achieved and pauses everyone for the Retry-After; each request
    that goes through then adds about one request per second per second (additive increase),
    up to the ceiling, or back to unlimited once the rate has doubled.
    """

    def __init__(self, max_rps: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.ceiling = max_rps
        self.rate = max_rps
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._paused_until = 0.0
        self._release_at: float | None = None
        self._starts: deque[float] = deque(maxlen=64)
        self._lock = threading.Lock()

    def wait_turn(self) -> float:
        """Block until this request may go; the seconds waited."""
        with self._lock:
            now = self._clock()
            at = max(now, self._paused_until)
            if self.rate is not None:
                at = max(at, self._next)
                self._next = at + 1.0 / self.rate
            self._starts.append(at)
        if at > now:
            self._sleep(at - now)
        return at - now

    def pushed_back(self, retry_after: float | None) -> None:
        with self._lock:
            now = self._clock()
            current = self.rate if self.rate is not None else self._observed(now)
            self.rate = max(MIN_RATE, current / 2)
            if self.ceiling is None:
                self._release_at = current
            if retry_after:
                self._paused_until = max(self._paused_until, now + retry_after)
            self._next = max(self._next, self._paused_until)

    def went_through(self) -> None:
        with self._lock:
            if self.rate is None:
                return
            rate = self.rate + 1.0 / self.rate
            if self.ceiling is not None:
                self.rate = min(self.ceiling, rate)
            elif self._release_at is not None and rate >= self._release_at * 2:
                self.rate, self._release_at = None, None
            else:
                self.rate = rate

    def _observed(self, now: float) -> float:
        """Requests per second over the recent starts; generous when there are too few."""
        recent = [t for t in self._starts if t > now - 10]
        if len(recent) < 2:
            return FALLBACK_RATE
        span = max(recent[-1] - recent[0], 1e-3)
        return (len(recent) - 1) / span

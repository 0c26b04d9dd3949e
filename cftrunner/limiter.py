"""One rate for the whole run: an optional ceiling, halved when the API pushes back, regained slowly."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MIN_RATE = 0.5  # requests per second; the slowest the run is ever throttled to
# Assumed rate of an unlimited run pushed back before it has a measurable history.
FALLBACK_RATE = 8.0
# What was achieved is measured over this many recent seconds: longer would halve from a rate
# that the run had already left behind, and so halve a little more each time.
ACHIEVED_WINDOW = 2.0
# At low rates one request adding 1/rate would multiply the rate (0.5 -> 2.5 at once).
MAX_STEP = 1 / 8


class RateLimiter:
    """Shared by every request of a run, so a 429 slows all of them, not only the one refused.

    With no ceiling and no push-back it never waits. A push-back (429, or a Retry-After) halves
    the rate from what was being achieved (the rate of requests that went through, when lower
    than the one allowed) and pauses everyone for the Retry-After; each request that goes
    through then adds about one request per second per second (additive increase; below about
    3 requests per second, an eighth of the rate at most), up to the ceiling, or back to
    unlimited once the rate is double the one refused.

    The rate is halved once per push-back episode, as TCP does once per window: a request sent
    before the last halving says nothing about the new rate, so its 429 only pauses. Otherwise
    eight requests in flight, refused together, would cut the rate 256-fold. A turn is given
    when it comes, not booked ahead, so a halving or a pause holds back every waiting request.
    """

    def __init__(self, max_rps: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.ceiling = max_rps
        self.rate = max_rps
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        self._paused_until = 0.0
        self._release_at: float | None = None
        self._passed: deque[float] = deque(maxlen=256)
        self._halvings = 0
        # Each request is sent and answered on one thread, so the thread tells which request a
        # push-back is about.
        self._sent = threading.local()
        self._lock = threading.Lock()

    def wait_turn(self) -> float:
        """Block until this request may go; the seconds waited."""
        started = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                at = max(now, self._paused_until)
                if self.rate is not None and self._last is not None:
                    at = max(at, self._last + 1.0 / self.rate)
                if at <= now:
                    self._last = now
                    self._sent.halvings = self._halvings
                    return now - started
            self._sleep(at - now)

    def pushed_back(self, retry_after: float | None) -> None:
        """The request this thread last sent was refused: halve the rate, unless it was sent
        before the last halving; pause everyone for the Retry-After."""
        sent = getattr(self._sent, "halvings", None)
        with self._lock:
            now = self._clock()
            if sent is None or sent == self._halvings:
                known = [r for r in (self.rate, self._achieved(now)) if r is not None]
                current = min(known, default=FALLBACK_RATE)
                if self.ceiling is None:
                    self._release_at = self.rate or current  # the rate that was refused
                self.rate = max(MIN_RATE, current / 2)
                self._halvings += 1
            if retry_after:
                self._paused_until = max(self._paused_until, now + retry_after)

    def went_through(self) -> None:
        with self._lock:
            self._passed.append(self._clock())
            if self.rate is None:
                return
            rate = self.rate + min(1.0 / self.rate, self.rate * MAX_STEP)
            if self.ceiling is not None:
                self.rate = min(self.ceiling, rate)
            elif self._release_at is not None and rate >= self._release_at * 2:
                self.rate, self._release_at = None, None
            else:
                self.rate = rate

    def _achieved(self, now: float) -> float | None:
        """Requests per second that went through lately, a stall until now included; None when
        too few did."""
        recent = [t for t in self._passed if t > now - ACHIEVED_WINDOW]
        if len(recent) < 2:
            return None
        return len(recent) / max(now - recent[0], 1e-3)

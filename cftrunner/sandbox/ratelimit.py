"""The sandbox's requests-per-second limit, like an API gateway's: one token bucket for every route."""

from __future__ import annotations

import math
import threading
from typing import Any

# A token refilled in steps adds up to 0.9999999...; that request is on time, not early.
_EPSILON = 1e-9


class RateLimit:
    """At most `burst` requests at once and `rps` a second on average; no limit while rps is None.

    A token bucket: it holds up to `burst` tokens, refills at `rps` tokens a second, and each
    request admitted takes one. Over any span of T seconds it admits at most burst + rps * T.
    """

    def __init__(self, rps: float | None = None, burst: int = 1) -> None:
        self._lock = threading.Lock()
        self.rps: float | None = None
        self.burst = 1
        self._tokens = 0.0
        self._at: float | None = None
        self.configure(rps, burst)

    def configure(self, rps: float | None, burst: int = 1) -> None:
        """Sets (or with rps None lifts) the limit; the bucket starts full."""
        if rps is not None and not (math.isfinite(rps) and rps > 0):
            raise ValueError("rps must be a positive number of requests per second")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError("burst must be a whole number of requests, at least 1")
        with self._lock:
            self.rps, self.burst = (None if rps is None else float(rps)), burst
            self._tokens, self._at = float(burst), None

    def take(self, now: float) -> float | None:
        """None when there is no limit; 0.0 when the request is admitted (it takes a token);
        else the seconds until a token is free, and the request must not be acted on."""
        with self._lock:
            if self.rps is None:
                return None
            if self._at is not None:
                elapsed = max(0.0, now - self._at)
                self._tokens = min(float(self.burst), self._tokens + elapsed * self.rps)
            self._at = now
            if self._tokens >= 1.0 - _EPSILON:
                self._tokens = max(0.0, self._tokens - 1.0)
                return 0.0
            return (1.0 - self._tokens) / self.rps

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"rps": self.rps, "burst": self.burst}

    @classmethod
    def parse(cls, data: object) -> tuple[float | None, int]:
        """(rps, burst) from a control request's JSON object; ValueError if it is not one."""
        if not isinstance(data, dict) or not set(data) <= {"rps", "burst"} or "rps" not in data:
            raise ValueError('a rate limit is {"rps": number or null, "burst": integer}')
        rps, burst = data["rps"], data.get("burst", 1)
        if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float)):
            raise ValueError("rps must be a number or null")
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise ValueError("burst must be an integer")
        return (None if rps is None else float(rps)), burst


def retry_after_text(seconds: float) -> str:
    """A Retry-After value: whole seconds as an integer, else rounded up to the millisecond.

    HTTP asks for whole seconds, but rounding 50 ms up to "1" would idle a client 20 times longer
    than needed; cftrunner's parser (retry.parse_retry_after) reads a decimal.
    """
    millis = math.ceil(round(seconds * 1000, 6))
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis / 1000:.3f}".rstrip("0")

"""Thread-safe tallies of what the sandbox received and acted on, for exactly-once checks."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Ledger:
    """Counts kept apart from the state, so deleting a record never hides that it was made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acted: Counter[str] = Counter()
        self._additions: Counter[str] = Counter()
        self._recs: Counter[str] = Counter()
        self._chat: Counter[str] = Counter({"generate": 0, "judge": 0})
        self._requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._rate_limited = 0
        self._in_flight = 0
        self._most_in_flight = 0
        self._connections = 0
        self._admitted: list[tuple[float, str]] = []  # kept only while a rate limit is set

    def acted(self, what: str, n: int = 1) -> None:
        """One more trace, trace deletion, snapshot or job was made (`what` names which)."""
        with self._lock:
            self._acted[what] += n

    def added(self, trace_id: str) -> None:
        with self._lock:
            self._additions[trace_id] += 1

    def recommended(self, snapshot_id: str) -> None:
        with self._lock:
            self._recs[snapshot_id] += 1

    def chatted(self, judge: bool) -> None:
        with self._lock:
            self._chat["judge" if judge else "generate"] += 1

    def connected(self) -> None:
        """A client opened a connection (it may carry many requests, kept alive)."""
        with self._lock:
            self._connections += 1

    def received(self, route: str) -> None:
        """An API request came in; it is in flight until `answered`."""
        with self._lock:
            self._requests[route] += 1
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)

    def answered(self) -> None:
        """An API request was answered, refused or dropped."""
        with self._lock:
            self._in_flight -= 1

    def faulted(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def rate_limited(self) -> None:
        """One more request answered 429 by the rate limit, and not acted on."""
        with self._lock:
            self._rate_limited += 1

    def admitted(self, at: float, route: str) -> None:
        """A request for `route` went through the rate limit at `at` (time.monotonic())."""
        with self._lock:
            self._admitted.append((at, route))

    def admitted_requests(self) -> list[tuple[float, str]]:
        """(time, route) of each request the rate limit let through, earliest first."""
        with self._lock:
            return sorted(self._admitted)

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {
                "traces": self._acted["traces"],
                "traces_deleted": self._acted["traces_deleted"],
                "additions": dict(self._additions),
                "datapoints": sum(self._additions.values()),
                "snapshots": self._acted["snapshots"],
                "recommendations_generated": dict(self._recs),
                "jobs": self._acted["jobs"],
                "chat": dict(self._chat),
                "requests": dict(self._requests),
                "faults_fired": dict(self._faults),
                "rate_limited": self._rate_limited,
                "most_in_flight": self._most_in_flight,
                "connections": self._connections,
            }

"""How long to wait between two looks at something the platform is doing: soon at first, then
less and less often, up to a cap."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of `first` seconds, then each `factor` times the last, never more than `cap`.

    A wait on the platform (corrections, recommendations, training, a model loading) is often
    short and sometimes long: looking again soon catches the short ones, and backing off
    geometrically keeps the long ones to about one look per `cap`."""

    first: float
    factor: float
    cap: float

    def delays(self) -> Iterator[float]:
        delay = min(self.first, self.cap)
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)

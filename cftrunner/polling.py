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

    def delays(self) -> Delays:
        return Delays(self)


class Delays(Iterator[float]):
    """The waits of one `Backoff`, in turn. A look that saw the platform make progress (some of
    what it waits on is done) keeps the next wait as short as the last: the rest is likely
    close behind, so it does not back off while things are moving."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._delay: float | None = None

    def __next__(self) -> float:
        return self.after(progress=False)

    def after(self, progress: bool) -> float:
        """The next wait, after a look that made `progress` or not."""
        b = self._backoff
        if self._delay is None:
            self._delay = min(b.first, b.cap)
        elif not progress:
            self._delay = min(self._delay * b.factor, b.cap)
        return self._delay

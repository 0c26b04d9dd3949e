"""The run's token budget: tokens counted as completions come in, and read again from the store."""

from __future__ import annotations

import threading
import time

from cftrunner.records import Run
from cftrunner.store import Store


class TokenMeter:
    """The tokens a run has used, counted as completions come in; read again from the store
    every few seconds, so that the tokens of other workers count too."""

    REFRESH_SECONDS = 2.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._read_at: dict[str, float] = {}

    def used(self, run_id: str) -> int:
        with self._lock:
            if time.monotonic() - self._read_at.get(run_id, -self.REFRESH_SECONDS) \
                    >= self.REFRESH_SECONDS:
                self._used[run_id] = self.store.tokens_used(run_id)
                self._read_at[run_id] = time.monotonic()
            return self._used[run_id]

    def add(self, run_id: str, tokens: int | None) -> None:
        """Count tokens stored just now, until the next read includes them."""
        with self._lock:
            if tokens and run_id in self._used:
                self._used[run_id] += tokens

    def exhausted(self, run: Run) -> int | None:
        """The run's token budget when it is used up; None while tokens are left, or without one."""
        budget = run.gate.token_budget
        return budget if budget is not None and self.used(run.id) >= budget else None

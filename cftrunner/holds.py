"""A hold this process has on a run or on items of it: valid locally until its deadline, lost once
another process takes it, and kept alive by a heartbeat thread."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import structlog

from cftrunner.records import Owner

log = structlog.get_logger("cftrunner")


class Lease:
    """A hold this process has: on a run (its lease) or on items of it (a worker's claims);
    valid locally until its monotonic deadline, and `lost` once another process took it."""

    def __init__(self, run_id: str, owner: Owner, seconds: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.seconds = seconds
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()
        # One float, set and read whole (no lock: checked before every request and every write).
        self._valid_until = 0.0

    def renewed(self, at_monotonic: float) -> None:
        """Record a renewal that began at `at_monotonic`; a margin keeps clock skew on our side."""
        self._valid_until = at_monotonic + self.seconds * 0.8

    def locally_valid(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self._valid_until


class Heartbeat:
    """Renews a lease from a background thread while the main thread works or waits on the API."""

    def __init__(self, renew: Callable[[], bool], lease: Lease) -> None:
        self._renew = renew
        self._lease = lease
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cftrunner-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._done.wait(self._lease.seconds / 3):
            try:
                if not self._renew():
                    log.warning("lease_lost", run_id=self._lease.run_id)
                    return
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.warning("lease_renewal_failed", run_id=self._lease.run_id,
                            error=type(exc).__name__)

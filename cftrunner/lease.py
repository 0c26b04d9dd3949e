"""Who owns a run: owner identity, proof that an owner died, and the lease a driving process holds."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog

from cftrunner.exceptions import RunBusy
from cftrunner.records import LeaseInfo, Owner

log = structlog.get_logger("cftrunner")

HOST_ENV = "CFTRUNNER_HOST_ID"  # lets a test process pass for another host


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot), '' if there is none."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def current_owner() -> Owner:
    host = os.environ.get(HOST_ENV) or socket.gethostname()
    return Owner(host=host, boot_id=_read("/proc/sys/kernel/random/boot_id"), pid=os.getpid(),
                 started=process_start(os.getpid()))


def provably_dead(owner: Owner, me: Owner) -> bool:
    """True only when this host can prove the owner process is gone; pids are reused, so the
    process start time (and the boot id, across reboots) must match too."""
    if owner.host != me.host or not me.boot_id or not owner.boot_id:
        return False
    if owner.boot_id != me.boot_id:
        return True  # the host rebooted since the owner took the lease
    if not owner.started or not me.started:
        return False
    return process_start(owner.pid) != owner.started


def keeps_out(held: LeaseInfo | None, now: datetime,
              may_take_over: Callable[[LeaseInfo], bool]) -> bool:
    """Whether a stored lease still bars other processes: unexpired, and its owner not provably
    gone (`may_take_over`)."""
    return held is not None and held.expires_at > now and not may_take_over(held)


def busy(run_id: str, held: LeaseInfo) -> RunBusy:
    return RunBusy(f"run {run_id} is being driven by {held.owner.label()} until "
                   f"{held.expires_at:%Y-%m-%d %H:%M:%S} UTC")


class Lease:
    """The lease this process holds on one run; valid locally until its monotonic deadline."""

    def __init__(self, run_id: str, owner: Owner, seconds: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.seconds = seconds
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()
        self._valid_until = 0.0
        self._lock = threading.Lock()

    def renewed(self, at_monotonic: float) -> None:
        """Record a renewal that began at `at_monotonic`; a margin keeps clock skew on our side."""
        with self._lock:
            self._valid_until = at_monotonic + self.seconds * 0.8

    def locally_valid(self) -> bool:
        with self._lock:
            return not self.lost.is_set() and time.monotonic() < self._valid_until


class Heartbeat:
    """Renews a lease from a background thread while the main thread works or waits on the API."""

    def __init__(self, renew: Callable[[Lease], bool], lease: Lease) -> None:
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
                if not self._renew(self._lease):
                    log.warning("lease_lost", run_id=self._lease.run_id)
                    return
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.warning("lease_renewal_failed", run_id=self._lease.run_id,
                            error=type(exc).__name__)

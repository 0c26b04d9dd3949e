"""Who may drive a run and work on its items: owners, leases, claims, takeover and fencing.

A run has one driver at a time, holding the run's *lease*: only it takes run-level steps and
changes the run's state. Its items may be shared by several *workers*, each holding a *claim* on
a few items at a time. Both are rows the store keeps (its SQL is the store's); the rules are here:

- A lease or a worker's registration keeps others out while it is unexpired and its owner is not
  provably gone. A process proves an owner gone only on its own host: same boot and another
  process start time for the pid, or another boot (`provably_dead`).
- Every write is fenced: a run-level transaction checks the run's lease token, an item's checks
  the item's claim token, inside the transaction. A process that lost either stops before it
  sends anything more (`Ownership.ensure` runs just before every request).
- Whoever takes over a lapsed worker's items deletes its registration in the same transaction,
  so a worker that was only paused finds its renewal refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

from cftrunner.clock import utcnow
from cftrunner.exceptions import LeaseLost, RunBusy
from cftrunner.holds import Heartbeat, Lease
from cftrunner.records import Item, LeaseInfo, Owner, Run
from cftrunner.store import Store
from cftrunner.store.writes import Tx

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
    """The one rule: a stored lease bars other processes while it is unexpired and its owner is
    not provably gone (`may_take_over`)."""
    return held is not None and held.expires_at > now and not may_take_over(held)


def busy(run_id: str, held: LeaseInfo) -> RunBusy:
    return RunBusy(f"run {run_id} is being driven by {held.owner.label()} until "
                   f"{held.expires_at:%Y-%m-%d %H:%M:%S} UTC")


def refuse_if_driven(run: Run) -> None:
    """A run another live process holds is busy (exit 75), whatever was asked of it."""
    me = current_owner()
    if run.lease is not None and keeps_out(run.lease, utcnow(),
                                           lambda held: provably_dead(held.owner, me)):
        raise busy(run.id, run.lease)


def _kept(lease: Lease, renewed: Callable[[], bool]) -> bool:
    """Run a renewal timed from before it started; mark the lease lost when it was refused."""
    started = time.monotonic()
    if not renewed():
        lease.lost.set()
        return False
    lease.renewed(started)
    return True


def acquire(store: Store, lease: Lease, may_take_over: Callable[[LeaseInfo], bool]) -> Run:
    """Take the run's lease if it is free, expired, or `may_take_over` says its holder is gone."""

    def refuse(run: Run) -> None:
        held = run.lease
        if held is not None and held.token != lease.token and keeps_out(held, utcnow(),
                                                                       may_take_over):
            raise busy(run.id, held)

    started = time.monotonic()
    run = store.acquire_lease(lease, refuse)
    lease.renewed(started)
    return run


def renew(store: Store, lease: Lease) -> bool:
    """Extend the run's lease; False (and the lease lost) once another process took it."""
    return _kept(lease, lambda: store.renew_lease(lease))


def register(store: Store, worker: Lease) -> None:
    """Join the run's workers; the registration lapses unless renewed."""
    started = time.monotonic()
    store.register_worker(worker)
    worker.renewed(started)


def renew_worker(store: Store, worker: Lease) -> bool:
    """Extend the registration; False (and the worker lost) once another took its items."""
    return _kept(worker, lambda: store.renew_worker(worker))


def claim(store: Store, worker: Lease, limit: int) -> list[Item]:
    """Up to `limit` unfinished items nobody live holds, now claimed by `worker`, in order."""
    return store.claim_items(worker, limit, lambda owner: provably_dead(owner, worker.owner))


def held_elsewhere(store: Store, worker: Lease) -> int:
    """Unfinished items other live workers hold: what is left to wait for once none is free."""
    return store.items_held_elsewhere(worker, lambda owner: provably_dead(owner, worker.owner))


def taken_over(worker: Lease) -> LeaseLost:
    return LeaseLost(f"run {worker.run_id}: this worker's items were taken over by another "
                     "process")


@contextmanager
def fenced(store: Store, lease: Lease) -> Iterator[Tx]:
    """A write transaction only while `lease` still holds the run; the lease is lost if not."""
    try:
        with store.tx(fence=lease) as tx:
            yield tx
    except LeaseLost:
        lease.lost.set()
        raise


@contextmanager
def claimed(store: Store, item_id: int, worker: Lease, durable: bool = True) -> Iterator[Tx]:
    """A write transaction on an item only while `worker` still holds its claim (and nobody took
    any of its items); the worker is lost if not. See `Store.tx` for `durable`."""
    try:
        with store.tx(durable=durable) as tx:
            tx.claim(item_id, worker)
            yield tx
            tx.check_claim()
    except LeaseLost:
        worker.lost.set()
        raise


class Ownership:
    """What this process holds: at most one run's lease (run-level steps and state changes) and
    one worker's claims on items of a run; each write fenced by the one it needs."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.seconds = lease_seconds
        self.lease: Lease | None = None
        self.worker: Lease | None = None
        self._beats: dict[str, Heartbeat] = {}
        # Since when this process holds each run (by id; item None) and each item it claimed.
        self._held_since: dict[tuple[str, int | None], datetime] = {}

    def adopt(self, lease: Lease, since: float | None = None) -> None:
        """Hold a run whose lease this process stored with the run itself, in a transaction that
        began at `since` (monotonic; the lease's local validity counts from then)."""
        if since is not None:
            lease.renewed(since)
        self.lease = lease
        self.held(lease.run_id, [None])

    def take(self, run_id: str) -> Run:
        """Hold the run's lease: free, expired, or left by an owner provably dead on this host."""
        if self.lease is not None and self.lease.run_id == run_id:
            return self.store.run(run_id)
        me = current_owner()
        lease = Lease(run_id, me, self.seconds)
        run = acquire(self.store, lease, lambda held: provably_dead(held.owner, me))
        self.adopt(lease)
        return run

    def release(self) -> None:
        self._stop_beat("lease")
        if self.lease is not None and not self.lease.lost.is_set():
            self.store.release_lease(self.lease)
        self.lease = None

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Renew the run's lease from a heartbeat while inside."""
        assert self.lease is not None
        lease = self.lease
        self._start_beat("lease", Heartbeat(lambda: renew(self.store, lease), lease))
        try:
            yield
        finally:
            self._stop_beat("lease")

    def join(self, run_id: str) -> None:
        """Become one of the run's workers: registered, renewed by a heartbeat, able to claim."""
        if self.worker is not None:
            return
        worker = Lease(run_id, current_owner(), self.seconds)
        register(self.store, worker)
        self.worker = worker
        self._start_beat("worker", Heartbeat(lambda: renew_worker(self.store, worker), worker))

    def leave(self) -> None:
        """Stop being a worker; items claimed but unfinished go back to the others at once."""
        self._stop_beat("worker")
        if self.worker is not None and not self.worker.lost.is_set():
            with contextlib.suppress(LeaseLost):
                self.store.retire_worker(self.worker)
        self.worker = None

    def _start_beat(self, name: str, beat: Heartbeat) -> None:
        self._beats[name] = beat
        beat.start()

    def _stop_beat(self, name: str) -> None:
        beat = self._beats.pop(name, None)
        if beat is not None:
            beat.stop()

    def claim(self, limit: int) -> list[Item]:
        """Claim up to `limit` free items of the run this process works on, held from now."""
        assert self.worker is not None, "items are claimed after join()"
        batch = claim(self.store, self.worker, limit)
        self.held(self.worker.run_id, (item.id for item in batch))
        return batch

    def held_elsewhere(self) -> int:
        assert self.worker is not None
        return held_elsewhere(self.store, self.worker)

    def held(self, run_id: str, item_ids: Iterable[int | None]) -> None:
        """Note that this process holds these items of the run (None: the run's lease) from now
        on."""
        now = utcnow()
        for item_id in item_ids:
            self._held_since.setdefault((run_id, item_id), now)

    def held_since(self, run_id: str, item: Item | None) -> datetime:
        return self._held_since.get((run_id, item.id if item is not None else None), utcnow())

    def ensure(self) -> None:
        """Just before a request: the lease and the claims must be valid now, not only lately.
        After a pause (SIGSTOP, a frozen VM) the lost flag may not be set yet: check against the
        clock, and against the database once the clock says it lapsed."""
        lease, worker = self.lease, self.worker
        if lease is not None and (lease.lost.is_set() or (
                not lease.locally_valid() and not renew(self.store, lease))):
            raise LeaseLost(f"run {lease.run_id} was taken over by another process")
        if worker is not None and (worker.lost.is_set() or (
                not worker.locally_valid() and not renew_worker(self.store, worker))):
            raise taken_over(worker)

    def lost(self) -> bool:
        """Whether the run's lease was taken over (nothing more may be written under it)."""
        return self.lease is not None and self.lease.lost.is_set()

    def tx(self) -> AbstractContextManager[Tx]:
        """A write transaction fenced by this process's lease on the run (none: unfenced)."""
        return fenced(self.store, self.lease) if self.lease is not None else self.store.tx()

    def item_tx(self, item: Item, durable: bool = True) -> AbstractContextManager[Tx]:
        """A write transaction on an item, fenced by this worker's claim on it. (Not by the
        run's lease too: whoever took that over takes the items only once the claims lapse.)"""
        assert self.worker is not None, "items are worked on after join()"
        return claimed(self.store, item.id, self.worker, durable)

    def tx_for(self, item: Item | None, durable: bool = True) -> AbstractContextManager[Tx]:
        """The transaction an effect of `item` (or of the run, None) is written in."""
        return self.item_tx(item, durable) if item is not None else self.tx()

"""Group commit on SQLite: write transactions of many threads share one commit, each in its own
savepoint, so that a thousand items cost tens of disk syncs instead of thousands.

SQLite lets one transaction write at a time, and a durable commit waits for the disk. A thread
that wants to write joins the batch that is open (its transaction begun, not yet committed) and
runs its writes in a savepoint of it; the first thread of a batch, its leader, commits it once
no other thread is waiting to add its writes, or the batch is full, or its window has passed.
Every thread returns only after the commit that holds its writes, so an intent is on disk before
its request is sent, as with a transaction of its own. A thread whose writes fail (a lost fence,
a stale state) has only its savepoint rolled back; a commit that fails fails every thread in it.

Durable and non-durable writes (see `Core.tx`) go in separate batches: a write that need not wait
for the disk never waits for another's sync.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from cftrunner import crashpoints
from cftrunner.store.dialect import begin_immediate
from cftrunner.store.writes import Tx, insert_events

MAX_UNITS = 64  # writes of this many threads at most in one commit


class _Batch:
    def __init__(self, trans: sa.RootTransaction, durable: bool, window: float) -> None:
        self.trans = trans
        self.durable = durable
        self.deadline = time.monotonic() + window
        self.units = 0
        self.closing = False
        self.intents: list[tuple[str, str]] = []  # (run id, key) of the intents it stores
        self.outcomes = 0
        self.events: list[dict[str, Any]] = []  # of its units, inserted together at its commit
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Sent:
    """The intents of one batch not sent yet: for the crash point after some are sent."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.unsent = set(keys)


class Batches:
    """The batches of one writer connection (see the module docstring)."""

    def __init__(self, connect: Callable[[bool], sa.Connection]) -> None:
        self._connect = connect  # the writer connection, at the synchronous level asked for
        # One lock; threads wait for their turn by durability, the leader apart: a unit that
        # ends wakes one thread that can join and the leader, not every thread.
        self._lock = threading.Lock()
        self._turn = {True: threading.Condition(self._lock), False: threading.Condition(self._lock)}
        self._leader = threading.Condition(self._lock)
        self._batch: _Batch | None = None
        self._executing = False
        self._wanting = {True: 0, False: 0}  # threads waiting to add their writes, by durability
        self.window = 0.0  # seconds a batch waits for more writes once nobody else is waiting
        self._sent: dict[tuple[str, str], _Sent] = {}

    @contextmanager
    def unit(self, durable: bool) -> Iterator[Tx]:
        """This thread's writes, in the open batch's transaction; returns once committed."""
        with self._lock:
            self._wanting[durable] += 1
            try:
                while self._executing or (self._batch is not None and not self._joinable(
                        self._batch, durable)):
                    self._turn[durable].wait()
            except BaseException:
                self._wanting[durable] -= 1
                self._wake_leader()  # it waited for this thread, perhaps
                raise
            self._wanting[durable] -= 1
            batch = self._batch
            leader = batch is None
            if batch is None:
                batch = self._batch = _Batch(begin_immediate(self._connect(durable)), durable,
                                             self.window)
            self._executing = True
        conn = batch.trans.connection
        tx = Tx(conn)
        # A savepoint on the driver's connection: through SQLAlchemy's nested transactions it
        # cost more CPU than the writes it guards.
        raw = conn.connection.driver_connection
        failed: BaseException | None = None
        try:
            raw.execute("SAVEPOINT unit")  # type: ignore[union-attr]
            try:
                yield tx
            except BaseException:
                raw.execute("ROLLBACK TO unit")  # type: ignore[union-attr]
                raw.execute("RELEASE unit")  # type: ignore[union-attr]
                raise
            raw.execute("RELEASE unit")  # type: ignore[union-attr]
        except BaseException as exc:  # noqa: BLE001 - raised again once the batch is settled
            failed = exc
        with self._lock:
            self._executing = False
            batch.units += 1
            if failed is None:
                batch.intents.extend(tx.intents)
                batch.outcomes += tx.outcomes
                batch.events.extend(tx.events)
            self._turn[batch.durable].notify()  # the next that can join
            if leader:
                self._commit(batch)
            else:
                self._wake_leader()
        batch.done.wait()
        if failed is not None:
            raise failed
        if batch.error is not None:
            raise batch.error

    @staticmethod
    def _joinable(batch: _Batch, durable: bool) -> bool:
        return not batch.closing and batch.units < MAX_UNITS and batch.durable == durable

    def _wake_leader(self) -> None:
        """Holding the condition: wake the open batch's leader if it need wait no longer for
        others (see `_commit`). Woken for each thread that joined, it cost a tenth of an item's
        CPU in waits; a thread that comes while it waits out its window joins without waking it."""
        batch = self._batch
        if batch is not None and (batch.units >= MAX_UNITS or not self._others_joining(batch)):
            self._leader.notify()

    def _others_joining(self, batch: _Batch) -> bool:
        """Whether a thread is adding its writes to `batch`, or waits to and may."""
        return self._executing or self._wanting[batch.durable] > 0

    def _commit(self, batch: _Batch) -> None:
        """As the leader, holding the condition: commit once nobody else is joining and the
        window is over (or the batch is full), then let every thread of it go on."""
        try:
            while batch.units < MAX_UNITS:
                if self._others_joining(batch):
                    self._leader.wait()
                    continue
                left = batch.deadline - time.monotonic()
                if left <= 0:
                    break
                self._leader.wait(left)
        finally:
            batch.closing = True
            try:
                insert_events(batch.trans.connection, batch.events)
                batch.trans.commit()
            except BaseException as exc:  # noqa: BLE001 - every thread of the batch raises it
                batch.error = exc
                with contextlib.suppress(Exception):
                    batch.trans.rollback()
            self._batch = None
            for turn in self._turn.values():  # a new batch: any thread may open it
                turn.notify_all()
            if batch.error is None:
                self._reached(batch)
            batch.done.set()

    def _reached(self, batch: _Batch) -> None:
        """The crash points of a batch that stored several intents or outcomes."""
        if not os.environ.get(crashpoints.ENV):
            return
        if len(batch.intents) >= 2:
            sent = _Sent(batch.intents)
            self._sent.update((key, sent) for key in batch.intents)
            crashpoints.reach("batch.after_intents")  # none of them sent yet
        if batch.outcomes >= 2:
            crashpoints.reach("batch.after_outcomes")

    def sent(self, run_id: str, key: str) -> None:
        """The request of an intent was sent (for the crash point after some of a batch are)."""
        found = self._sent.pop((run_id, key), None)
        if found is None:
            return
        found.unsent.discard((run_id, key))
        if found.unsent:
            crashpoints.reach("batch.after_some_sent")

"""Item claims: how several processes share the items of one run, each item with one at a time.

A process working on a run's items is a worker. It registers (a `workers` row: its owner and an
expiry it renews from a heartbeat), claims a few unfinished items at a time (their
`claim_token` set to its token), and writes to an item only while the item's claim is still its
own (`fence`). A worker's claims lapse with its registration: a worker killed mid-item leaves its
items to the others once its registration expires, or at once on its own host, where its death
can be proven. Taking a lapsed worker's items deletes its registration in the same transaction,
so a worker that was only paused finds its renewal refused and stops before sending anything.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.exceptions import LeaseLost
from cftrunner.lease import Lease, provably_dead
from cftrunner.records import Item, Owner
from cftrunner.schema import items, workers
from cftrunner.states import UNFINISHED_STAGES
from cftrunner.store import Store
from cftrunner.transaction import Tx, item_from

_UNFINISHED = [s.value for s in UNFINISHED_STAGES]


def register(store: Store, worker: Lease) -> None:
    started = time.monotonic()
    owner = worker.owner
    with store.tx() as tx:
        now = utcnow()
        tx.conn.execute(workers.insert().values(
            token=worker.token, run_id=worker.run_id, host=owner.host, boot_id=owner.boot_id,
            pid=owner.pid, started=owner.started, joined_at=now,
            expires_at=now + timedelta(seconds=worker.seconds)))
        tx.event(worker.run_id, "worker_joined", worker=owner.label())
    worker.renewed(started)


def renew(store: Store, worker: Lease) -> bool:
    """Extend the registration; False (and the worker lost) once another took its items."""
    started = time.monotonic()
    with store.tx() as tx:
        result = tx.conn.execute(
            workers.update().where(workers.c.token == worker.token)
            .values(expires_at=utcnow() + timedelta(seconds=worker.seconds)))
    if result.rowcount != 1:
        worker.lost.set()
        return False
    worker.renewed(started)
    return True


def retire(store: Store, worker: Lease) -> None:
    """Leave the run: unfinished items go back to the pool at once, for the others to take;
    finished ones keep the token of the worker that finished them."""
    with store.tx() as tx:
        tx.conn.execute(items.update().where(items.c.run_id == worker.run_id,
                                             items.c.claim_token == worker.token,
                                             items.c.stage.in_(_UNFINISHED))
                        .values(claim_token=None))
        tx.conn.execute(workers.delete().where(workers.c.token == worker.token))


def claim(store: Store, worker: Lease, limit: int) -> list[Item]:
    """Up to `limit` unfinished items nobody live holds, now claimed by `worker`, in order.
    On PostgreSQL, rows another worker is claiming at this moment are skipped, not waited for."""
    with store.tx() as tx:
        now = utcnow()
        lapsed = _remove_lapsed(tx, worker, now)
        # The live workers are read in the same statement as the items, not before it: a worker
        # registering and claiming in between would otherwise look like a lapsed one.
        live = sa.select(workers.c.token).where(workers.c.run_id == worker.run_id)
        free = sa.or_(items.c.claim_token.is_(None), items.c.claim_token.not_in(live))
        rows = tx.conn.execute(
            sa.select(items)
            .where(items.c.run_id == worker.run_id, items.c.stage.in_(_UNFINISHED), free)
            .order_by(items.c.position).limit(limit)
            .with_for_update(skip_locked=True)).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        tx.conn.execute(items.update().where(items.c.id.in_(ids)).values(claim_token=worker.token))
        taken = sum(1 for r in rows if r.claim_token is not None)
        if taken:
            tx.event(worker.run_id, "claims_taken_over", items=taken,
                     taken_from=", ".join(sorted(lapsed)) or None)
    return [dataclasses.replace(item_from(r), claim_token=worker.token) for r in rows]


def _remove_lapsed(tx: Tx, worker: Lease, now: datetime) -> set[str]:
    """Delete the registrations of workers that lapsed: expired, or provably dead on this host.
    Each delete re-checks the expiry under the row's lock, so a worker that renewed meanwhile
    keeps its items."""
    gone: set[str] = set()
    for row in tx.conn.execute(sa.select(workers).where(
            workers.c.run_id == worker.run_id, workers.c.token != worker.token)).all():
        owner = Owner(row.host, row.boot_id, row.pid, row.started)
        condition = workers.c.token == row.token
        if not provably_dead(owner, worker.owner):
            condition = sa.and_(condition, workers.c.expires_at < now)
        if tx.conn.execute(workers.delete().where(condition)).rowcount == 1:
            gone.add(owner.label())
            tx.event(worker.run_id, "worker_lapsed", worker=owner.label())
    return gone


def held_elsewhere(store: Store, worker: Lease) -> int:
    """Unfinished items other live workers hold: what is left to wait for once none is free."""
    with store.tx() as tx:
        _remove_lapsed(tx, worker, utcnow())
        return int(tx.conn.execute(
            sa.select(sa.func.count()).select_from(items)
            .join(workers, workers.c.token == items.c.claim_token)
            .where(items.c.run_id == worker.run_id, items.c.stage.in_(_UNFINISHED),
                   workers.c.token != worker.token)).scalar() or 0)


def fence(tx: Tx, item_id: int, worker: Lease) -> None:
    """Fail unless `worker` still holds the item's claim and is still registered (nobody took
    any of its items), with the item's row locked until commit."""
    token = tx.conn.execute(_CLAIM_TOKEN, {"item_id": item_id}).scalar()
    if token != worker.token:
        worker.lost.set()
        raise taken_over(worker)


def taken_over(worker: Lease) -> LeaseLost:
    return LeaseLost(f"run {worker.run_id}: this worker's items were taken over by another "
                     "process")


# Built once: the fence runs in every item transaction (see transaction.py). Only the item's
# row is locked: locking the worker's own row would queue all of its threads on it.
_CLAIM_TOKEN = (sa.select(items.c.claim_token)
                .select_from(items.join(workers, workers.c.token == items.c.claim_token))
                .where(items.c.id == sa.bindparam("item_id"))
                .with_for_update(of=items))

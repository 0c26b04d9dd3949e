"""Lease and worker-claim SQL: a run's lease, workers' registrations and their claims on items.

The rules (who may take what, and when) are the caller's: it passes them in as `refuse` and
`dead`, and notes in memory what these return. The SQL that keeps them safe is here: every
change is under the row's lock, or a compare-and-set on the holder's token."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.exceptions import RunNotFoundError
from cftrunner.records import Holder, Item, Owner, Run
from cftrunner.states import UNFINISHED_STAGES
from cftrunner.store.core import Core
from cftrunner.store.rows import LEASE_COLUMNS, item_from, lease_values, run_from
from cftrunner.store.schema import items, runs, workers
from cftrunner.store.writes import Tx

_UNFINISHED = [s.value for s in UNFINISHED_STAGES]


class Leases(Core):
    """A run's lease, and the workers sharing its items, each change a transaction of its own."""

    def acquire_lease(self, holder: Holder, refuse: Callable[[Run], None]) -> Run:
        """Store `holder` as the run's lease, unless `refuse`, given the run as stored under its
        row's lock, raises (RunBusy while another live process holds it); the run as now
        stored."""
        with self.tx() as tx:
            row = tx.conn.execute(sa.select(runs).where(runs.c.id == holder.run_id)
                                  .with_for_update()).first()
            if row is None:
                raise RunNotFoundError(f"no run {holder.run_id!r} in the state database "
                                       f"{self.where}")
            run = run_from(row)
            refuse(run)
            held = run.lease
            tx.conn.execute(runs.update().where(runs.c.id == holder.run_id).values(
                **lease_values(holder, utcnow() + timedelta(seconds=holder.seconds))))
            tx.event(run.id, "lease_acquired", None, owner=holder.owner.label(),
                     **({"taken_from": held.owner.label()} if held else {}))
            stored = tx.conn.execute(sa.select(runs).where(runs.c.id == holder.run_id)).one()
        return run_from(stored)

    def renew_lease(self, holder: Holder) -> bool:
        """Extend the lease while it is still `holder`'s; False once another took it."""
        with self.tx() as tx:
            result = tx.conn.execute(
                runs.update().where(runs.c.id == holder.run_id, runs.c.lease_token == holder.token)
                .values(lease_expires_at=utcnow() + timedelta(seconds=holder.seconds)))
        return result.rowcount == 1

    def release_lease(self, holder: Holder) -> None:
        """Free the run, if `holder` still holds it."""
        with self.tx() as tx:
            tx.conn.execute(runs.update().where(
                runs.c.id == holder.run_id, runs.c.lease_token == holder.token).values(
                **dict.fromkeys(LEASE_COLUMNS)))

    def register_worker(self, holder: Holder) -> None:
        """Register `holder` as one of the run's workers, until now + its seconds."""
        owner = holder.owner
        with self.tx() as tx:
            now = utcnow()
            tx.conn.execute(workers.insert().values(
                token=holder.token, run_id=holder.run_id, host=owner.host, boot_id=owner.boot_id,
                pid=owner.pid, started=owner.started, joined_at=now,
                expires_at=now + timedelta(seconds=holder.seconds)))
            tx.event(holder.run_id, "worker_joined", worker=owner.label())

    def renew_worker(self, holder: Holder) -> bool:
        """Extend the registration; False once another worker took its items (and removed it)."""
        with self.tx() as tx:
            result = tx.conn.execute(
                workers.update().where(workers.c.token == holder.token)
                .values(expires_at=utcnow() + timedelta(seconds=holder.seconds)))
        return result.rowcount == 1

    def retire_worker(self, holder: Holder) -> None:
        """Leave the run: unfinished items go back to the pool at once, for the others to take;
        finished ones keep the token of the worker that finished them."""
        with self.tx() as tx:
            tx.conn.execute(items.update().where(items.c.run_id == holder.run_id,
                                                 items.c.claim_token == holder.token,
                                                 items.c.stage.in_(_UNFINISHED))
                            .values(claim_token=None))
            tx.conn.execute(workers.delete().where(workers.c.token == holder.token))

    def claim_items(self, holder: Holder, limit: int, dead: Callable[[Owner], bool]) -> list[Item]:
        """Up to `limit` unfinished items nobody live holds, now claimed by `holder`, in order;
        first removing the workers that lapsed (expired, or `dead`), whose items are then free.
        On PostgreSQL, rows another worker is claiming at this moment are skipped, not waited for."""
        with self.tx() as tx:
            lapsed = _remove_lapsed(tx, holder, dead, utcnow())
            # The live workers are read in the same statement as the items, not before it: a
            # worker registering and claiming in between would otherwise look like a lapsed one.
            live = sa.select(workers.c.token).where(workers.c.run_id == holder.run_id)
            free = sa.or_(items.c.claim_token.is_(None), items.c.claim_token.not_in(live))
            rows = tx.conn.execute(
                sa.select(items)
                .where(items.c.run_id == holder.run_id, items.c.stage.in_(_UNFINISHED), free)
                .order_by(items.c.position).limit(limit)
                .with_for_update(skip_locked=True)).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            tx.conn.execute(items.update().where(items.c.id.in_(ids))
                            .values(claim_token=holder.token))
            taken = sum(1 for r in rows if r.claim_token is not None)
            if taken:
                tx.event(holder.run_id, "claims_taken_over", items=taken,
                         taken_from=", ".join(sorted(lapsed)) or None)
        return [dataclasses.replace(item_from(r), claim_token=holder.token) for r in rows]

    def items_held_elsewhere(self, holder: Holder, dead: Callable[[Owner], bool]) -> int:
        """Unfinished items other live workers hold (the lapsed ones removed first, as by
        `claim_items`): what is left to wait for once none is free."""
        with self.tx() as tx:
            _remove_lapsed(tx, holder, dead, utcnow())
            return int(tx.conn.execute(
                sa.select(sa.func.count()).select_from(items)
                .join(workers, workers.c.token == items.c.claim_token)
                .where(items.c.run_id == holder.run_id, items.c.stage.in_(_UNFINISHED),
                       workers.c.token != holder.token)).scalar() or 0)


def _remove_lapsed(tx: Tx, holder: Holder, dead: Callable[[Owner], bool],
                   now: datetime) -> set[str]:
    """Delete the registrations of the run's other workers that lapsed: expired, or `dead`
    (provably, on this host). Each delete re-checks the expiry under the row's lock, so a worker
    that renewed meanwhile keeps its items; the labels of those removed."""
    gone: set[str] = set()
    for row in tx.conn.execute(sa.select(workers).where(
            workers.c.run_id == holder.run_id, workers.c.token != holder.token)).all():
        owner = Owner(row.host, row.boot_id, row.pid, row.started)
        condition = workers.c.token == row.token
        if not dead(owner):
            condition = sa.and_(condition, workers.c.expires_at < now)
        if tx.conn.execute(workers.delete().where(condition)).rowcount == 1:
            gone.add(owner.label())
            tx.event(holder.run_id, "worker_lapsed", worker=owner.label())
    return gone

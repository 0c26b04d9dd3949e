"""Notifications in the state database: what runs reached that is not recorded yet, and each delivery.

A delivery is one row per (subject, event), the subject being a run's id (or "cycle NAME after
RUN" for a key refused before a run existed), so recording one twice records it once. Sending
one is claimed first, by a compare-and-set on its attempts, so two processes never both send it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.records import Run
from cftrunner.store import dialect
from cftrunner.store.core import Core
from cftrunner.store.rows import run_from
from cftrunner.store.schema import deliveries, events, runs

PENDING = "pending"  # to be sent: now, or at next_at after a failure
DELIVERED = "delivered"
GIVEN_UP = "given_up"  # a permanent refusal, or still undelivered past the bound
NO_WEBHOOK = "no_webhook"  # no webhook was set for the cycle when it happened: never sent
BEFORE = "before"  # reached before notifications existed (migration 0006): never sent
DUE_AT_ONCE = 100  # deliveries read for sending by one invocation, at most


@dataclass(frozen=True)
class Delivery:
    """One notification, as stored."""

    subject: str
    event: str
    run_id: str | None
    cycle: str | None
    url: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: datetime
    next_at: datetime
    delivered_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Reached:
    """A state a run reached: when, and the reason its transition gave."""

    state: str
    at: datetime
    reason: str | None


class Deliveries(Core):
    """The reads and writes of notifications, each a transaction of its own."""

    def runs_to_notify(self, states: Collection[str]) -> list[tuple[Run, list[Reached]]]:
        """Each run now in one of `states` without a delivery for it, with every one of `states`
        it reached (its transitions, then its state now), in order. A run that reached one of
        them stays in them, so a state missed by a process that died is found with the next."""
        missing = ~sa.exists().where(deliveries.c.subject == runs.c.id,
                                     deliveries.c.event == runs.c.state)
        with self._read() as conn:
            found = [run_from(row) for row in conn.execute(
                sa.select(runs).where(runs.c.state.in_(list(states)), missing)
                .order_by(runs.c.state_changed_at))]
            moves = {run.id: conn.execute(
                sa.select(events.c.at, events.c.data)
                .where(events.c.run_id == run.id, events.c.kind == "run_transitioned")
                .order_by(events.c.id)).all() for run in found}
        result: list[tuple[Run, list[Reached]]] = []
        for run in found:
            reached: dict[str, Reached] = {}
            for at, data in moves[run.id]:
                state = data.get("state") if isinstance(data, dict) else None
                if isinstance(state, str) and state in states:
                    reached[state] = Reached(state, at, data.get("reason"))
            if run.state.value not in reached:  # stored in it (a SKIPPED cycle), or no event
                reached[run.state.value] = Reached(run.state.value, run.state_changed_at,
                                                   run.failure_reason or run.skip_reason)
            result.append((run, sorted(reached.values(), key=lambda r: r.at)))
        return result

    def latest_run_id(self, cycle: str) -> str | None:
        """The id of the cycle's run created last, if it has one."""
        with self._read() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.cycle == cycle)
                                .order_by(runs.c.created_at.desc(), runs.c.id.desc())
                                .limit(1)).scalar()

    def record_deliveries(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store each delivery (subject, event, run_id, cycle, url, payload, status, created_at)
        not stored yet; those that are stay as they are. How many were new."""
        added = 0
        with self.tx() as tx:
            now = utcnow()
            for row in rows:
                added += dialect.insert_ignoring_duplicates(
                    tx.conn, deliveries, attempts=0, next_at=now, delivered_at=None,
                    last_error=None, **row)
        return added

    def due_deliveries(self, now: datetime) -> list[Delivery]:
        """The pending deliveries whose time has come, oldest event first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.status == PENDING, deliveries.c.next_at <= now)
                .order_by(deliveries.c.created_at, deliveries.c.subject, deliveries.c.event)
                .limit(DUE_AT_ONCE)).all()
        return [Delivery(**row._mapping) for row in rows]

    def claim_delivery(self, delivery: Delivery, next_at: datetime) -> bool:
        """Count an attempt at sending `delivery`, due again at `next_at` should this one come
        to nothing; False when another process has claimed it (or settled it) since it was read."""
        with self.tx() as tx:
            result = tx.conn.execute(
                deliveries.update()
                .where(deliveries.c.subject == delivery.subject,
                       deliveries.c.event == delivery.event, deliveries.c.status == PENDING,
                       deliveries.c.attempts == delivery.attempts)
                .values(attempts=delivery.attempts + 1, next_at=next_at))
            return result.rowcount == 1

    def settle_delivery(self, delivery: Delivery, status: str, error: str | None) -> None:
        """What the claimed attempt came to: DELIVERED, GIVEN_UP, or PENDING with its error."""
        with self.tx() as tx:
            tx.conn.execute(
                deliveries.update()
                .where(deliveries.c.subject == delivery.subject,
                       deliveries.c.event == delivery.event, deliveries.c.status == PENDING)
                .values(status=status, last_error=error,
                        delivered_at=utcnow() if status == DELIVERED else None))

    def notifications(self, run_id: str | None = None) -> list[Delivery]:
        """Every delivery (of one run), oldest event first."""
        query = sa.select(deliveries).order_by(deliveries.c.created_at, deliveries.c.subject,
                                               deliveries.c.event)
        if run_id is not None:
            query = query.where(deliveries.c.run_id == run_id)
        with self._read() as conn:
            return [Delivery(**row._mapping) for row in conn.execute(query).all()]

    def delivery_counts(self) -> dict[str, int]:
        """Deliveries by status."""
        with self._read() as conn:
            rows = conn.execute(sa.select(deliveries.c.status, sa.func.count())
                                .group_by(deliveries.c.status)).all()
        return {str(status): int(n) for status, n in rows}

"""Tx: the writes of one transaction, each checking the state it changes from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.exceptions import LeaseLost, StaleStateError
from cftrunner.payloads.replies import ChatResult
from cftrunner.records import Effect, EffectStatus, Holder, Item
from cftrunner.states import ITEM_FAILED, ItemStage, RunState, check_item_transition, check_run_transition
from cftrunner.store import statements
from cftrunner.store.loop_writes import LoopWrites
from cftrunner.store.schema import (
    completions,
    effects,
    events,
    items,
    runs,
    workers,
)

R = TypeVar("R")

# The statements of every item step, built once and, the writes, compiled once (statements.py);
# an UPDATE's columns are the keys of the values it is run with.
_LEASE_TOKEN = (sa.select(runs.c.lease_token).where(runs.c.id == sa.bindparam("run_id"))
                .with_for_update())
# Only the item's row is locked: locking the worker's own row would queue all of its threads on
# it. The join makes a worker that is no longer registered (nobody took any of its items) fail too.
_CLAIM_TOKEN = (sa.select(items.c.claim_token)
                .select_from(items.join(workers, workers.c.token == items.c.claim_token))
                .where(items.c.id == sa.bindparam("item_id"))
                .with_for_update(of=items))
_INSERT_EVENT = events.insert()
_INSERT_COMPLETION = completions.insert()
_INSERT_EFFECT = effects.insert()
_UPDATE_ITEM = items.update().where(items.c.id == sa.bindparam("item_id"),
                                    items.c.stage == sa.bindparam("from_stage"))
# The same, only while the worker holding `held_token` still holds the item's claim and is still
# registered: a unit's claim checked by its item's update, without a locking read before it.
_UPDATE_CLAIMED_ITEM = _UPDATE_ITEM.where(
    items.c.claim_token == sa.bindparam("held_token"),
    sa.exists().where(workers.c.token == sa.bindparam("held_token")))
_UPDATE_EFFECT = effects.update().where(
    effects.c.run_id == sa.bindparam("effect_run"), effects.c.key == sa.bindparam("effect_key"),
    effects.c.status == sa.bindparam("from_status"),
    effects.c.attempts == sa.bindparam("from_attempts"))


def insert_events(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    statements.execute_many(conn, _INSERT_EVENT, rows)  # none: nothing


class Tx(LoopWrites):
    """The writes of one transaction; each checks the state it changes from."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        # The item and worker of a claim this transaction must hold, not checked yet (`claim`).
        self._claim: tuple[int, Holder] | None = None
        self.logged: list[tuple[str, dict[str, Any]]] = []
        # Event rows, inserted together as the transaction ends (`flush`; on SQLite, with the
        # other events of its batch): one statement each was a sixth of an item's SQL.
        self.events: list[dict[str, Any]] = []
        self.intents: list[tuple[str, str]] = []  # for the crash points of a batch (batches.py)
        self.outcomes = 0

    def fence(self, holder: Holder) -> None:
        """Fail (LeaseLost) unless `holder` still holds the run's lease, with the run's row
        locked until commit."""
        token = self.conn.execute(_LEASE_TOKEN, {"run_id": holder.run_id}).scalar()
        if token != holder.token:
            raise LeaseLost(f"run {holder.run_id} was taken over by another process")

    @property
    def conn(self) -> sa.Connection:
        """The transaction's connection, for its next statement: a claim not checked yet is
        checked first (see `claim`)."""
        self.check_claim()
        return self._conn

    def claim(self, item_id: int, holder: Holder) -> None:
        """Write only while the worker `holder` holds the item's claim (LeaseLost if not), checked
        as the first statement runs: an update of that item checks it in its own WHERE clause,
        which saves a locking read (a round trip on PostgreSQL) in each of an item's steps; any
        other statement runs after a locking read checks it. `check_claim` checks it if nothing
        ran."""
        self._claim = (item_id, holder)

    def check_claim(self) -> None:
        """The claim, if no statement has checked it yet (LeaseLost if it is lost)."""
        claim, self._claim = self._claim, None
        if claim is not None:
            self._fence_item(*claim)

    def _fence_item(self, item_id: int, holder: Holder) -> None:
        """Fail (LeaseLost) unless the worker `holder` still holds the item's claim and is still
        registered (nobody took any of its items), with the item's row locked until commit."""
        token = self._conn.execute(_CLAIM_TOKEN, {"item_id": item_id}).scalar()
        if token != holder.token:
            raise LeaseLost(f"run {holder.run_id}: this worker's items were taken over by "
                            "another process")

    def event(self, run_id: str, kind: str, item_id: int | None = None, **data: Any) -> None:
        """An event row, inserted with the transaction's others; the same fact is logged once the
        transaction has committed."""
        self.events.append({"run_id": run_id, "item_id": item_id, "at": utcnow(), "kind": kind,
                            "data": data})
        self.logged.append((kind, {"run_id": run_id, **data}))

    def flush(self) -> None:
        """Insert the events written so far, in one statement, before the transaction commits."""
        insert_events(self.conn, self.events)
        self.events = []

    def transition_run(self, run_id: str, current: RunState, target: RunState,
                       **fields: Any) -> None:
        check_run_transition(current, target)
        now = utcnow()
        result = self.conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.state == current.value)
            # last_error speaks of the state being left; a failure keeps it as evidence.
            .values(state=target.value, updated_at=now, state_changed_at=now,
                    **({} if target is RunState.FAILED else {"last_error": None}), **fields))
        if result.rowcount != 1:
            raise StaleStateError(f"run {run_id} is no longer {current.value}")
        reason = fields.get("failure_reason") or fields.get("skip_reason")
        self.event(run_id, "run_transitioned", state=target.value, from_state=current.value,
                   **({"reason": reason} if reason else {}))

    def advance_items_state(self, run_id: str, current: RunState, target: RunState,
                            wanted: ItemStage) -> None:
        """Move the run to `target` if every item is at `wanted` (or past it) or failed; FAILED
        if all failed. Items move on independently, so some may be stages ahead of the run."""
        counts: dict[str, int] = {stage: n for stage, n in self.conn.execute(
            sa.select(items.c.stage, sa.func.count()).where(items.c.run_id == run_id)
            .group_by(items.c.stage))}
        order = list(ItemStage)
        behind = {s.value for s in order[:order.index(wanted)] if s not in ITEM_FAILED}
        if any(counts.get(stage) for stage in behind):
            raise StaleStateError(f"run {run_id}: items are still short of {wanted.value}")
        alive = {s.value for s in order[order.index(wanted):] if s not in ITEM_FAILED}
        if not any(counts.get(stage) for stage in alive):
            failed = ", ".join(f"{n} {stage.lower()}" for stage, n in sorted(counts.items()))
            self.transition_run(run_id, current, RunState.FAILED,
                                failure_reason=f"every item failed ({failed or 'no items'})")
            return
        self.transition_run(run_id, current, target)

    def record_error(self, run_id: str, message: str) -> None:
        self.conn.execute(runs.update().where(runs.c.id == run_id)
                          .values(last_error=message, updated_at=utcnow()))
        self.event(run_id, "run_error", message=message)

    def update_run(self, run_id: str, current: RunState, **fields: Any) -> None:
        result = self.conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.state == current.value)
            .values(updated_at=utcnow(), **fields))
        if result.rowcount != 1:
            raise StaleStateError(f"run {run_id} is no longer {current.value}")

    def update_item(self, item: Item, target: ItemStage | None = None, **fields: Any) -> Item:
        """Change an item that is still at `item.stage`; move it to `target` when given.
        Returns the item as now stored."""
        values = dict(fields)
        if target is not None:
            check_item_transition(item.stage, target)
            values["stage"] = target.value
        now = utcnow()
        params = {"item_id": item.id, "from_stage": item.stage.value, "updated_at": now, **values}
        claim = self._claim
        if claim is not None and claim[0] == item.id:  # checked by this update (see `claim`)
            self._claim = None
            params["held_token"] = claim[1].token
            changed = statements.execute(self._conn, _UPDATE_CLAIMED_ITEM, params)
            if changed != 1:
                self._fence_item(*claim)  # LeaseLost if that is why
        else:
            changed = statements.execute(self.conn, _UPDATE_ITEM, params)
        if changed != 1:
            raise StaleStateError(f"item {item.position} is no longer {item.stage.value}")
        if target is not None:
            detail = {"error_kind": fields["error_kind"]} if "error_kind" in fields else {}
            self.event(item.run_id, "item_transitioned", item.id, item=item.position,
                       from_stage=item.stage.value, stage=target.value, **detail)
        return dataclasses.replace(item, stage=target or item.stage, updated_at=now, **fields)

    def corrections_done(self, run_id: str, item_ids: list[int]) -> None:
        """The platform's corrections of these added items are done: one statement. An item
        that is no longer ADDED (another worker's look failed it) is left as it is."""
        if item_ids:
            self.conn.execute(items.update().where(
                items.c.run_id == run_id, items.c.id.in_(item_ids),
                items.c.stage == ItemStage.ADDED.value).values(processing_status="none",
                                                               updated_at=utcnow()))

    def record_completion(self, item: Item, kind: str, attempt: int, outcome: str, *,
                          result: ChatResult | None = None, request: dict[str, Any] | None = None,
                          error: str | None = None) -> None:
        """Keep one completion of `item`'s step (or its refusal), with the tokens it used."""
        statements.execute(self.conn, _INSERT_COMPLETION, {
            "run_id": item.run_id, "item_id": item.id, "kind": kind, "attempt": attempt,
            "request": request, "content": (result.content if result and kind == "judge"
                                             and not result.no_content else None),
            "finish_reason": result.finish_reason if result else None,
            "prompt_tokens": result.prompt_tokens if result else None,
            "completion_tokens": result.completion_tokens if result else None,
            "total_tokens": result.tokens if result else None,
            "outcome": outcome, "error": error, "at": utcnow()})

    def prepare_effect(self, run_id: str, key: str, kind: str, item_id: int | None,
                       request: dict[str, Any], previous: Effect | None) -> Effect:
        """Store the intent to send `request`; the effect as now stored."""
        now = utcnow()
        self.intents.append((run_id, key))
        if previous is None:
            statements.execute(self.conn, _INSERT_EFFECT, {
                "run_id": run_id, "key": key, "kind": kind, "item_id": item_id,
                "status": EffectStatus.PREPARED.value, "request": request, "prepared_at": now,
                "attempts": 1, "updated_at": now})
            prepared = Effect(run_id=run_id, key=key, kind=kind, item_id=item_id,
                              status=EffectStatus.PREPARED, request=request, prepared_at=now,
                              attempts=1, updated_at=now)
        else:
            # prepared_at keeps the first attempt's time: any earlier attempt may be the one that
            # landed, so reconciliation must look back that far.
            self._set_effect(previous, now, status=EffectStatus.PREPARED.value, request=request,
                             attempts=previous.attempts + 1, outcome=None, error=None)
            prepared = dataclasses.replace(previous, status=EffectStatus.PREPARED,
                                           request=request, attempts=previous.attempts + 1,
                                           updated_at=now, outcome=None, error=None)
        self.event(run_id, "effect_prepared", item_id, key=key, attempt=prepared.attempts)
        return prepared

    def finish_effect(self, effect: Effect, status: EffectStatus,
                      outcome: dict[str, Any] | None = None, error: str | None = None,
                      verdict: str | None = None) -> None:
        self._set_effect(effect, utcnow(), status=status.value, outcome=outcome, error=error)
        self.outcomes += status is EffectStatus.DONE
        facts = {k: v for k, v in (outcome or {}).items() if isinstance(v, str | int | float)}
        self.event(effect.run_id, f"effect_{status.value.lower()}", effect.item_id,
                   key=effect.key, attempt=effect.attempts, **facts,
                   **({"verdict": verdict} if verdict else {}),
                   **({"error": error} if error else {}))

    def finish_effect_with(self, effect: Effect, status: EffectStatus, record: Callable[[], R],
                           outcome: dict[str, Any] | None = None, error: str | None = None,
                           verdict: str | None = None) -> R:
        """`finish_effect`, with what its outcome makes true, `record()`, run first: an item's
        update then checks the item's claim (see `claim`). The events read as it happened: the
        effect's, then those of what it made true."""
        events, logged = len(self.events), len(self.logged)
        recorded = record()
        self.finish_effect(effect, status, outcome, error, verdict)
        self.events.insert(events, self.events.pop())
        self.logged.insert(logged, self.logged.pop())
        return recorded

    def give_up_effect(self, effect: Effect, reason: str) -> None:
        """Stop sending or deciding on our own: a person settles it. `updated_at` stays the last
        moment the request may have been sent."""
        self._set_effect(effect, effect.updated_at, status=EffectStatus.UNKNOWN.value, error=reason)
        self.event(effect.run_id, "effect_unknown_given_up", effect.item_id, key=effect.key,
                   error=reason)

    def settle_effect(self, effect: Effect, outcome: dict[str, Any] | None) -> None:
        """A person's word on an effect whose outcome is unknown: it happened with `outcome`
        (applied by the next resume, as if reconciled), or, with None, it did not (sent again)."""
        if outcome is None:
            self._set_effect(effect, effect.updated_at, status=EffectStatus.UNSENT.value,
                             error="settled by a person: it did not happen")
        else:
            self._set_effect(effect, effect.updated_at, outcome={**outcome, "settled": True})
        self.event(effect.run_id, "effect_settled", effect.item_id, key=effect.key,
                   happened=outcome is not None, **(outcome or {}))

    def note_unknown_outcome(self, effect: Effect, error: str) -> Effect:
        """The request may have been in flight until now: `updated_at` says so."""
        now = utcnow()
        self._set_effect(effect, now, error=error)
        self.event(effect.run_id, "effect_unknown", effect.item_id, key=effect.key, error=error)
        return dataclasses.replace(effect, updated_at=now, error=error)

    def _set_effect(self, effect: Effect, now: datetime, **values: Any) -> None:
        changed = statements.execute(self.conn, _UPDATE_EFFECT, {
            "effect_run": effect.run_id, "effect_key": effect.key,
            "from_status": effect.status.value, "from_attempts": effect.attempts,
            **values, "updated_at": now})
        if changed != 1:
            raise StaleStateError(f"effect {effect.key} of run {effect.run_id} changed meanwhile")

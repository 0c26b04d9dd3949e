"""The state store: runs, items, effect intents and events; every write is one checked transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from cftrunner import dialect
from cftrunner.exceptions import RunExistsError, RunNotFoundError, StaleStateError
from cftrunner.models import Effect, EffectStatus, Event, Item, Run, RunSummary
from cftrunner.schema import effects, events, items, metadata, runs, utcnow
from cftrunner.states import (
    ITEM_FAILED,
    ItemStage,
    RunState,
    check_item_transition,
    check_run_transition,
)


def _run(row: sa.Row[Any]) -> Run:
    m = row._mapping
    return Run(**{**m, "state": RunState(m["state"])})


def _item(row: sa.Row[Any]) -> Item:
    m = row._mapping
    return Item(**{**m, "stage": ItemStage(m["stage"])})


def _effect(row: sa.Row[Any]) -> Effect:
    m = row._mapping
    return Effect(**{**m, "status": EffectStatus(m["status"])})


class Tx:
    """The writes of one transaction; each checks the state it changes from."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def event(self, run_id: str, kind: str, item_id: int | None = None, **data: Any) -> None:
        self.conn.execute(events.insert().values(
            run_id=run_id, item_id=item_id, at=utcnow(), kind=kind, data=data))

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
        self.event(run_id, "run_transitioned", from_state=current.value, to_state=target.value,
                   **({"reason": fields["failure_reason"]} if "failure_reason" in fields else {}))

    def advance_items_state(self, run_id: str, current: RunState, target: RunState,
                            wanted: ItemStage) -> None:
        """Move the run to `target` if every item is at `wanted` or failed; FAILED if all failed."""
        counts: dict[str, int] = {stage: n for stage, n in self.conn.execute(
            sa.select(items.c.stage, sa.func.count()).where(items.c.run_id == run_id)
            .group_by(items.c.stage))}
        order = list(ItemStage)
        behind = {s.value for s in order[:order.index(wanted)] if s not in ITEM_FAILED}
        if any(counts.get(stage) for stage in behind):
            raise StaleStateError(f"run {run_id}: items are still short of {wanted.value}")
        if not counts.get(wanted.value):
            failed = ", ".join(f"{n} {stage.lower()}" for stage, n in sorted(counts.items()))
            self.transition_run(run_id, current, RunState.FAILED,
                                failure_reason=f"every item failed ({failed or 'no items'})")
            return
        self.transition_run(run_id, current, target)

    def update_run(self, run_id: str, current: RunState, **fields: Any) -> None:
        result = self.conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.state == current.value)
            .values(updated_at=utcnow(), **fields))
        if result.rowcount != 1:
            raise StaleStateError(f"run {run_id} is no longer {current.value}")

    def update_item(self, item: Item, target: ItemStage | None = None, **fields: Any) -> None:
        """Change an item that is still at `item.stage`; move it to `target` when given."""
        values = dict(fields)
        if target is not None:
            check_item_transition(item.stage, target)
            values["stage"] = target.value
        result = self.conn.execute(
            items.update()
            .where(items.c.id == item.id, items.c.stage == item.stage.value)
            .values(updated_at=utcnow(), **values))
        if result.rowcount != 1:
            raise StaleStateError(f"item {item.position} is no longer {item.stage.value}")
        if target is not None:
            detail = {"error_kind": fields["error_kind"]} if "error_kind" in fields else {}
            self.event(item.run_id, "item_transitioned", item.id, position=item.position,
                       from_stage=item.stage.value, to_stage=target.value, **detail)

    def prepare_effect(self, run_id: str, key: str, kind: str, item_id: int | None,
                       request: dict[str, Any], previous: Effect | None) -> None:
        now = utcnow()
        if previous is None:
            self.conn.execute(effects.insert().values(
                run_id=run_id, key=key, kind=kind, item_id=item_id,
                status=EffectStatus.PREPARED.value, request=request, prepared_at=now,
                attempts=1, updated_at=now))
        else:
            # prepared_at keeps the first attempt's time: any earlier attempt may be the one that
            # landed, so reconciliation must look back that far.
            self._set_effect(previous, status=EffectStatus.PREPARED.value, request=request,
                             attempts=previous.attempts + 1)
        self.event(run_id, "effect_prepared", item_id, key=key,
                   attempt=1 if previous is None else previous.attempts + 1)

    def finish_effect(self, effect: Effect, status: EffectStatus,
                      outcome: dict[str, Any] | None = None, error: str | None = None,
                      verdict: str | None = None) -> None:
        self._set_effect(effect, status=status.value, outcome=outcome, error=error)
        self.event(effect.run_id, f"effect_{status.value.lower()}", effect.item_id,
                   key=effect.key, **({"verdict": verdict} if verdict else {}),
                   **({"error": error} if error else {}))

    def note_unknown_outcome(self, effect: Effect, error: str) -> None:
        self._set_effect(effect, error=error)
        self.event(effect.run_id, "effect_unknown", effect.item_id, key=effect.key, error=error)

    def _set_effect(self, effect: Effect, **values: Any) -> None:
        result = self.conn.execute(
            effects.update()
            .where(effects.c.run_id == effect.run_id, effects.c.key == effect.key,
                   effects.c.status == effect.status.value,
                   effects.c.attempts == effect.attempts)
            .values(updated_at=utcnow(), **values))
        if result.rowcount != 1:
            raise StaleStateError(f"effect {effect.key} of run {effect.run_id} changed meanwhile")


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = dialect.create_engine(url)
        with self.engine.begin() as conn:
            metadata.create_all(conn)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            yield Tx(conn)

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{dialect.READ_ONLY: True})
            with conn.begin():
                yield conn

    def create_run(self, run: Run, prompts: list[str]) -> None:
        """Store a run and its items together, or nothing."""
        now = utcnow()
        with self.tx() as tx:
            exists = tx.conn.execute(sa.select(runs.c.id).where(runs.c.id == run.id)).first()
            if exists:
                raise RunExistsError(
                    f"run {run.id} already exists: use `cftrunner resume {run.id}` to continue it")
            tx.conn.execute(runs.insert().values(
                id=run.id, project_id=run.project_id, model_alias=run.model_alias,
                judge_model=run.judge_model, split_percentage=run.split_percentage,
                prompts_source=run.prompts_source, job_name=run.job_name,
                state=run.state.value, created_at=now, updated_at=now, state_changed_at=now))
            if prompts:
                tx.conn.execute(items.insert(), [
                    {"run_id": run.id, "position": i, "prompt": p,
                     "stage": ItemStage.PENDING.value, "judge_attempts": 0, "updated_at": now}
                    for i, p in enumerate(prompts)])
            tx.event(run.id, "run_created", items=len(prompts))

    def record_error(self, run_id: str, message: str | None) -> None:
        with self.tx() as tx:
            tx.conn.execute(runs.update().where(runs.c.id == run_id)
                            .values(last_error=message, updated_at=utcnow()))
            if message:
                tx.event(run_id, "run_error", message=message)

    def run(self, run_id: str) -> Run:
        with self._read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in this state database")
        return _run(row)

    def runs(self) -> list[Run]:
        with self._read() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.created_at.desc())).all()
        return [_run(r) for r in rows]

    def items(self, run_id: str, stage: ItemStage | None = None) -> list[Item]:
        query = sa.select(items).where(items.c.run_id == run_id).order_by(items.c.position)
        if stage is not None:
            query = query.where(items.c.stage == stage.value)
        with self._read() as conn:
            return [_item(r) for r in conn.execute(query).all()]

    def summary(self, run: Run) -> RunSummary:
        with self._read() as conn:
            stages = conn.execute(
                sa.select(items.c.stage, sa.func.count()).where(items.c.run_id == run.id)
                .group_by(items.c.stage)).all()
            failures = conn.execute(
                sa.select(items.c.stage, items.c.error_kind, sa.func.count())
                .where(items.c.run_id == run.id, items.c.error_kind.is_not(None))
                .group_by(items.c.stage, items.c.error_kind)).all()
        return RunSummary(
            run=run,
            stage_counts={str(stage): int(n) for stage, n in stages},
            failures={f"{stage.lower()}:{kind}": int(n) for stage, kind, n in failures})

    def effect(self, run_id: str, key: str) -> Effect | None:
        with self._read() as conn:
            row = conn.execute(sa.select(effects).where(
                effects.c.run_id == run_id, effects.c.key == key)).first()
        return None if row is None else _effect(row)

    def effects(self, run_id: str) -> list[Effect]:
        with self._read() as conn:
            rows = conn.execute(sa.select(effects).where(effects.c.run_id == run_id)
                                .order_by(effects.c.prepared_at)).all()
        return [_effect(r) for r in rows]

    def trace_claimed(self, trace_id: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(items.c.id).where(items.c.trace_id == trace_id)
                                ).first() is not None

    def snapshot_claimed(self, snapshot_id: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.snapshot_id == snapshot_id)
                                ).first() is not None

    def events(self, run_id: str) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(sa.select(events).where(events.c.run_id == run_id)
                                .order_by(events.c.id)).all()
        return [Event(**r._mapping) for r in rows]

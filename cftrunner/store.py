"""The state store: runs, items, effect intents and events; every write is one checked transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from cftrunner import dialect
from cftrunner.exceptions import (
    LeaseLost,
    RunBusy,
    RunExistsError,
    RunNotFoundError,
    StaleStateError,
)
from cftrunner.lease import Lease
from cftrunner.models import Effect, EffectStatus, Event, Item, LeaseInfo, Owner, Run, RunSummary
from cftrunner.schema import cycles, effects, events, items, metadata, runs, utcnow
from cftrunner.states import (
    ITEM_FAILED,
    TERMINAL,
    ItemStage,
    RunState,
    check_item_transition,
    check_run_transition,
)

log = structlog.get_logger("cftrunner")
_LOG_LEVELS = {"item_transitioned": logging.DEBUG, "effect_prepared": logging.DEBUG,
               "run_error": logging.WARNING, "effect_unknown": logging.WARNING,
               "effect_unsent": logging.WARNING, "effect_failed": logging.WARNING}

_LEASE_COLUMNS = ("lease_token", "lease_host", "lease_boot_id", "lease_pid", "lease_started",
                  "lease_expires_at")


def _run(row: sa.Row[Any]) -> Run:
    m = dict(row._mapping)
    token, host, boot, pid, started, expires = (m.pop(c) for c in _LEASE_COLUMNS)
    lease = (LeaseInfo(token, Owner(host or "", boot or "", pid or 0, started or ""), expires)
             if token else None)
    return Run(**{**m, "state": RunState(m["state"]), "lease": lease})


def _lease_values(lease: Lease, expires_at: datetime) -> dict[str, Any]:
    owner = lease.owner
    return {"lease_token": lease.token, "lease_host": owner.host, "lease_boot_id": owner.boot_id,
            "lease_pid": owner.pid, "lease_started": owner.started, "lease_expires_at": expires_at}


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
        self.logged: list[tuple[str, dict[str, Any]]] = []

    def fence(self, lease: Lease) -> None:
        """Fail unless this process still holds the run's lease, inside the transaction's lock."""
        token = self.conn.execute(
            sa.select(runs.c.lease_token).where(runs.c.id == lease.run_id).with_for_update()
        ).scalar()
        if token != lease.token:
            lease.lost.set()
            raise LeaseLost(f"run {lease.run_id} was taken over by another process")

    def event(self, run_id: str, kind: str, item_id: int | None = None, **data: Any) -> None:
        """An event row; the same fact is logged once the transaction has committed."""
        self.conn.execute(events.insert().values(
            run_id=run_id, item_id=item_id, at=utcnow(), kind=kind, data=data))
        self.logged.append((kind, {"run_id": run_id, **data}))

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
        self.event(run_id, "run_transitioned", state=target.value, from_state=current.value,
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

    def record_error(self, run_id: str, message: str) -> None:
        self.conn.execute(runs.update().where(runs.c.id == run_id)
                          .values(last_error=message, updated_at=utcnow()))
        self.event(run_id, "run_error", message=message)

    def lock_cycle(self, name: str) -> None:
        """Hold the cycle's row until commit, so two ticks cannot both start a run for it."""
        dialect.insert_ignoring_duplicates(self.conn, cycles, name=name, created_at=utcnow())
        self.conn.execute(sa.select(cycles.c.name).where(cycles.c.name == name).with_for_update())

    def latest_run(self, cycle: str, states: tuple[RunState, ...] = ()) -> Run | None:
        query = sa.select(runs).where(runs.c.cycle == cycle)
        if states:
            query = query.where(runs.c.state.in_([s.value for s in states]))
        row = self.conn.execute(query.order_by(runs.c.created_at.desc()).limit(1)).first()
        return None if row is None else _run(row)

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
            self.event(item.run_id, "item_transitioned", item.id, item=item.position,
                       from_stage=item.stage.value, stage=target.value, **detail)

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
        facts = {k: v for k, v in (outcome or {}).items() if isinstance(v, str | int | float)}
        self.event(effect.run_id, f"effect_{status.value.lower()}", effect.item_id,
                   key=effect.key, attempt=effect.attempts, **facts,
                   **({"verdict": verdict} if verdict else {}),
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
    def tx(self, fence: Lease | None = None) -> Iterator[Tx]:
        """One write transaction; with `fence`, only while this process holds that lease."""
        with self.engine.begin() as conn:
            tx = Tx(conn)
            if fence is not None:
                tx.fence(fence)
            yield tx
        for kind, fields in tx.logged:
            log.log(_LOG_LEVELS.get(kind, logging.INFO), kind, **fields)

    def acquire_lease(self, lease: Lease, may_take_over: Callable[[LeaseInfo], bool]) -> Run:
        """Take the run's lease if it is free, expired, or `may_take_over` proves its owner dead."""
        with self.tx() as tx:
            row = tx.conn.execute(sa.select(runs).where(runs.c.id == lease.run_id)
                                  .with_for_update()).first()
            if row is None:
                raise RunNotFoundError(f"no run {lease.run_id!r} in this state database")
            run = _run(row)
            held = run.lease
            now = utcnow()
            if held is not None and held.token != lease.token and held.expires_at > now \
                    and not may_take_over(held):
                raise RunBusy(f"run {run.id} is being driven by {held.owner.label()} until "
                              f"{held.expires_at:%Y-%m-%d %H:%M:%S} UTC")
            self._write_lease(tx, lease, now)
            tx.event(run.id, "lease_acquired", None, owner=lease.owner.label(),
                     **({"taken_from": held.owner.label()} if held else {}))
        return self.run(lease.run_id)

    def _write_lease(self, tx: Tx, lease: Lease, now: datetime) -> None:
        started = time.monotonic()
        tx.conn.execute(runs.update().where(runs.c.id == lease.run_id).values(
            **_lease_values(lease, now + timedelta(seconds=lease.seconds))))
        lease.renewed(started)

    def renew_lease(self, lease: Lease) -> bool:
        """Extend the lease while it is still this process's; False once another took it."""
        started = time.monotonic()
        with self.tx() as tx:
            result = tx.conn.execute(
                runs.update().where(runs.c.id == lease.run_id, runs.c.lease_token == lease.token)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease.seconds)))
        if result.rowcount != 1:
            lease.lost.set()
            return False
        lease.renewed(started)
        return True

    def release_lease(self, lease: Lease) -> None:
        with self.tx() as tx:
            tx.conn.execute(runs.update().where(
                runs.c.id == lease.run_id, runs.c.lease_token == lease.token).values(
                **dict.fromkeys(_LEASE_COLUMNS)))

    def request_cancel(self, run_id: str) -> bool:
        """Mark a live run for cancelling; False when it has already ended."""
        with self.tx() as tx:
            result = tx.conn.execute(
                runs.update().where(runs.c.id == run_id,
                                    runs.c.state.not_in([s.value for s in TERMINAL]))
                .values(cancel_requested=True))
            if result.rowcount == 1:
                tx.event(run_id, "cancel_requested")
        return result.rowcount == 1

    def cancel_requested(self, run_id: str) -> bool:
        with self._read() as conn:
            return bool(conn.execute(sa.select(runs.c.cancel_requested)
                                     .where(runs.c.id == run_id)).scalar())

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{dialect.READ_ONLY: True})
            with conn.begin():
                yield conn

    def create_run(self, run: Run, prompts: list[str], lease: Lease | None = None) -> None:
        """Store a run and its items together, or nothing; with `lease`, already held by it."""
        with self.tx() as tx:
            # Timed once the write lock is held, so the stored lease expiry is not early.
            self.insert_run(tx, run, prompts, lease, utcnow())

    def insert_run(self, tx: Tx, run: Run, prompts: list[str], lease: Lease | None,
                   now: datetime) -> None:
        exists = tx.conn.execute(sa.select(runs.c.id).where(runs.c.id == run.id)).first()
        if exists:
            raise RunExistsError(
                f"run {run.id} already exists: use `cftrunner resume {run.id}` to continue it")
        tx.conn.execute(runs.insert().values(
            id=run.id, project_id=run.project_id, model_alias=run.model_alias,
            judge_model=run.judge_model, split_percentage=run.split_percentage,
            prompts_source=run.prompts_source, job_name=run.job_name,
            state=run.state.value, created_at=now, updated_at=now, state_changed_at=now,
            cycle=run.cycle, cancel_requested=False,
            **(_lease_values(lease, now + timedelta(seconds=lease.seconds)) if lease else {})))
        if lease is not None:
            lease.renewed(time.monotonic())
        if prompts:
            tx.conn.execute(items.insert(), [
                {"run_id": run.id, "position": i, "prompt": p,
                 "stage": ItemStage.PENDING.value, "judge_attempts": 0, "updated_at": now}
                for i, p in enumerate(prompts)])
        tx.event(run.id, "run_created", items=len(prompts))


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
            moves = conn.execute(
                sa.select(events.c.at, events.c.data)
                .where(events.c.run_id == run.id, events.c.kind == "run_transitioned")
                .order_by(events.c.id)).all()
        seconds: dict[str, float] = {}
        entered, state = run.created_at, RunState.CREATED.value
        for at, data in moves:
            seconds[state] = seconds.get(state, 0.0) + (at - entered).total_seconds()
            entered, state = at, str(data.get("state"))
        if run.state not in TERMINAL:
            seconds[state] = seconds.get(state, 0.0) + (utcnow() - entered).total_seconds()
        return RunSummary(
            run=run,
            stage_counts={str(stage): int(n) for stage, n in stages},
            failures={f"{stage.lower()}:{kind}": int(n) for stage, kind, n in failures},
            state_seconds={k: round(v, 3) for k, v in seconds.items()})

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

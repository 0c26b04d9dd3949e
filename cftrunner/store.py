"""The state store: opening transactions, reading runs, items and effects, and holding leases."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from cftrunner import dialect, logs, migrations
from cftrunner.clock import utcnow
from cftrunner.exceptions import InputError, RunExistsError, RunNotFoundError
from cftrunner.gate import Facts
from cftrunner.lease import Lease, busy, keeps_out
from cftrunner.prompts import Prompt, prompt_digest
from cftrunner.records import (
    Completion,
    Effect,
    EffectStatus,
    Event,
    Item,
    LeaseInfo,
    Owner,
    Run,
    RunSummary,
    WorkerInfo,
)
from cftrunner.schema import (
    completions,
    effects,
    evaluations,
    events,
    items,
    prompt_uses,
    rechecks,
    runs,
    workers,
)
from cftrunner.states import TERMINAL, UNFINISHED_STAGES, ItemStage, RunState
from cftrunner.transaction import (
    LEASE_COLUMNS,
    Tx,
    effect_from,
    item_from,
    lease_values,
    run_from,
)

log = structlog.get_logger("cftrunner")
ITEM_BATCH = 1000  # item rows per INSERT when a run is created
_LOG_LEVELS = {"item_transitioned": logging.DEBUG, "effect_prepared": logging.DEBUG,
               "run_error": logging.WARNING, "effect_unknown": logging.WARNING,
               "effect_unsent": logging.WARNING, "effect_failed": logging.WARNING}
# Reads made for every item, built once (see transaction.py).
_ITEM = sa.select(items).where(items.c.id == sa.bindparam("item_id"))
_EFFECT = sa.select(effects).where(effects.c.run_id == sa.bindparam("run_id"),
                                   effects.c.key == sa.bindparam("key"))


def missing_sqlite_file(url: str) -> str | None:
    """The path of the SQLite file `url` names when there is no such file yet; None when there
    is, or for any other database."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:") \
            or parsed.database.startswith("file:"):
        return None
    return None if os.path.exists(parsed.database) else os.path.abspath(parsed.database)


class Store:
    @classmethod
    def existing(cls, url: str) -> Store:
        """The store at `url`, which must be there already: a command that only reads (or works
        on a run that must exist) never creates a state database."""
        missing = missing_sqlite_file(url)
        if missing is not None:
            raise InputError(f"no state database at {missing}: nothing has run with this database "
                             "yet (see --db, CFTRUNNER_DB or db in the config file)")
        return cls(url)

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = dialect.create_engine(url)
        # SQLite lets one transaction write at a time. Threads of this process queue for it
        # here, waking as soon as it is free, rather than in SQLite's busy handler, which
        # sleeps in steps of up to 100 ms; other processes still queue on the busy timeout.
        # Queued this way, they can share one connection for writing, kept open rather than
        # taken from the pool and given back for every transaction.
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        self._writer: sa.Connection | None = None
        self._writer_durable = True  # its synchronous level: FULL, as every connection starts
        try:
            migrations.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def where(self) -> str:
        """The state database as messages name it: its URL, without a password."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    @contextmanager
    def _writing(self, durable: bool = True) -> Iterator[sa.Connection]:
        """A connection in a write transaction, committed at the end, rolled back on error."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock:
            if self._writer is None or self._writer.invalidated:
                self._writer = self.engine.connect()
                self._writer_durable = True
            if durable != self._writer_durable:
                # Outside any transaction (SQLite refuses it inside one), on the driver's
                # connection, which pysqlite leaves in autocommit (see dialect.py).
                self._writer.connection.driver_connection.execute(  # type: ignore[union-attr]
                    f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._writer_durable = durable
            with self._writer.begin():
                yield self._writer

    @contextmanager
    def tx(self, fence: Lease | None = None, durable: bool = True) -> Iterator[Tx]:
        """One write transaction; with `fence`, only while this process holds that lease.

        On SQLite a transaction is durable when it commits (synced to disk), unless `durable` is
        False: then it survives a crash of the process but may be lost with the host's power,
        along with every later one that is not durable either; a durable commit makes all
        earlier ones durable too. That is for what can be found again after such a loss, by
        asking again or by reconciling: never for an intent, which must be on disk before its
        request is sent. (On PostgreSQL every transaction is durable.)"""
        with self._writing(durable) as conn:
            tx = Tx(conn)
            if fence is not None:
                tx.fence(fence)
            yield tx
        for kind, fields in tx.logged:
            level = _LOG_LEVELS.get(kind, logging.INFO)
            if logs.enabled(level):
                log.log(level, kind, **fields)

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only transaction, for the reads a Tx offers; it writes nothing."""
        with self._read() as conn:
            yield Tx(conn)

    def acquire_lease(self, lease: Lease, may_take_over: Callable[[LeaseInfo], bool]) -> Run:
        """Take the run's lease if it is free, expired, or `may_take_over` proves its owner dead."""
        with self.tx() as tx:
            row = tx.conn.execute(sa.select(runs).where(runs.c.id == lease.run_id)
                                  .with_for_update()).first()
            if row is None:
                raise RunNotFoundError(f"no run {lease.run_id!r} in the state database {self.where}")
            run = run_from(row)
            held = run.lease
            now = utcnow()
            if held is not None and held.token != lease.token and keeps_out(held, now,
                                                                           may_take_over):
                raise busy(run.id, held)
            self._write_lease(tx, lease, now)
            tx.event(run.id, "lease_acquired", None, owner=lease.owner.label(),
                     **({"taken_from": held.owner.label()} if held else {}))
        return self.run(lease.run_id)

    def _write_lease(self, tx: Tx, lease: Lease, now: datetime) -> None:
        started = time.monotonic()
        tx.conn.execute(runs.update().where(runs.c.id == lease.run_id).values(
            **lease_values(lease, now + timedelta(seconds=lease.seconds))))
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
                **dict.fromkeys(LEASE_COLUMNS)))

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

    def create_run(self, run: Run, prompts: Iterable[str | Prompt],
                   lease: Lease | None = None) -> None:
        """Store a run and its items together, or nothing; with `lease`, already held by it.

        `prompts` may be a stream (see `prompts.iter_prompts`): an error it raises part way rolls
        the whole run back."""
        with self.tx() as tx:
            # Timed once the write lock is held, so the stored lease expiry is not early.
            self.insert_run(tx, run, prompts, lease, utcnow())

    def insert_run(self, tx: Tx, run: Run, prompts: Iterable[str | Prompt], lease: Lease | None,
                   now: datetime) -> None:
        """Insert a run and its items inside `tx`, the items `ITEM_BATCH` rows at a time, so a
        large stream of prompts is never held as rows all at once. A run of a cycle notes each
        prompt as used by the cycle (`prompt_uses`), so that its next run takes new ones."""
        # Not a look, then an insert: on PostgreSQL two creators of one id would both look first.
        created = dialect.insert_ignoring_duplicates(
            tx.conn, runs,
            id=run.id, project_id=run.project_id, model_alias=run.model_alias,
            judge_model=run.judge_model, split_percentage=run.split_percentage,
            prompts_source=run.prompts_source, job_name=run.job_name,
            state=run.state.value, created_at=now, updated_at=now, state_changed_at=now,
            cycle=run.cycle, cancel_requested=False, judge_config=run.judge_config,
            gate_config=run.gate_config, loop_config=run.loop_config,
            prompt_source=run.prompt_source, skip_reason=run.skip_reason, base_url=run.base_url,
            dataset_id=run.dataset_id,
            **(lease_values(lease, now + timedelta(seconds=lease.seconds)) if lease else {}))
        if not created:
            raise RunExistsError(
                f"run {run.id} already exists: use `cftrunner resume {run.id}` to continue it")
        if lease is not None:
            lease.renewed(time.monotonic())
        numbered = enumerate(Prompt(p) if isinstance(p, str) else p for p in prompts)
        count = 0
        while chunk := list(itertools.islice(numbered, ITEM_BATCH)):
            tx.conn.execute(items.insert(), [
                {"run_id": run.id, "position": i, "prompt": p.text,
                 "stage": ItemStage.PENDING.value, "judge_attempts": 0, "updated_at": now}
                for i, p in chunk])
            if run.cycle is not None:
                self._note_uses(tx, run, chunk, now)
            count += len(chunk)
        tx.event(run.id, "run_created", items=count)

    @staticmethod
    def _note_uses(tx: Tx, run: Run, chunk: list[tuple[int, Prompt]], now: datetime) -> None:
        uses = {prompt_digest(p.text): {"cycle": run.cycle, "run_id": run.id, "position": i,
                                        "tag": p.tag, "used_at": now} for i, p in chunk}
        # A prompt used again replaces its earlier use; a run holds no prompt twice.
        tx.conn.execute(prompt_uses.delete().where(prompt_uses.c.cycle == run.cycle,
                                                   prompt_uses.c.digest.in_(list(uses))))
        tx.conn.execute(prompt_uses.insert(), [{"digest": d, **use} for d, use in uses.items()])


    def run(self, run_id: str) -> Run:
        with self._read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in the state database {self.where}")
        return run_from(row)

    def has_run(self, run_id: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    def runs(self) -> list[Run]:
        with self._read() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.created_at.desc())).all()
        return [run_from(r) for r in rows]

    def items(self, run_id: str, stage: ItemStage | None = None) -> list[Item]:
        query = sa.select(items).where(items.c.run_id == run_id).order_by(items.c.position)
        if stage is not None:
            query = query.where(items.c.stage == stage.value)
        with self._read() as conn:
            return [item_from(r) for r in conn.execute(query).all()]

    def item(self, item_id: int) -> Item:
        with self._read() as conn:
            return item_from(conn.execute(_ITEM, {"item_id": item_id}).one())

    def item_at(self, run_id: str, position: int) -> Item | None:
        with self._read() as conn:
            row = conn.execute(sa.select(items).where(items.c.run_id == run_id,
                                                      items.c.position == position)).first()
        return None if row is None else item_from(row)

    def completions(self, item_id: int) -> list[Completion]:
        """The item's completions in the order they came."""
        with self._read() as conn:
            rows = conn.execute(sa.select(completions).where(completions.c.item_id == item_id)
                                .order_by(completions.c.id)).all()
        return [Completion(**r._mapping) for r in rows]

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The run's held-out answers and scores, by model and position."""
        with self._read() as conn:
            rows = conn.execute(sa.select(evaluations).where(evaluations.c.run_id == run_id)
                                .order_by(evaluations.c.model_id, evaluations.c.position)).all()
        return [dict(r._mapping) for r in rows]

    def rechecks(self, run_id: str) -> list[dict[str, Any]]:
        """The run's regression set, in order, each with its answer and score once asked."""
        with self._read() as conn:
            rows = conn.execute(sa.select(rechecks).where(rechecks.c.run_id == run_id)
                                .order_by(rechecks.c.position)).all()
        return [dict(r._mapping) for r in rows]

    def tokens_used(self, run_id: str) -> int:
        """Tokens of every completion of the run, as their usage counted them."""
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(
                completions.c.total_tokens), 0)).where(completions.c.run_id == run_id)).scalar()
                or 0)

    def scores(self, run_id: str) -> list[float]:
        """The scores of the run's judged items (whatever happened to them after), ascending."""
        with self._read() as conn:
            return [float(v) for v in conn.execute(
                sa.select(items.c.score).where(items.c.run_id == run_id,
                                               items.c.score.is_not(None))
                .order_by(items.c.score)).scalars()]

    def completion_counts(self, run_id: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(kind, outcome) -> (completions, their tokens), e.g. ("judge", "malformed") -> (3, 900)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(completions.c.kind, completions.c.outcome, sa.func.count(),
                          sa.func.coalesce(sa.func.sum(completions.c.total_tokens), 0))
                .where(completions.c.run_id == run_id)
                .group_by(completions.c.kind, completions.c.outcome)).all()
        return {(str(kind), str(outcome)): (int(n), int(tokens or 0))
                for kind, outcome, n, tokens in rows}

    def gate_facts(self, run_id: str, score_threshold: float) -> Facts:
        """What the gate judges a run on: its added traces and their scores, and its tokens."""
        added = items.c.stage == ItemStage.ADDED.value
        with self._read() as conn:
            traces, below, mean = conn.execute(
                sa.select(sa.func.count(), sa.func.count().filter(items.c.score < score_threshold),
                          sa.func.avg(items.c.score))
                .where(items.c.run_id == run_id, added)).one()
            over = conn.execute(sa.select(sa.func.count()).where(
                items.c.run_id == run_id, items.c.stage == ItemStage.SKIPPED.value)).scalar()
        return Facts(traces_added=int(traces), below_threshold=int(below or 0),
                     mean_score=None if mean is None else round(float(mean), 6),
                     tokens_used=self.tokens_used(run_id), items_over_budget=int(over or 0))

    def summary(self, run: Run) -> RunSummary:
        with self._read() as conn:
            stages = _count_stages(conn, run.id)
            failures = conn.execute(
                sa.select(items.c.stage, items.c.error_kind, sa.func.count())
                .where(items.c.run_id == run.id, items.c.error_kind.is_not(None))
                .group_by(items.c.stage, items.c.error_kind)).all()
            moves = conn.execute(
                sa.select(events.c.at, events.c.data)
                .where(events.c.run_id == run.id, events.c.kind == "run_transitioned")
                .order_by(events.c.id)).all()
            held = (sa.select(sa.func.count()).select_from(items)
                    .where(items.c.claim_token == workers.c.token,
                           items.c.stage.in_([s.value for s in UNFINISHED_STAGES]))
                    .scalar_subquery())
            registered = conn.execute(
                sa.select(workers, held.label("holding")).where(workers.c.run_id == run.id)
                .order_by(workers.c.joined_at)).all()
            undecided = conn.execute(sa.select(effects).where(
                effects.c.run_id == run.id, effects.c.status == EffectStatus.UNKNOWN.value)
                .order_by(effects.c.prepared_at)).all()
        seconds: dict[str, float] = {}
        entered, state = run.created_at, RunState.CREATED.value
        for at, data in moves:
            seconds[state] = seconds.get(state, 0.0) + (at - entered).total_seconds()
            entered, state = at, str(data.get("state"))
        if not run.finished:
            seconds[state] = seconds.get(state, 0.0) + (utcnow() - entered).total_seconds()
        return RunSummary(
            run=run,
            stage_counts=stages,
            failures={f"{stage.lower()}:{kind}": int(n) for stage, kind, n in failures},
            state_seconds={k: round(v, 3) for k, v in seconds.items()},
            workers=[WorkerInfo(Owner(w.host, w.boot_id, w.pid, w.started), w.expires_at,
                                int(w.holding)) for w in registered],
            undecided=[effect_from(e) for e in undecided],
            rechecks=self.rechecks(run.id) if run.loop.regression else [])

    def effect(self, run_id: str, key: str) -> Effect | None:
        with self._read() as conn:
            row = conn.execute(_EFFECT, {"run_id": run_id, "key": key}).first()
        return None if row is None else effect_from(row)

    def effects(self, run_id: str, kind: str | None = None) -> list[Effect]:
        query = sa.select(effects).where(effects.c.run_id == run_id)
        if kind is not None:
            query = query.where(effects.c.kind == kind)
        with self._read() as conn:
            rows = conn.execute(query.order_by(effects.c.prepared_at)).all()
        return [effect_from(r) for r in rows]

    def done_effects(self, run_id: str, kinds: tuple[str, ...],
                     prepared_since: datetime) -> list[Effect]:
        """The run's effects of those kinds with a stored outcome, first prepared at or after
        `prepared_since`, in the order they were first prepared."""
        with self._read() as conn:
            rows = conn.execute(sa.select(effects).where(
                effects.c.run_id == run_id, effects.c.kind.in_(kinds),
                effects.c.status == EffectStatus.DONE.value,
                effects.c.prepared_at >= prepared_since).order_by(effects.c.prepared_at)).all()
        return [effect_from(r) for r in rows]

    def latest_effect(self, run_id: str, kind: str) -> Effect | None:
        """The run's effect of `kind` prepared last."""
        with self._read() as conn:
            row = conn.execute(sa.select(effects).where(
                effects.c.run_id == run_id, effects.c.kind == kind)
                .order_by(effects.c.prepared_at.desc()).limit(1)).first()
        return None if row is None else effect_from(row)

    def snapshots_of(self, dataset_id: str) -> list[str]:
        """The snapshots of the dataset that runs in this database made."""
        with self._read() as conn:
            return list(conn.scalars(sa.select(runs.c.snapshot_id).where(
                runs.c.dataset_id == dataset_id, runs.c.snapshot_id.is_not(None))))

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

    def stage_counts(self, run_id: str) -> tuple[RunState, dict[str, int]]:
        """The run's state and its items counted per stage, in one short read (a primary-key
        lookup and a scan of the run's entries in the (run_id, stage) index): what a progress
        display polls twice a second."""
        with self._read() as conn:
            state = conn.execute(sa.select(runs.c.state).where(runs.c.id == run_id)).scalar()
            stages = _count_stages(conn, run_id)
        if state is None:
            raise RunNotFoundError(f"no run {run_id!r} in the state database {self.where}")
        return RunState(state), stages

    def judge_requests(self, run_id: str) -> tuple[int, int]:
        """The run's judge completions (every request answered or refused) and the items they
        were for: the difference is the requests sent again."""
        judge = completions.c.kind == "judge"
        with self._read() as conn:
            sent, asked = conn.execute(
                sa.select(sa.func.count(), sa.func.count(sa.distinct(completions.c.item_id)))
                .where(completions.c.run_id == run_id, judge)).one()
        return int(sent), int(asked)


def _count_stages(conn: sa.Connection, run_id: str) -> dict[str, int]:
    """The run's items counted per stage, from the (run_id, stage) index alone."""
    rows = conn.execute(sa.select(items.c.stage, sa.func.count()).where(items.c.run_id == run_id)
                        .group_by(items.c.stage))
    return {str(stage): int(n) for stage, n in rows}

"""The read queries: runs, items, effects, events and what status and reports count of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.exceptions import RunNotFoundError
from cftrunner.gate import Facts
from cftrunner.records import (
    Completion,
    Effect,
    EffectStatus,
    Event,
    Item,
    Owner,
    Run,
    RunSummary,
    WorkerInfo,
)
from cftrunner.states import UNFINISHED_STAGES, ItemStage, RunState
from cftrunner.store.core import Core
from cftrunner.store.rows import effect_from, item_from, run_from
from cftrunner.store.schema import (
    calibrations,
    completions,
    effects,
    evaluations,
    events,
    items,
    rechecks,
    runs,
    workers,
)

# Reads made for every item, built once (see writes.py).
_ITEM = sa.select(items).where(items.c.id == sa.bindparam("item_id"))
_EFFECT = sa.select(effects).where(effects.c.run_id == sa.bindparam("run_id"),
                                   effects.c.key == sa.bindparam("key"))


class Reads(Core):
    """The store's reads, each in a read-only transaction of its own."""

    def cancel_requested(self, run_id: str) -> bool:
        with self._read() as conn:
            return bool(conn.execute(sa.select(runs.c.cancel_requested)
                                     .where(runs.c.id == run_id)).scalar())

    def run(self, run_id: str) -> Run:
        with self._read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in the state database {self.where}")
        return run_from(row)

    def has_run(self, run_id: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    def runs(self, states: tuple[RunState, ...] = (), cycle: str | None = None,
             limit: int | None = None) -> list[Run]:
        """The runs, newest first: in one of `states` (any when empty), of `cycle` (any when
        None), the first `limit` of them (all when None)."""
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        if states:
            query = query.where(runs.c.state.in_([s.value for s in states]))
        if cycle is not None:
            query = query.where(runs.c.cycle == cycle)
        with self._read() as conn:
            rows = conn.execute(query if limit is None else query.limit(limit)).all()
        return [run_from(r) for r in rows]

    def items(self, run_id: str, stage: ItemStage | None = None) -> list[Item]:
        query = sa.select(items).where(items.c.run_id == run_id).order_by(items.c.position)
        if stage is not None:
            query = query.where(items.c.stage == stage.value)
        with self._read() as conn:
            return [item_from(r) for r in conn.execute(query).all()]

    def items_by_id(self, ids: list[int]) -> list[Item]:
        """The items of these ids, in position order."""
        query = sa.select(items).where(items.c.id.in_(ids)).order_by(items.c.position)
        with self._read() as conn:
            return [item_from(r) for r in conn.execute(query).all()]

    def processing(self, run_id: str) -> list[tuple[int, str | None]]:
        """The id and trace id of each item added to the dataset whose correction the platform
        may still be processing: what each look at the corrections reads, without the prompts
        and answers of thousands of items (20,000 of them took some 40 MB at once)."""
        query = (sa.select(items.c.id, items.c.trace_id)
                 .where(items.c.run_id == run_id, items.c.stage == ItemStage.ADDED.value,
                        sa.or_(items.c.processing_status.is_(None),
                               items.c.processing_status.not_in(("none", "failed"))))
                 .order_by(items.c.position))
        with self._read() as conn:
            return [(row.id, row.trace_id) for row in conn.execute(query)]

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
        """Tokens of every completion of the run, its calibration set's too, as their usage
        counted them."""
        with self._read() as conn:
            return sum(int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(column), 0))
                                        .where(column.table.c.run_id == run_id)).scalar() or 0)
                       for column in (completions.c.total_tokens, calibrations.c.tokens))

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

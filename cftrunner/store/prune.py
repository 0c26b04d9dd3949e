"""Deleting finished runs with every row that belongs to them, one transaction per run.

A row belongs to a run when its table has a foreign key to `runs`, or to a table whose rows
belong to one (completions and effects through items): found from the schema, so a table added
later is deleted with its run too. `prompt_uses` and `cycles` hold no foreign key and outlive the
runs: what a cycle used stays used."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from datetime import datetime

import sqlalchemy as sa

from cftrunner import crashpoints
from cftrunner.records import Run
from cftrunner.states import RunState
from cftrunner.store.core import Core
from cftrunner.store.rows import run_from
from cftrunner.store.schema import items, metadata, runs


def needed(cycle_runs: Iterable[Run], interval_states: Collection[RunState]) -> set[str]:
    """The runs a cycle's next run reads, never pruned: per cycle, its latest finished run (the
    model the next run answers with and re-tunes from, `schedule.promoted`) and its latest run in
    `interval_states` (when the next cycle is due, `schedule._due`); "latest" by creation, as those
    read it, every run of a tie kept."""
    finished: dict[str, list[Run]] = defaultdict(list)
    counted: dict[str, list[Run]] = defaultdict(list)
    for run in cycle_runs:
        if run.cycle is None:
            continue
        if run.finished:
            finished[run.cycle].append(run)
        if run.state in interval_states:
            counted[run.cycle].append(run)
    kept: set[str] = set()
    for group in (*finished.values(), *counted.values()):
        newest = max(r.created_at for r in group)
        kept |= {r.id for r in group if r.created_at == newest}
    return kept


def prunable(run: Run, before: datetime, states: Collection[RunState]) -> bool:
    """Finished, ended (its last change of state) before `before`, in one of `states` (any
    when empty)."""
    return run.finished and run.state_changed_at < before and (not states or run.state in states)


def _belonging(table: sa.Table, run_id: str) -> sa.ColumnElement[bool] | None:
    """Which rows of `table` belong to the run, or None when its rows belong to no run."""
    for key in table.foreign_keys:
        if key.column is runs.c.id:
            return key.parent == run_id
    for key in table.foreign_keys:
        parent = key.column.table
        if isinstance(parent, sa.Table) and parent is not table:
            clause = _belonging(parent, run_id)
            if clause is not None:
                return key.parent.in_(sa.select(key.column).where(clause))
    return None


# Children before their parents, so that no foreign key is broken at any point.
_CHILDREN = [table for table in reversed(metadata.sorted_tables) if table is not runs]


class Pruning(Core):
    """Which finished runs may go, and deleting them."""

    def prune_candidates(self, before: datetime, states: Collection[RunState],
                         interval_states: Collection[RunState]) -> tuple[list[Run], list[Run]]:
        """The runs that may be deleted, ended first first (ties by id), and those that match
        but are kept (`needed`)."""
        with self._read() as conn:
            every = [run_from(r) for r in conn.execute(sa.select(runs)).all()]
        keep = needed(every, interval_states)
        matching = sorted((r for r in every if prunable(r, before, states)),
                          key=lambda r: (r.state_changed_at, r.id))
        return ([r for r in matching if r.id not in keep], [r for r in matching if r.id in keep])

    def item_counts(self, run_ids: Collection[str]) -> dict[str, int]:
        """The items of each run, by run id (runs without any left out)."""
        if not run_ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(sa.select(items.c.run_id, sa.func.count())
                                .where(items.c.run_id.in_(list(run_ids)))
                                .group_by(items.c.run_id)).all()
        return {str(run_id): int(n) for run_id, n in rows}

    def delete_run(self, run_id: str, before: datetime, states: Collection[RunState],
                   interval_states: Collection[RunState]) -> dict[str, int] | None:
        """Delete the run and every row that belongs to it, in one transaction, if it may still
        go (looked at again with its row locked: finished, ended before `before`, in `states`,
        not `needed`); the rows deleted per table, or None when it is kept or gone already."""
        with self.tx() as tx:
            row = tx.conn.execute(sa.select(runs).where(runs.c.id == run_id)
                                  .with_for_update()).first()
            if row is None or not prunable(run := run_from(row), before, states):
                return None
            if run.cycle is not None:
                siblings = [run_from(r) for r in tx.conn.execute(
                    sa.select(runs).where(runs.c.cycle == run.cycle)).all()]
                if run.id in needed(siblings, interval_states):
                    return None
            deleted: dict[str, int] = {}
            for table in _CHILDREN:
                clause = _belonging(table, run_id)
                if clause is not None:
                    deleted[table.name] = tx.conn.execute(table.delete().where(clause)).rowcount
            deleted[runs.name] = tx.conn.execute(runs.delete().where(runs.c.id == run_id)).rowcount
            crashpoints.reach("prune.before_commit")
        return deleted

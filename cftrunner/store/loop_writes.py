"""LoopWrites: the writes of a transaction that span a cycle's runs: the cycle's lock, the prompts
its runs took, held-out evaluations and regression checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.prompts import prompt_digest
from cftrunner.records import Run
from cftrunner.states import RunState
from cftrunner.store import dialect
from cftrunner.store.rows import run_from
from cftrunner.store.schema import cycles, evaluations, items, prompt_uses, rechecks, runs


class LoopWrites:
    """Part of `writes.Tx`: what its transaction reads and writes across a cycle's runs."""

    @property
    def conn(self) -> sa.Connection:
        """The transaction's connection: Tx's (a property there, which checks a pending claim)."""
        raise NotImplementedError

    def lock_cycle(self, name: str) -> None:
        """Hold the cycle's row until commit, so two ticks cannot both start a run for it."""
        dialect.insert_ignoring_duplicates(self.conn, cycles, name=name, created_at=utcnow())
        self.conn.execute(sa.select(cycles.c.name).where(cycles.c.name == name).with_for_update())

    def used_prompts(self, cycle: str) -> dict[str, datetime]:
        """When the cycle's runs last took each prompt, by digest."""
        query = sa.select(prompt_uses.c.digest, prompt_uses.c.used_at).where(
            prompt_uses.c.cycle == cycle)
        return {digest: used_at for digest, used_at in self.conn.execute(query)}

    def tag_means(self, cycle: str) -> dict[str, float]:
        """The mean score of the cycle's judged prompts by tag, as far as their items are kept."""
        query = (sa.select(prompt_uses.c.tag, sa.func.avg(items.c.score))
                 .join(items, sa.and_(items.c.run_id == prompt_uses.c.run_id,
                                      items.c.position == prompt_uses.c.position))
                 .where(prompt_uses.c.cycle == cycle, prompt_uses.c.tag.is_not(None),
                        items.c.score.is_not(None))
                 .group_by(prompt_uses.c.tag))
        return {tag: float(mean) for tag, mean in self.conn.execute(query)}

    def latest_run(self, cycle: str, states: tuple[RunState, ...] = ()) -> Run | None:
        query = sa.select(runs).where(runs.c.cycle == cycle)
        if states:
            query = query.where(runs.c.state.in_([s.value for s in states]))
        row = self.conn.execute(query.order_by(runs.c.created_at.desc()).limit(1)).first()
        return None if row is None else run_from(row)

    def record_evaluation(self, run_id: str, model_id: str, position: int, **fields: Any) -> None:
        """Keep one held-out result; one already kept for that model and prompt stays."""
        dialect.insert_ignoring_duplicates(self.conn, evaluations,
                                           ("run_id", "model_id", "position"), run_id=run_id,
                                           model_id=model_id, position=position, at=utcnow(),
                                           **fields)

    def choose_rechecks(self, run: Run, model_id: str, threshold: float) -> int:
        """Store the run's regression set, once: each prompt of the cycle's runs so far (this
        one included) that last scored below `threshold`, unless a regression check found it
        fixed since; how many."""
        weak: dict[str, tuple[str, str, float, datetime]] = {}
        query = (sa.select(items.c.prompt, items.c.score, runs.c.id, runs.c.created_at)
                 .join(runs, runs.c.id == items.c.run_id)
                 .where(runs.c.cycle == run.cycle, runs.c.created_at <= run.created_at,
                        items.c.score.is_not(None))
                 .order_by(runs.c.created_at, items.c.position))
        for prompt, score, run_id, created_at in self.conn.execute(query):
            digest = prompt_digest(prompt)
            if score < threshold:
                weak[digest] = (prompt, run_id, score, created_at)
            else:
                weak.pop(digest, None)  # scored well later
        fixed = (sa.select(rechecks.c.digest, rechecks.c.at)
                 .join(runs, runs.c.id == rechecks.c.run_id)
                 .where(runs.c.cycle == run.cycle, rechecks.c.score >= threshold))
        for digest, at in self.conn.execute(fixed):
            if digest in weak and at > weak[digest][3]:
                del weak[digest]
        rows = [{"run_id": run.id, "position": n, "digest": digest, "prompt": prompt,
                 "earlier_run_id": earlier, "earlier_score": score, "model_id": model_id}
                for n, (digest, (prompt, earlier, score, _)) in enumerate(weak.items())]
        if rows:
            self.conn.execute(rechecks.insert(), rows)
        return len(rows)

    def record_recheck(self, run_id: str, position: int, **fields: Any) -> None:
        """Keep one regression check's answer and score."""
        self.conn.execute(rechecks.update().where(rechecks.c.run_id == run_id,
                                                  rechecks.c.position == position)
                          .values(at=utcnow(), **fields))

"""What the metrics file reports of each cycle: its latest run, and when one of its runs last succeeded.

And whether there is a state database at all, for what runs after a command and must create none."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import sqlalchemy as sa

from cftrunner.records import Run
from cftrunner.store import dialect
from cftrunner.store.core import Core, missing_sqlite_file
from cftrunner.store.errors import translated
from cftrunner.store.rows import run_from
from cftrunner.store.schema import runs


class Watch(Core):
    """Reads across the cycles, each in a read-only transaction of its own."""

    def latest_runs(self) -> dict[str, Run]:
        """Each cycle's run created last, by the cycle's name (runs of no cycle left out)."""
        newest = (sa.select(runs.c.cycle, sa.func.max(runs.c.created_at).label("at"))
                  .where(runs.c.cycle.is_not(None)).group_by(runs.c.cycle).subquery())
        with self._read() as conn:
            rows = conn.execute(
                sa.select(runs).join(newest, sa.and_(runs.c.cycle == newest.c.cycle,
                                                     runs.c.created_at == newest.c.at))
                .order_by(runs.c.id)).all()
        latest: dict[str, Run] = {}
        for row in rows:  # two runs created in the same instant: the greater id
            run = run_from(row)
            latest[str(run.cycle)] = run
        return latest

    def last_reached(self, states: Collection[str]) -> dict[str, datetime]:
        """By cycle, when the last of its runs now in one of `states` got there."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(runs.c.cycle, sa.func.max(runs.c.state_changed_at))
                .where(runs.c.cycle.is_not(None), runs.c.state.in_(list(states)))
                .group_by(runs.c.cycle)).all()
        return {str(cycle): self._aware(at) for cycle, at in rows if at is not None}

    @staticmethod
    def _aware(at: datetime) -> datetime:
        """An aggregate's datetime, aware (should the column's type not have been applied to it)."""
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def state_present(url: str) -> bool:
    """Whether a state database is there: the SQLite file, or PostgreSQL's tables."""
    if missing_sqlite_file(url) is not None:
        return False
    with translated():
        if sa.engine.make_url(url).get_backend_name() != "postgresql":
            return True  # an SQLite file that is there (or a URL that opening refuses)
        engine = dialect.create_engine(url)
        try:
            with engine.connect() as conn:
                return sa.inspect(conn).has_table("runs")
        finally:
            engine.dispose()

"""Prompt sources: the digests of the prompts each cycle used, where a run took its prompts from,
and the regression checks after a promotion; and the API each run was started on.

The cycles' runs made before this revision used their prompts too: their digests are filled in
here, so that the next tick over an unchanged file does not take them all again."""

from __future__ import annotations

import hashlib
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
BATCH = 1000


def _varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.Text(), "postgresql")


def upgrade() -> None:
    op.add_column("runs", sa.Column("prompt_source", sa.JSON))
    op.add_column("runs", sa.Column("base_url", sa.Text))
    uses = op.create_table(
        "prompt_uses",
        sa.Column("cycle", _varchar(300), primary_key=True),
        sa.Column("digest", _varchar(32), primary_key=True),
        sa.Column("run_id", _varchar(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("tag", sa.Text),
        sa.Column("used_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "rechecks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", _varchar(200), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("digest", _varchar(32), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("earlier_run_id", _varchar(200), nullable=False),
        sa.Column("earlier_score", sa.Float, nullable=False),
        sa.Column("model_id", _varchar(500), nullable=False),
        sa.Column("answer", sa.Text),
        sa.Column("score", sa.Float),
        sa.Column("judge_raw", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("tokens", sa.Integer),
        sa.Column("at", sa.DateTime),
        sa.UniqueConstraint("run_id", "position"),
    )
    _fill(op.get_bind(), uses)


def _fill(conn: sa.Connection, uses: sa.Table) -> None:
    """A row per prompt of every run that belongs to a cycle, the latest run's where several
    took it."""
    runs = sa.table("runs", sa.column("id"), sa.column("cycle"),
                    sa.column("created_at", sa.DateTime))
    items = sa.table("items", sa.column("run_id"), sa.column("position"), sa.column("prompt"))
    latest: dict[tuple[str, str], tuple[datetime, str, int]] = {}
    rows = conn.execute(
        sa.select(runs.c.cycle, runs.c.created_at, items.c.run_id, items.c.position,
                  items.c.prompt)
        .join(runs, runs.c.id == items.c.run_id).where(runs.c.cycle.is_not(None))
        .order_by(runs.c.created_at, items.c.position)).yield_per(BATCH)
    for cycle, created_at, run_id, position, prompt in rows:
        digest = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        latest[(cycle, digest)] = (created_at, run_id, position)
    values = [{"cycle": cycle, "digest": digest, "run_id": run_id, "position": position,
               "tag": None, "used_at": created_at}
              for (cycle, digest), (created_at, run_id, position) in latest.items()]
    for start in range(0, len(values), BATCH):
        conn.execute(uses.insert(), values[start:start + BATCH])


def downgrade() -> None:
    op.drop_table("rechecks")
    op.drop_table("prompt_uses")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("base_url")
        batch.drop_column("prompt_source")

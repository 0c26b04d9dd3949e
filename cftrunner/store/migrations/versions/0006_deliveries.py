"""Notifications: a `deliveries` row per run and event, sent once and retried until delivered.

The runs already in the database reached their states before there were notifications: each of
those states gets a row marked `before`, so that the first invocation after the upgrade does not
announce the whole history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
BATCH = 1000
# The states a notification is sent for, as this revision knew them.
NOTIFIED = ("LAUNCHED", "FAILED", "SKIPPED", "CANCELLED", "TRAINED", "PROMOTED", "NOT_PROMOTED",
            "TRAIN_FAILED")


def _varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.Text(), "postgresql")


def upgrade() -> None:
    deliveries = op.create_table(
        "deliveries",
        sa.Column("subject", _varchar(600), primary_key=True),
        sa.Column("event", _varchar(32), primary_key=True),
        sa.Column("run_id", _varchar(200)),
        sa.Column("cycle", _varchar(300)),
        sa.Column("url", sa.Text),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", _varchar(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("next_at", sa.DateTime, nullable=False),
        sa.Column("delivered_at", sa.DateTime),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_deliveries_status_next_at", "deliveries", ["status", "next_at"])
    _fill(op.get_bind(), deliveries)


def _fill(conn: sa.Connection, deliveries: sa.Table) -> None:
    """A `before` row for every notified state each run has reached: its state now, and those
    its transitions passed through."""
    runs = sa.table("runs", sa.column("id"), sa.column("state"), sa.column("cycle"))
    events = sa.table("events", sa.column("run_id"), sa.column("kind"),
                      sa.column("data", sa.JSON))
    reached: dict[tuple[str, str], str | None] = {}
    cycles: dict[str, str | None] = {}
    for run_id, state, cycle in conn.execute(sa.select(runs.c.id, runs.c.state, runs.c.cycle)):
        cycles[run_id] = cycle
        if state in NOTIFIED:
            reached[(run_id, state)] = cycle
    moves = conn.execute(sa.select(events.c.run_id, events.c.data)
                         .where(events.c.kind == "run_transitioned")).yield_per(BATCH)
    for run_id, data in moves:
        state = data.get("state") if isinstance(data, dict) else None
        if state in NOTIFIED:
            reached[(run_id, state)] = cycles.get(run_id)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows: list[dict[str, Any]] = [
        {"subject": run_id, "event": state, "run_id": run_id, "cycle": cycle, "url": None,
         "payload": {"event": state, "run_id": run_id}, "status": "before", "attempts": 0,
         "created_at": now, "next_at": now, "delivered_at": None, "last_error": None}
        for (run_id, state), cycle in reached.items()]
    for start in range(0, len(rows), BATCH):
        conn.execute(deliveries.insert(), rows[start:start + BATCH])


def downgrade() -> None:
    op.drop_index("ix_deliveries_status_next_at", "deliveries")
    op.drop_table("deliveries")

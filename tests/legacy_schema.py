"""The tables cftrunner made before it had migrations (cftrunner/schema.py at commit 564daac),
frozen: what an existing state database without an alembic_version table holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("project_id", sa.String(200), nullable=False),
    sa.Column("model_alias", sa.String(500), nullable=False),
    sa.Column("judge_model", sa.String(500), nullable=False),
    sa.Column("split_percentage", sa.Integer, nullable=False),
    sa.Column("prompts_source", sa.Text, nullable=False),
    sa.Column("job_name", sa.String(300), nullable=False, unique=True),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(200)),
    sa.Column("snapshot_id", sa.String(200), unique=True),
    sa.Column("job_id", sa.String(200), unique=True),
    sa.Column("experiments", sa.JSON),
    sa.Column("failure_reason", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("state_changed_at", UTCDateTime, nullable=False),
    # The configuration cycle the run belongs to (tick's unit), when it was started by one.
    sa.Column("cycle", sa.String(300), index=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_host", sa.String(300)),
    sa.Column("lease_boot_id", sa.String(64)),
    sa.Column("lease_pid", sa.Integer),
    sa.Column("lease_started", sa.String(32)),
    sa.Column("lease_expires_at", UTCDateTime),
)

# One row per configuration cycle, locked while tick decides whether to start a run for it.
cycles = sa.Table(
    "cycles",
    metadata,
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("answer", sa.Text),
    sa.Column("feedback", sa.Text),
    sa.Column("reasoning", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("judge_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("judge_raw", sa.Text),
    # One remote trace never belongs to two items: reconciliation relies on it.
    sa.Column("trace_id", sa.String(200), unique=True),
    sa.Column("add_status", sa.String(32)),
    sa.Column("datapoint_id", sa.String(200)),
    sa.Column("processing_status", sa.String(32)),
    sa.Column("error_kind", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("run_id", "position"),
    sa.Index("ix_items_run_stage", "run_id", "stage"),
)

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id")),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("prepared_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("outcome", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("item_id", sa.Integer),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

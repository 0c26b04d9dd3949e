"""The schema cftrunner made before it had migrations, by `metadata.create_all`: frozen here.

A database with these tables and no `alembic_version` table is stamped with this revision."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Created by `create_all`, as before, so the DDL (and the names PostgreSQL gives the unnamed unique
# constraints) is exactly what older databases have. `cftrunner.store.schema.UTCDateTime` stores a
# DateTime.
metadata = sa.MetaData()

sa.Table(
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
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("state_changed_at", sa.DateTime, nullable=False),
    sa.Column("cycle", sa.String(300), index=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_host", sa.String(300)),
    sa.Column("lease_boot_id", sa.String(64)),
    sa.Column("lease_pid", sa.Integer),
    sa.Column("lease_started", sa.String(32)),
    sa.Column("lease_expires_at", sa.DateTime),
)

sa.Table(
    "cycles",
    metadata,
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

sa.Table(
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
    sa.Column("judge_attempts", sa.Integer, nullable=False),
    sa.Column("judge_raw", sa.Text),
    sa.Column("trace_id", sa.String(200), unique=True),
    sa.Column("add_status", sa.String(32)),
    sa.Column("datapoint_id", sa.String(200)),
    sa.Column("processing_status", sa.String(32)),
    sa.Column("error_kind", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("run_id", "position"),
    sa.Index("ix_items_run_stage", "run_id", "stage"),
)

sa.Table(
    "effects",
    metadata,
    sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id")),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("prepared_at", sa.DateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("outcome", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("item_id", sa.Integer),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())

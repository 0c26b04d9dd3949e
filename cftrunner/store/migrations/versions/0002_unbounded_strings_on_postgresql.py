"""Strings without a length limit on PostgreSQL too: SQLite never enforced the VARCHAR lengths, so
a value that was fine there (a long model alias, a long remote status) failed only on PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LENGTHS = {
    "runs": {"id": 200, "project_id": 200, "model_alias": 500, "judge_model": 500, "job_name": 300,
             "state": 32, "dataset_id": 200, "snapshot_id": 200, "job_id": 200, "cycle": 300,
             "lease_token": 64, "lease_host": 300, "lease_boot_id": 64, "lease_started": 32},
    "cycles": {"name": 300},
    "items": {"run_id": 200, "stage": 32, "trace_id": 200, "add_status": 32, "datapoint_id": 200,
              "processing_status": 32, "error_kind": 64},
    "effects": {"run_id": 200, "key": 100, "kind": 32, "status": 16},
    "events": {"run_id": 200, "kind": 64},
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # VARCHAR(n) to TEXT is binary-compatible: PostgreSQL rewrites neither the tables nor the indexes.
    for table, columns in LENGTHS.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(length))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in LENGTHS.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.String(length), existing_type=sa.Text())

"""Several workers on one run: a `workers` table, and the claim each unfinished item is under."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.Text(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("token", _varchar(64), primary_key=True),
        sa.Column("run_id", _varchar(200), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("host", _varchar(300), nullable=False),
        sa.Column("boot_id", _varchar(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", _varchar(32), nullable=False),
        sa.Column("joined_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_workers_run_id", "workers", ["run_id"])
    op.add_column("items", sa.Column("claim_token", _varchar(64)))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("claim_token")
    op.drop_index("ix_workers_run_id", "workers")
    op.drop_table("workers")

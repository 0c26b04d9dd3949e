"""The judge watched: each run's scores of its calibration set (`calibrations`), and what they came
to, its mean absolute error and bias (`runs.calibration`). Runs made before it had no calibration
set: nothing to fill in."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.Text(), "postgresql")


def upgrade() -> None:
    op.add_column("runs", sa.Column("calibration", sa.JSON))
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", _varchar(200), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("expected", sa.Float, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("judge_raw", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("tokens", sa.Integer),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_id", "position"),
    )


def downgrade() -> None:
    op.drop_table("calibrations")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("calibration")

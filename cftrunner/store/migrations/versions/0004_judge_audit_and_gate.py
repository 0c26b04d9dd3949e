"""The judge's audit trail and token counts (`completions`), each run's judge and gate, and
what follows the launch: the job followed, held-out evaluations, the promotion."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.Text(), "postgresql")


def upgrade() -> None:
    # Nullable columns without constraints: a plain ALTER TABLE ADD COLUMN, on SQLite too.
    for column in (sa.Column("judge_config", sa.JSON), sa.Column("gate_config", sa.JSON),
                   sa.Column("gate_result", sa.JSON), sa.Column("skip_reason", sa.Text),
                   sa.Column("loop_config", sa.JSON), sa.Column("training", sa.JSON),
                   sa.Column("promotion", sa.JSON)):
        op.add_column("runs", column)
    op.create_table(
        "completions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", _varchar(200), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("kind", _varchar(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("request", sa.JSON),
        sa.Column("content", sa.Text),
        sa.Column("finish_reason", _varchar(32)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("total_tokens", sa.Integer),
        sa.Column("outcome", _varchar(32), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_completions_run_id", "completions", ["run_id"])
    op.create_index("ix_completions_item_id", "completions", ["item_id"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", _varchar(200), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("model_id", _varchar(500), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("answer", sa.Text),
        sa.Column("score", sa.Float),
        sa.Column("judge_raw", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("tokens", sa.Integer),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_id", "model_id", "position"),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
    op.drop_index("ix_completions_item_id", "completions")
    op.drop_index("ix_completions_run_id", "completions")
    op.drop_table("completions")
    with op.batch_alter_table("runs") as batch:
        for column in ("promotion", "training", "loop_config", "skip_reason", "gate_result",
                       "gate_config", "judge_config"):
            batch.drop_column(column)

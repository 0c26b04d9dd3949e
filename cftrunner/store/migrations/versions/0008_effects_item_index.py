"""An index on effects.item_id: deleting a run's items (`cftrunner prune`) checks each item's
foreign key against the effects, which without it is a scan of the whole table per item."""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_effects_item_id", "effects", ["item_id"])


def downgrade() -> None:
    op.drop_index("ix_effects_item_id", "effects")

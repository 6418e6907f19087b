"""message events: repeated opens and clicks counted on one row (first, last, times)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("times", sa.Integer(), server_default="1", nullable=False))
        batch_op.create_index(
            "ix_message_events_repeat",
            ["message_id", "kind", "machine"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.drop_index("ix_message_events_repeat")
        batch_op.drop_column("times")
        batch_op.drop_column("last_at")

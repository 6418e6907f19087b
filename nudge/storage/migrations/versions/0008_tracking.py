"""tracking, attribution and A/B decisions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_agent", sa.String(length=512), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_flow_sent", ["flow", "sent_at"], unique=False)
    op.create_table(
        "ab_decisions",
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("winner", sa.String(length=32), nullable=False),
        sa.Column("probability", sa.Double(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("flow", "step", name=op.f("pk_ab_decisions")),
    )


def downgrade() -> None:
    op.drop_table("ab_decisions")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_flow_sent")
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.drop_column("user_agent")

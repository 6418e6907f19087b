"""messages: A/B variant and transactional flag

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("transactional", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_index("ix_messages_contact_sent", ["contact_id", "sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_contact_sent")
        batch_op.drop_column("transactional")
        batch_op.drop_column("variant")

"""installation: this installation's id, part of every new journey's workflow id and Message-ID

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installation_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    # Made here, once per database (nudge.storage.installation makes it if this row is gone).
    op.bulk_insert(
        table, [{"id": 1, "installation_id": secrets.token_hex(5), "created_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("installation")

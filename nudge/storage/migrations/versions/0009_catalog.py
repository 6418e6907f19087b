"""catalogue: what `POST /v1/products` said last of each product's stock and price

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.add_column(sa.Column("catalog_in_stock", sa.Boolean(), nullable=True))
        batch_op.add_column(
            sa.Column("catalog_price", sa.Numeric(precision=12, scale=2), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_column("catalog_price")
        batch_op.drop_column("catalog_in_stock")

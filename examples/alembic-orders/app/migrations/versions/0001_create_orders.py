"""create the orders table (the baseline: the schema v1 was released with)

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    orders = op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.bulk_insert(orders, [{"item": "espresso", "quantity": 2}, {"item": "croissant", "quantity": 1},
                            {"item": "orange juice", "quantity": 3}])


def downgrade() -> None:
    op.drop_table("orders")

"""add orders.customer and orders.status (expand: v1 never names them and keeps working)

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, and a server default: v1's INSERT, which names neither, still succeeds
    op.add_column("orders", sa.Column("customer", sa.Text, nullable=True))
    op.add_column("orders", sa.Column("status", sa.Text, nullable=False, server_default="placed"))
    op.create_index("ix_orders_customer", "orders", ["customer"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer", table_name="orders")
    op.drop_column("orders", "status")
    op.drop_column("orders", "customer")

"""Release v2 of the orders app: orders have a customer and a status. It needs revision 0002 (its
readiness answers 503 until the database has those columns: `alembic upgrade head`, the release step)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

VERSION = "v2"
COLUMNS = ("id", "item", "quantity", "created_at", "customer", "status")  # customer, status: revision 0002

orders = sa.table("orders", *(sa.column(name) for name in COLUMNS))


def _order(row: sa.RowMapping) -> dict[str, Any]:
    return {"id": row["id"], "item": row["item"], "quantity": row["quantity"],
            "created_at": row["created_at"].isoformat(), "customer": row["customer"], "status": row["status"]}


def latest(conn: sa.Connection, n: int = 10) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(orders).order_by(orders.c.id.desc()).limit(n)).mappings()
    return [_order(row) for row in rows]


def values(body: Any) -> dict[str, Any]:
    """The columns of a new order from a request's JSON (status is the database's default, "placed");
    raises KeyError, ValueError, TypeError."""
    customer = body.get("customer")
    return {"item": str(body["item"]), "quantity": int(body.get("quantity", 1)),
            "customer": None if customer is None else str(customer)}


def create(conn: sa.Connection, new: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(sa.insert(orders).values(**new).returning(*orders.c)).mappings().one()
    return _order(row)

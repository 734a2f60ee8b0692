"""Release v1 of the orders app: what it reads and writes. It names its columns in every query, so
columns added later (revision 0002's customer and status) are invisible to it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

VERSION = "v1"
COLUMNS = ("id", "item", "quantity", "created_at")  # the columns it needs (its readiness checks them)

orders = sa.table("orders", *(sa.column(name) for name in COLUMNS))


def _order(row: sa.RowMapping) -> dict[str, Any]:
    return {"id": row["id"], "item": row["item"], "quantity": row["quantity"],
            "created_at": row["created_at"].isoformat()}


def latest(conn: sa.Connection, n: int = 10) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(orders).order_by(orders.c.id.desc()).limit(n)).mappings()
    return [_order(row) for row in rows]


def values(body: Any) -> dict[str, Any]:
    """The columns of a new order from a request's JSON; raises KeyError, ValueError, TypeError."""
    return {"item": str(body["item"]), "quantity": int(body.get("quantity", 1))}


def create(conn: sa.Connection, new: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(sa.insert(orders).values(**new).returning(*orders.c)).mappings().one()
    return _order(row)

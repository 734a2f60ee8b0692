"""Toy shop, version 2: adds a currency (compatible) or renames name to title (breaking)."""

VERSION = "v2"


def item(item_id: int, breaking: bool) -> dict[str, int | str]:
    """The item ``item_id`` as v2 serves it; ``breaking`` renames ``name`` to ``title``."""
    label = "title" if breaking else "name"
    price = 100 + item_id % 900
    return {"id": item_id, label: f"item-{item_id}", "price": price, "currency": "EUR"}


def orders_schema(breaking: bool) -> tuple[str, tuple[str, ...]]:
    """The orders schema v2 expects (with ``DATABASE_URL``): a ``currency`` column (``migrate.py expand``
    adds it beside v1's columns), and with ``breaking`` the name column as ``title`` (``migrate.py breaking``)."""
    if breaking:
        return "orders-v2-breaking", ("title", "currency")
    return "orders-v2-expand", ("item_name", "currency")

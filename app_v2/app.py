"""Toy shop, version 2: adds a currency (compatible) or renames name to title (breaking)."""

VERSION = "v2"


def item(item_id: int, breaking: bool) -> dict[str, int | str]:
    """The item ``item_id`` as v2 serves it; ``breaking`` renames ``name`` to ``title``."""
    label = "title" if breaking else "name"
    price = 100 + item_id % 900
    return {"id": item_id, label: f"item-{item_id}", "price": price, "currency": "EUR"}


def orders_schema(breaking: bool) -> tuple[str, tuple[str, ...]]:
    """The orders schema v2 expects (with ``DATABASE_URL``): ``title`` and ``currency`` beside sid and item,
    whichever migration made them (``migrate.py expand``, which keeps v1's ``item_name`` in step with
    ``title``, or ``breaking``, which renames it); the name says which ``--v2-mode`` served."""
    if breaking:
        return "orders-v2-breaking", ("title", "currency")
    return "orders-v2-expand", ("title", "currency")

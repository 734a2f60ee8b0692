"""Toy shop, version 1: items have an id, a name and a price."""

VERSION = "v1"


def item(item_id: int, breaking: bool) -> dict[str, int | str]:
    """The item ``item_id`` as v1 serves it (``breaking`` has no effect in v1)."""
    return {"id": item_id, "name": f"item-{item_id}", "price": 100 + item_id % 900}


def orders_schema(breaking: bool) -> tuple[str, tuple[str, ...]]:
    """The orders schema v1 expects (with ``DATABASE_URL``): the baseline, ``item_name`` beside sid and item."""
    return "orders-v1", ("item_name",)

"""The toy app with ``DATABASE_URL``: orders in its answers, the schema it expects in each one, a
schema it does not find answered as 409 (not a crash), and readiness that waits for the database.
The database is a stand-in here (psycopg2 lives in the image); the real one is in tests/e2e."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from sandbox.appserver.orders import Orders, SchemaMismatch, schema_of
from sandbox.appserver.server import Settings, Shop
from tests.unit.test_appserver import load_version

URL = "postgresql://app:pw@p-postgres:5432/postgres"


class FakeOrders(Orders):
    """Orders in a list; ``missing`` names a column the "database" lacks; ``up`` whether it answers."""

    def __init__(self, orders: Orders, missing: str = "", up: bool = True) -> None:
        super().__init__(orders.url, orders.schema)
        self.rows: list[tuple[str, int]] = []
        self.missing, self.up = missing, up

    def _check(self) -> None:
        if self.missing in self.schema.columns:
            raise SchemaMismatch(f'column "{self.missing}" does not exist')

    async def add(self, sid: str, item: int) -> None:
        self._check()
        self.rows.append((sid, item))

    async def latest(self, sid: str) -> list[dict[str, Any]]:
        self._check()
        return [self.schema.as_order(self.schema.values(s, i)[1:]) for s, i in reversed(self.rows) if s == sid]

    async def ping(self, timeout: float) -> bool:
        return self.up


Make = Callable[..., Awaitable[tuple[TestClient, Shop]]]


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Make]:
    clients: list[TestClient] = []

    async def start(version: str, *, breaking: bool = False, missing: str = "", up: bool = True
                    ) -> tuple[TestClient, Shop]:
        shop = Shop(Settings(database_url=URL, breaking=breaking), load_version(version), instance="h/1")
        assert shop.orders is not None
        shop.orders = FakeOrders(shop.orders, missing, up)
        client = TestClient(TestServer(shop.make_app()))
        await client.start_server()
        clients.append(client)
        return client, shop

    yield start
    for client in clients:
        await client.close()


def test_settings_read_database_url_and_the_shop_keeps_orders_only_with_it() -> None:
    assert Settings.from_env({"DATABASE_URL": f" {URL} "}).database_url == URL
    assert Shop(Settings(), load_version("v1")).orders is None
    shop = Shop(Settings(database_url=URL, breaking=True), load_version("v2"))
    assert shop.orders is not None and shop.orders.schema == schema_of(load_version("v2"), True)


@pytest.mark.asyncio
@pytest.mark.parametrize(("version", "breaking", "schema", "order"), [
    ("v1", False, "orders-v1", {"item": 3, "item_name": "item-3"}),
    ("v2", False, "orders-v2-expand", {"item": 3, "title": "item-3", "currency": "EUR"}),
    ("v2", True, "orders-v2-breaking", {"item": 3, "title": "item-3", "currency": "EUR"}),
])
async def test_each_answer_says_the_schema_it_expected_and_lists_the_orders(
        make: Make, version: str, breaking: bool, schema: str, order: dict[str, Any]) -> None:
    client, _ = await make(version, breaking=breaking)
    resp = await client.post("/api/cart", json={"item": 3})
    assert resp.status == 200 and resp.headers["X-Schema-Expected"] == schema
    body = await resp.json()
    assert body == {"items": [3], "count": 1, "orders": [order], "schema_expected": schema}
    again = await client.get("/api/cart")
    assert (await again.json())["orders"] == [order] and again.headers["X-Schema-Expected"] == schema


@pytest.mark.asyncio
async def test_a_column_renamed_under_v1_is_a_409_answer_naming_the_schema(make: Make) -> None:
    client, shop = await make("v1", missing="item_name")
    for resp in (await client.post("/api/cart", json={"item": 3}), await client.get("/api/cart")):
        assert resp.status == 409 and resp.headers["X-Schema-Expected"] == "orders-v1"
        assert resp.headers["X-App-Version"] == "v1"
        assert await resp.json() == {"error": "schema mismatch", "schema_expected": "orders-v1",
                                     "detail": 'column "item_name" does not exist'}
    assert shop.responses.get(409) == 2 and not shop.responses.get(500)


@pytest.mark.asyncio
async def test_not_ready_while_the_database_does_not_answer(make: Make) -> None:
    client, _ = await make("v1", up=False)
    resp = await client.get("/healthz")
    assert resp.status == 503 and await resp.json() == {"status": "no-database"}
    ok, _ = await make("v1")
    assert (await ok.get("/healthz")).status == 200

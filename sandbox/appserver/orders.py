"""Orders kept in PostgreSQL (``DATABASE_URL``): the toy app's state in a real database.

With ``DATABASE_URL`` set (``up --service postgres``), every ``POST /api/cart`` also writes an
order row, and the cart answers list the user's latest orders read back from the database. Each
version says which schema it expects (its module's ``orders_schema(breaking)``: a name and the
columns it writes and reads beside ``sid`` and ``item``); every answer carries that name in
``X-Schema-Expected``, and a query that fails because the schema is not the expected one
(an undefined column or table) answers 409 ``schema mismatch`` naming it, not a 5xx: the
server works, the database was changed under it.

The first server to connect creates the baseline table (v1's schema) under an advisory lock,
so a fleet booting at once does not race. psycopg2 (Debian's ``python3-psycopg2`` in the image)
blocks: every call runs in a worker thread, through a small pool; at most ``POOL_MAX`` calls run at
once (the others wait their turn), so a burst never finds the pool exhausted.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from dataclasses import dataclass
from typing import Any

BASELINE_DDL = ("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, sid text NOT NULL, "
                "item integer NOT NULL, item_name text NOT NULL, created timestamptz NOT NULL DEFAULT now())")
BASELINE = ("orders-v1", ("item_name",))  # the schema of a version that declares none
LOCK_ID = 21  # pg_advisory_xact_lock key while the baseline is created
SCHEMA_ERRORS = ("42703", "42P01")  # undefined column, undefined table
LATEST = 5  # orders listed in a cart answer
POOL_MAX = 4
CONNECT_TIMEOUT_S = 5  # a loaded machine takes seconds to open a connection (2 s timed out under load)


class SchemaMismatch(Exception):
    """The database's schema is not the one this version expects (a column or table is missing)."""


@dataclass(frozen=True)
class Schema:
    """The orders schema one version expects: its name and the columns beside ``sid`` and ``item``."""

    name: str
    columns: tuple[str, ...]

    def insert_sql(self) -> str:
        cols = ", ".join(("sid", "item", *self.columns))
        return f"INSERT INTO orders ({cols}) VALUES ({', '.join(['%s'] * (2 + len(self.columns)))})"

    def select_sql(self) -> str:
        return (f"SELECT {', '.join(('item', *self.columns))} FROM orders WHERE sid = %s "
                f"ORDER BY id DESC LIMIT {LATEST}")

    def values(self, sid: str, item: int) -> tuple[Any, ...]:
        return (sid, item, *(("EUR" if c == "currency" else f"item-{item}") for c in self.columns))

    def as_order(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(("item", *self.columns), row, strict=True))


def schema_of(version: Any, breaking: bool) -> Schema:
    """The schema ``version`` (a version module) expects: its ``orders_schema(breaking)``, else v1's."""
    declared = getattr(version, "orders_schema", None)
    name, columns = declared(breaking) if callable(declared) else BASELINE
    return Schema(str(name), tuple(columns))


class Orders:
    """Orders of one server process in the database at ``url``, as ``schema`` expects them."""

    def __init__(self, url: str, schema: Schema) -> None:
        self.url = url
        self.schema = schema
        self._pool: Any = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(POOL_MAX)  # one per pooled connection

    def _db(self) -> Any:
        return importlib.import_module("psycopg2")

    def _connection(self) -> Any:
        with self._lock:
            if self._pool is None:
                pool = importlib.import_module("psycopg2.pool").ThreadedConnectionPool(
                    1, POOL_MAX, self.url, connect_timeout=CONNECT_TIMEOUT_S)
                conn = pool.getconn()
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                        cur.execute(BASELINE_DDL)
                finally:
                    pool.putconn(conn)
                self._pool = pool
            return self._pool.getconn()

    def _run(self, sql: str, args: tuple[Any, ...], fetch: bool) -> list[tuple[Any, ...]]:
        with self._slots:
            return self._run_one(sql, args, fetch)

    def _run_one(self, sql: str, args: tuple[Any, ...], fetch: bool) -> list[tuple[Any, ...]]:
        db = self._db()
        conn = self._connection()
        broken = False
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall()) if fetch else []
        except db.Error as exc:
            broken = conn.closed != 0
            if getattr(exc, "pgcode", None) in SCHEMA_ERRORS:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SchemaMismatch(first) from exc
            raise OSError(f"database: {str(exc).strip() or type(exc).__name__}") from exc
        finally:
            self._pool.putconn(conn, close=broken)

    async def add(self, sid: str, item: int) -> None:
        """Write one order; raises SchemaMismatch, OSError."""
        await asyncio.to_thread(self._run, self.schema.insert_sql(), self.schema.values(sid, item), False)

    async def latest(self, sid: str) -> list[dict[str, Any]]:
        """The user's latest orders, newest first; raises SchemaMismatch, OSError."""
        rows = await asyncio.to_thread(self._run, self.schema.select_sql(), (sid,), True)
        return [self.schema.as_order(r) for r in rows]

    async def ping(self, timeout: float) -> bool:
        """Whether the database answers ``SELECT 1`` within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._run, "SELECT 1", (), True), timeout)
        except (OSError, SchemaMismatch, TimeoutError, ImportError):
            return False
        except Exception:  # psycopg2's own errors while connecting
            return False
        return True

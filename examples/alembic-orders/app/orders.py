"""The orders app: a small aiohttp server keeping orders in PostgreSQL through SQLAlchemy Core, its schema
managed by Alembic. This file is the same in both releases; what a release reads and writes is in its
release.py (v1/ or v2/ in the example's directory).

    GET  /ready        200 {"version", "revision"} when the database has every column this release
                       needs, else 503 {"error", "missing", "revision"}: the sandbox's --health-path
    GET  /             {"version", "revision"}: this release and the database's Alembic revision
    GET  /api/orders   {"version", "orders": [...]}: the 10 latest orders
    POST /api/orders   {"item", "quantity", ["customer"]} -> 201 {"version", "order"}

Every answer carries ``X-App-Version``. A query naming a column the database lacks answers 409
{"error": "schema mismatch"} (an answer, not a dropped request). On a database with no Alembic history
the server first applies the baseline revision (0001) itself; every later revision is a release step,
``alembic upgrade head`` (``sandbox roll --migrate``). SIGTERM: stop accepting, finish the requests in
flight (at most SHUTDOWN_S), close the pool, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from aiohttp import web
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import release

HERE = Path(__file__).resolve().parent
BASELINE = "0001"  # the revision a fresh database is brought to by the servers themselves
POOL = 4  # connections per server (and threads running them): 9 servers, or 18 mid-rollout, stay below 100
PORT = int(os.environ.get("APP_PORT", "8000"))
SHUTDOWN_S = 15.0
BOOT_DEADLINE_S = 30.0

log = logging.getLogger("orders")
T = TypeVar("T")


def make_engine() -> sa.Engine:
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("orders: DATABASE_URL is not set (start the fleet with `sandbox up --service postgres`)")
    return sa.create_engine(url, pool_size=POOL, max_overflow=0, pool_timeout=10, pool_pre_ping=True)


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def ensure_baseline(engine: sa.Engine) -> None:
    """Bring a database with no Alembic history to the baseline (env.py's advisory lock makes servers
    starting together apply it once); leave any other database as it is. Retries while PostgreSQL is
    not reachable, up to BOOT_DEADLINE_S."""
    deadline = time.monotonic() + BOOT_DEADLINE_S
    while True:
        try:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table("alembic_version"):
                    log.info("database at revision %s", current_revision(conn))
                    return
            log.info("no Alembic history: applying the baseline revision %s", BASELINE)
            command.upgrade(Config(str(HERE / "alembic.ini")), BASELINE)
            return
        except sa.exc.OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database not reachable yet: %s", str(exc).splitlines()[0])
            time.sleep(1)


def missing_columns(conn: sa.Connection) -> list[str]:
    inspector = sa.inspect(conn)
    have = {c["name"] for c in inspector.get_columns("orders")} if inspector.has_table("orders") else set()
    return sorted(set(release.COLUMNS) - have)


def answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response({"version": release.VERSION, **body}, status=status,
                             headers={"X-App-Version": release.VERSION})


def build_app(engine: sa.Engine) -> web.Application:
    pool = ThreadPoolExecutor(POOL, thread_name_prefix="db")

    async def db(fn: Callable[[sa.Connection], T], *, write: bool = False) -> T:
        def call() -> T:
            with (engine.begin() if write else engine.connect()) as conn:
                return fn(conn)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def guarded(fn: Callable[[sa.Connection], dict[str, Any]], status: int = 200, *,
                      write: bool = False) -> web.Response:
        try:
            return answer(status, await db(fn, write=write))
        except sa.exc.ProgrammingError as exc:  # a column or table this release names is not there
            return answer(409, {"error": "schema mismatch", "detail": str(exc.orig).splitlines()[0]})
        except sa.exc.SQLAlchemyError as exc:
            return answer(503, {"error": "database", "detail": str(exc).splitlines()[0]})

    async def ready(_: web.Request) -> web.Response:
        def check(conn: sa.Connection) -> dict[str, Any]:
            return {"revision": current_revision(conn), "missing": missing_columns(conn)}
        try:
            seen = await db(check)
        except sa.exc.SQLAlchemyError as exc:
            return answer(503, {"error": "database", "detail": str(exc).splitlines()[0]})
        if seen["missing"]:
            return answer(503, {"error": "schema behind this release: run `alembic upgrade head`", **seen})
        return answer(200, {"revision": seen["revision"]})

    async def index(_: web.Request) -> web.Response:
        return await guarded(lambda conn: {"revision": current_revision(conn)})

    async def list_orders(_: web.Request) -> web.Response:
        return await guarded(lambda conn: {"orders": release.latest(conn)})

    async def create_order(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            values = release.values(body)
        except (ValueError, TypeError, KeyError) as exc:
            return answer(400, {"error": f"bad order: {exc}"})
        return await guarded(lambda conn: {"order": release.create(conn, values)}, 201, write=True)

    async def on_shutdown(_: web.Application) -> None:
        log.info("stopping: no new connections, finishing the requests in flight")

    async def on_cleanup(_: web.Application) -> None:
        pool.shutdown(wait=True)
        engine.dispose()
        log.info("stopped")

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/", index)
    app.router.add_get("/api/orders", list_orders)
    app.router.add_post("/api/orders", create_order)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
    engine = make_engine()
    ensure_baseline(engine)
    # alembic.ini set Alembic's logger to INFO: quiet it now, or every readiness probe logs two lines
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log.info("orders %s listening on :%d", release.VERSION, PORT)
    # run_app turns SIGTERM and SIGINT into a graceful exit: the listener closes at once, the handlers
    # still running get up to SHUTDOWN_S to finish
    web.run_app(build_app(engine), port=PORT, shutdown_timeout=SHUTDOWN_S, access_log=None, print=None)


if __name__ == "__main__":
    main()

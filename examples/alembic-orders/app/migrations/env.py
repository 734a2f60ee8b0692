"""Alembic's environment for the orders example: online migrations only, against $DATABASE_URL.

Every run holds a PostgreSQL advisory lock for its transaction, so runs that start together (servers
applying the baseline on a fresh database, or `alembic upgrade head` run while they boot) apply each
revision once: the second waits, then finds the database already there. `lock_timeout` bounds how long
a DDL statement may queue behind the requests being served: a migration that cannot get its lock fails
(and `sandbox roll --migrate` then stops before the first batch) rather than stall every request.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

LOCK_KEY = 7_210_021  # any constant shared by every run against this database
LOCK_TIMEOUT = "5s"

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations_online() -> None:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set (the sandbox gives it with `up --service postgres`)")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            connection.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the orders example runs its migrations online only")
run_migrations_online()

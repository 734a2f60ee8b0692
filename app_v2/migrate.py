"""v2's schema migrations for the orders table, run once by ``sandbox roll --migrate`` / ``--contract``:

    python3 -m migrate expand     # adds title (what v2 reads and writes) beside v1's item_name, and a
                                  # trigger that keeps the two in step: v1 and v2 both keep working
    python3 -m migrate contract   # once every server is v2: drops the trigger and item_name (what only
                                  # v1 used): v2 keeps working, v1 answers "schema mismatch" from then on
    python3 -m migrate breaking   # renames item_name to title in one step: every v1 server answers
                                  # "schema mismatch" at once

The design (expand/contract, "parallel change"): v2's code only knows ``title`` and ``currency``
(``app.py``'s ``orders_schema``), whichever migration prepared the table. ``expand`` adds both
columns, copies ``item_name`` into ``title`` for the rows already there, lets ``item_name`` be
null, and installs a ``BEFORE INSERT OR UPDATE`` trigger that fills whichever of the two a writer
left out from the other: a v1 server writes ``item_name`` and v2 reads its rows as ``title``; a v2
server writes ``title`` and v1 reads its rows as ``item_name``. So, during the mixed window, neither
version sees an error, and a rollback to v1 still works. ``contract`` makes ``title`` NOT NULL (it
fails, changing nothing, when ``expand`` never ran: ``title`` is missing) and removes the trigger and
``item_name``: from then on only v2 works, and a rollback to v1 does not. ``breaking`` reaches the
same end schema in one step, with no window where both versions work.

It reads ``DATABASE_URL`` (the fleet's, given to the one-off container), prints what it did and
exits 0; a bad argument exits 2, a database error 1. Each runs in one transaction, so a failure
changes nothing. The baseline table is v1's (created by the first server); ``expand`` and
``breaking`` create it first when no server ever did, so they can run on an empty database too.
"""

import importlib
import os
import sys

BASELINE = ("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, sid text NOT NULL, "
            "item integer NOT NULL, item_name text NOT NULL, created timestamptz NOT NULL DEFAULT now())")
ADD_CURRENCY = "ALTER TABLE orders ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'EUR'"
SYNC_FUNCTION = """CREATE OR REPLACE FUNCTION orders_sync_title() RETURNS trigger AS $$
BEGIN
  NEW.title := COALESCE(NEW.title, NEW.item_name);
  NEW.item_name := COALESCE(NEW.item_name, NEW.title);
  RETURN NEW;
END $$ LANGUAGE plpgsql"""
MIGRATIONS = {
    "expand": [
        BASELINE,
        "ALTER TABLE orders ADD COLUMN IF NOT EXISTS title text",
        ADD_CURRENCY,
        "UPDATE orders SET title = item_name WHERE title IS NULL",
        "ALTER TABLE orders ALTER COLUMN item_name DROP NOT NULL",
        SYNC_FUNCTION,
        "DROP TRIGGER IF EXISTS orders_sync_title ON orders",
        "CREATE TRIGGER orders_sync_title BEFORE INSERT OR UPDATE ON orders "
        "FOR EACH ROW EXECUTE FUNCTION orders_sync_title()",
    ],
    "contract": [
        "ALTER TABLE orders ALTER COLUMN title SET NOT NULL",  # fails (nothing changed) without expand
        "DROP TRIGGER IF EXISTS orders_sync_title ON orders",
        "DROP FUNCTION IF EXISTS orders_sync_title()",
        "ALTER TABLE orders DROP COLUMN IF EXISTS item_name",
    ],
    "breaking": [BASELINE, "ALTER TABLE orders RENAME COLUMN item_name TO title", ADD_CURRENCY],
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in MIGRATIONS:
        print(f"usage: python3 -m migrate {'|'.join(MIGRATIONS)}", file=sys.stderr)
        return 2
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("migrate: DATABASE_URL is not set (start the fleet with `sandbox up --service postgres`)",
              file=sys.stderr)
        return 2
    psycopg2 = importlib.import_module("psycopg2")  # Debian's python3-psycopg2 in the image

    try:
        with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
            for statement in MIGRATIONS[argv[0]]:
                cur.execute(statement)
                print(f"migrate {argv[0]}: {' '.join(statement.split())}")
    except psycopg2.Error as exc:
        print(f"migrate {argv[0]}: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"migrate {argv[0]}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""v2's schema migrations for the orders table, run once by ``sandbox roll --migrate``:

    python3 -m migrate expand     # adds currency: v2 needs it, v1 keeps working (it never names it)
    python3 -m migrate breaking   # renames item_name to title (and adds currency): v1 reads item_name,
                                  # so every v1 server answers "schema mismatch" from then on

It reads ``DATABASE_URL`` (the fleet's, given to the one-off container), prints what it did and
exits 0; a bad argument exits 2, a database error 1. Each runs in one transaction, so a failure
changes nothing. The baseline table is v1's (created by the first server); both migrations
create it first when no server ever did, so they can run on an empty database too.
"""

import importlib
import os
import sys

BASELINE = ("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, sid text NOT NULL, "
            "item integer NOT NULL, item_name text NOT NULL, created timestamptz NOT NULL DEFAULT now())")
ADD_CURRENCY = "ALTER TABLE orders ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'EUR'"
MIGRATIONS = {
    "expand": [BASELINE, ADD_CURRENCY],
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
                print(f"migrate {argv[0]}: {statement}")
    except psycopg2.Error as exc:
        print(f"migrate {argv[0]}: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"migrate {argv[0]}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Issue 21's own-app figures: the README's alembic-orders commands, run once at 9 servers.

    .venv/bin/python bench/example_alembic.py [--out bench/EXAMPLE_ALEMBIC.md]

Builds the example's two images (examples/alembic-orders/build.sh: aiohttp + SQLAlchemy Core, schema
managed by Alembic), starts 9 servers of v1 with the project's PostgreSQL (`--service postgres`; the
servers bring the fresh database to Alembic's baseline revision 0001 themselves), rolls one-at-a-time to
v2 with `--migrate "alembic upgrade head"` (revision 0002, an expand v1 tolerates, run once in a one-off
v2 container before the first batch) under the default load on `/api/orders`, asks the fleet which
revision its database is at, then removes the fleet. Writes the rollout's figures (requests, dropped,
the migration's exit code and duration, the answers after it by version, the verdict) and Alembic's own
output under the provenance header.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from provenance import PY, header, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
REPOSITORY = "rolling-sandbox-example/alembic-orders"
IMAGES = (f"v1={REPOSITORY}:v1", f"v2={REPOSITORY}:v2")
MIGRATE = "alembic upgrade head"


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=3600)


def database_revision(port: int) -> str:
    """The revision the fleet's database is at, as a server answers `GET /` through the load balancer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return f"? ({exc})"
    return f"{answer.get('revision')} (answered by {answer.get('version')})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "EXAMPLE_ALEMBIC.md")
    parser.add_argument("--project", default="bench-alembic")
    parser.add_argument("--size", type=int, default=9)
    args = parser.parse_args()
    head = header("Your own app with a real migration tool: alembic-orders (issue 21)", "bench/example_alembic.py",
                  sys.argv[1:])
    build = run(["sh", "examples/alembic-orders/build.sh"])
    if build.returncode:
        print(f"build failed: {build.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    port = free_port()
    up = [*PY, "up", "--project", args.project, "--port", str(port), "--size", str(args.size), "--service",
          "postgres", "--health-path", "/ready", *(f for i in IMAGES for f in ("--image", i))]
    roll = [*PY, "roll", "--project", args.project, "--to", "v2", "--migrate", MIGRATE, "--path", "/api/orders",
            "--json"]
    try:
        started = run(up)
        if started.returncode:
            print(f"up failed: {started.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        before = database_revision(port)
        rolled = run(roll)
        after = database_revision(port)
    finally:
        run([*PY, "down", "--project", args.project])
    try:
        report = json.loads(rolled.stdout)
    except ValueError:
        print(f"roll gave no report (exit {rolled.returncode}): {rolled.stderr.strip()[-500:]}", file=sys.stderr)
        return 1
    failed = [c["name"] for c in report["verdict"]["checks"] if not c["pass"]]
    req = report["requests"]
    migration = report.get("migration") or {}
    [record] = [r for r in report.get("mixed_checks") or [] if r.get("name") == "migration"] or [{}]
    by_after = migration.get("by_version_after") or {}
    lines = [*head, "## The rollout", "", f"- {shown(up)}", f"- {shown(roll)} (exit {rolled.returncode})", "",
             "| servers | strategy | requests | dropped | migration exit | migration s | rollout s | verdict | "
             "failed checks |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {report.get('size')} | {report.get('strategy')} | {req['total']} | {req['dropped']} | "
             f"{migration.get('exit_code')} | {migration.get('duration_s')} | {report.get('duration_s')} | "
             f"{'PASS' if report['verdict']['pass'] else 'FAIL'} | {', '.join(failed) or '-'} |", "",
             *(f"- {c['name']} failed: value {c.get('value')}, limit {c.get('limit')}: {c.get('note')}"
               for c in report["verdict"]["checks"] if not c["pass"]), "",
             "Answers to the requests sent after the migration ended, by the version that served them "
             "(from NGINX's log; errors are 4xx/5xx answers):", "",
             "| version | answers | errors |", "| --- | --- | --- |",
             *(f"| {v} | {n.get('answers')} | {n.get('errors')} |" for v, n in by_after.items()), "",
             f"Database revision (`GET /` through the load balancer): before the roll {before}, after it {after}.",
             "", "## The migration's record (Alembic's own output, from the report)", "", "```",
             *(str(record.get("stdout_tail") or "").strip().splitlines()), "```", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

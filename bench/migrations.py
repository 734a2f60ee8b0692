"""Schema migrations in a rollout (issue 21), with numbers: what a migration does to the version still
serving, whether the requests are dropped, and whether a rollback would still work.

    .venv/bin/python bench/migrations.py [--size 9] [--out bench/MIGRATIONS.md]

One run per migration of the toy app's v2 (``app_v2/migrate.py``), each on a fresh fleet
(`up --size N --service postgres`: v1 keeping its orders in PostgreSQL), rolled v1 -> v2 with
one-at-a-time at the default load (20 users, think 50-200 ms, warmup and cooldown 3 s):

- "expand, then contract after": `--migrate 'python3 -m migrate expand' --contract 'python3 -m migrate
  contract'`: expand before the first batch, contract once every server is v2;
- "breaking": `--migrate 'python3 -m migrate breaking'` (renames item_name to title in one step).

Per run, from its report: the old version's (v1's) error answers to requests sent after the
migration ended (while it still served: the fleet was mixed), the requests dropped (no answer, or
a 5xx from the fleet), and the rollback rehearsals (``--rehearse-rollback``, default 4 s: v1's
image served against the database, off the load balancer, after the rollout and after the contract):
requests, errors, the first error, and whether a rollback works. Each fleet is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
RUNS = (
    ("expand, then contract after", ["--migrate", "python3 -m migrate expand",
                                     "--contract", "python3 -m migrate contract"]),
    ("breaking", ["--migrate", "python3 -m migrate breaking"]),
)


def run(args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def one(name: str, flags: list[str], size: int, report_dir: Path) -> dict[str, Any]:
    """One fresh fleet rolled with ``flags``; the figures of its report."""
    project, port = f"bmig{secrets.token_hex(3)}", free_port()
    up = [*PY, "up", "--project", project, "--size", str(size), "--port", str(port), "--service", "postgres"]
    roll = [*PY, "roll", "--project", project, "--to", "v2", "--strategy", "one-at-a-time", *flags, "--json",
            "--report", str(report_dir)]
    try:
        proc = run(up)
        if proc.returncode != 0:
            raise SystemExit(f"up failed: {proc.stderr.strip()[-2000:]}")
        proc = run(roll)
    finally:
        run([*PY, "down", "--project", project])
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise SystemExit(f"{name}: no report (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}") from exc
    after = report["migration"]["by_version_after"]
    old = after.get("v1", {"answers": 0, "errors": 0})
    return {"name": name, "up": up, "roll": roll, "exit": proc.returncode, "old": old,
            "after": after, "contract": report.get("contract"), "dropped": report["requests"]["dropped"],
            "total": report["requests"]["total"], "rehearsals": report.get("rollback_rehearsals") or [],
            "verdict": report["verdict"], "outcome": report["outcome"]}


def rollback_cell(rehearsals: list[dict[str, Any]]) -> str:
    """"before contract: yes; after contract: no" (or one answer without a contract step)."""
    if len(rehearsals) == 1:
        return str(rehearsals[0]["rollback_safe"])
    return "; ".join(f"{'before' if r['after'] == 'rollout' else 'after'} contract: {r['rollback_safe']}"
                     for r in rehearsals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=9, help="servers per fleet (default 9)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    head = header("Schema migrations in a rollout: expand/contract against a breaking change", "bench/migrations.py",
                  sys.argv[1:])  # before the runs: the commit, the tree and the load as they started
    with tempfile.TemporaryDirectory() as tmp:
        results = [one(name, flags, args.size, Path(tmp) / str(n)) for n, (name, flags) in enumerate(RUNS)]
    lines = [*head[:-1],
             f"- each fleet: {shown(results[0]['up'])} (a new project and port each run); each roll: "
             f"`sandbox roll --to v2 --strategy one-at-a-time FLAGS --json --report DIR` (default load: 20 users, "
             "think 50-200 ms, warmup and cooldown 3 s; default --rehearse-rollback 4 s)",
             "- old-version errors while mixed: v1's 4xx/5xx answers to requests sent after the migration "
             "ended (v1 served only while the fleet was mixed); dropped: requests with no answer or a 5xx, "
             "the run's figure; rollback works: the rehearsals of v1's image against the database, off the "
             "load balancer, after the rollout (and after the contract)", ""]
    lines += ["| migration | old-version errors while mixed | dropped | rollback after rollout works |",
              "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['old']['errors']} of {r['old']['answers']} v1 answers | "
                     f"{r['dropped']} of {r['total']} | {rollback_cell(r['rehearsals'])} |")
    lines += ["", "Each run in detail:", ""]
    for r in results:
        failed = [c["name"] for c in r["verdict"]["checks"] if not c["pass"]]
        lines += [f"### {r['name']}", "", f"- flags: {shown([a for a in r['roll'] if a not in ('--json',)][:-2])}",
                  f"- outcome {r['outcome']}, exit {r['exit']}; failed checks: {', '.join(failed) or 'none'}",
                  "- answers after the migration, by serving version: "
                  + ", ".join(f"{v} {n['errors']} errors of {n['answers']}" for v, n in r["after"].items())]
        if r["contract"]:
            c = r["contract"]
            lines.append(f"- contract step: {c['status']} (exit {c['exit_code']}, {c['duration_s']} s); answers "
                         "after it: " + (", ".join(f"{v} {n['errors']} errors of {n['answers']}"
                                                    for v, n in c["by_version_after"].items()) or "none"))
        for h in r["rehearsals"]:
            first = f"; first error: `{h['first_error']}`" if h.get("first_error") else ""
            lines.append(f"- rollback rehearsal after the {h['after']}: {h['version']} served {h['requests']} "
                         f"requests, {h['errors']} errors: rollback safe {h['rollback_safe']}{first}")
        lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()

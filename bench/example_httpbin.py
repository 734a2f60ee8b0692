"""Issue 8's figures for the example that is not ours: the README's httpbin commands, run once.

    .venv/bin/python bench/example_httpbin.py [--out bench/EXAMPLE.md]

Builds the two httpbin images (examples/httpbin/build.sh), starts 3 servers of 0.10.1, rolls to
0.10.2 under the README's traffic (`--path /delay/1 --path /delay/2 --path /get`, so requests of
1 to 2 s are in flight at every detach, and gunicorn is told to quit at once with SIGQUIT), then
removes the fleet. Writes the rollout's figures (requests, dropped, duration, verdict, every
drain: requests in flight at the detach and how long until none was) under the provenance header.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from provenance import PY, header, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("0.10.1=rolling-sandbox-example/httpbin:0.10.1", "0.10.2=rolling-sandbox-example/httpbin:0.10.2")


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)


def drains(report: dict[str, Any]) -> list[str]:
    """One table row per drain: the server, the load balancer's in-flight count for it when the
    drain began, the drain's length, whether it timed out, what it watched."""
    rows = []
    for e in report.get("steps") or []:
        if e.get("phase") == "drain":
            d = e.get("detail") or {}
            rows.append(f"| {e.get('instance')} | {d.get('in_flight', '-')} | {d.get('duration_s', '-')} | "
                        f"{d.get('timed_out', '-')} | {d.get('signal', '-')} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "EXAMPLE.md")
    parser.add_argument("--project", default="bench-httpbin")
    args = parser.parse_args()
    head = header("The httpbin example (issue 8)", "bench/example_httpbin.py", sys.argv[1:])
    build = run(["sh", "examples/httpbin/build.sh"])
    if build.returncode:
        print(f"build failed: {build.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    up = [*PY, "up", "--project", args.project, "--port", str(free_port()), "--size", "3", "--health-path",
          "/status/200", "--stop-signal", "SIGQUIT", *(f for i in IMAGES for f in ("--image", i))]
    roll = [*PY, "roll", "--project", args.project, "--path", "/delay/1", "--path", "/delay/2", "--path", "/get",
            "--slow-ms", "5000", "--json"]
    try:
        started = run(up)
        if started.returncode:
            print(f"up failed: {started.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        rolled = run(roll)
    finally:
        run([*PY, "down", "--project", args.project])
    report = json.loads(rolled.stdout)
    failed = [c["name"] for c in report["verdict"]["checks"] if not c["pass"]]
    req = report["requests"]
    lines = [*head, "## The rollout", "", f"- {shown(up)}", f"- {shown(roll)} (exit {rolled.returncode})", "",
             "| from | to | requests | dropped | duration s | verdict | failed checks | slow (> 5 s) | stall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {report.get('from_version')} | {report.get('to_version')} | {req['total']} | {req['dropped']} | "
             f"{report.get('duration_s')} | {'PASS' if report['verdict']['pass'] else 'FAIL'} | "
             f"{', '.join(failed) or '-'} | {req.get('slow', '-')} | {report.get('stall_s', '-')} |", "",
             "Answers by version: " + ", ".join(f"{v} {n}" for v, n in sorted(req.get("by_version", {}).items())
                                                if n or v == "unknown"),
             f"(attributed from: {report.get('attribution')})", "",
             "## Drains (the load balancer's in-flight count, not the app's)", "",
             "| server | in flight when the drain began | drain s | timed out | signal |",
             "| --- | --- | --- | --- | --- |",
             *drains(report), ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

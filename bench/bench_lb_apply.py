"""Benchmark: --lb-apply dynamic against reload, client keep-alive on (issue 10 figures; not a test).

For each mode: ``up --size N --lb-apply MODE`` (client keep-alive on, the default), then the
latency of one change of the attached set (detach one server, attach it again, timed from the
controller's ``Balancer.apply`` call to its return, no load), then ``roll`` one-at-a-time with
``--users U`` and no think time; prints dropped, requests per second during the rollout and the
rollout's duration. Each mode uses its own project (lbbench-<mode>) and removes it afterwards.

    .venv/bin/python bench/bench_lb_apply.py [--size 9] [--users 100] [--changes 20] [--no-auto-rollback]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sandbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)


async def apply_latency_ms(project: str, port: int, changes: int) -> list[float]:
    """Time ``changes`` set changes (detach the first server, then attach it again, in turn)."""
    from sandbox.fleet.balancer import NginxBalancer
    from sandbox.fleet.runtime import DockerEngine

    balancer = NginxBalancer(DockerEngine.connect(), project, port)
    full = list((await balancer.load()).upstreams)
    times = []
    for i in range(changes):
        t0 = time.perf_counter()
        await balancer.apply(full[1:] if i % 2 == 0 else full)
        times.append((time.perf_counter() - t0) * 1000)
    if len(balancer.state.upstreams) != len(full):
        await balancer.apply(full)
    return times


def run(mode: str, size: int, users: int, changes: int, extra: list[str]) -> dict[str, Any]:
    project, port = f"lbbench-{mode}", free_port()
    sandbox("down", "--project", project)
    proc = sandbox("up", "--project", project, "--size", str(size), "--port", str(port), "--lb-apply", mode)
    if proc.returncode:
        raise SystemExit(f"up failed: {proc.stderr}")
    try:
        times = asyncio.run(apply_latency_ms(project, port, changes))
        proc = sandbox("roll", "--project", project, "--to", "v2", "--strategy", "one-at-a-time",
                       "--users", str(users), "--think-ms", "0", "--json", *extra)
        report = json.loads(proc.stdout)
    finally:
        sandbox("down", "--project", project)
    drains = [s for s in report["steps"] if s["phase"] == "drain"]
    readies = [s for s in report["steps"] if s["phase"] == "ready"]
    return {
        "lb_apply": mode,
        "client_keepalive_s": report.get("client_keepalive_s"),
        "apply_ms_median": round(statistics.median(times), 1),
        "apply_ms_max": round(max(times), 1),
        "outcome": report["outcome"],
        "duration_s": report["duration_s"],
        "rps_rollout": report["phases"]["rollout"]["rps"],
        "requests": report["requests"]["total"],
        "dropped": report["requests"]["dropped"],
        "dropped_rollout": report["phases"]["rollout"]["dropped"],
        "p99_ms": report["latency_ms"]["p99"],
        "drain_s_max": max((float(s["detail"]["duration_s"]) for s in drains), default=None),
        "drains_timed_out": sum(1 for s in drains if s["detail"].get("timed_out")),
        "first_ok_s_max": max((float(s["detail"].get("first_ok_s") or 0) for s in readies), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--modes", default="dynamic,reload")
    parser.add_argument("--no-auto-rollback", action="store_true",
                        help="roll on whatever drops (reload mode otherwise rolls back on its drops)")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        extra = ["--no-auto-rollback", "--max-error-ratio", "1"] if args.no_auto_rollback else []
        print(json.dumps(run(mode, args.size, args.users, args.changes, extra)), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: rollouts of 9 servers under load (issue figures; not a test).

For one-at-a-time, rolling with batch 3 and double-half it reports the rollout's duration, the
sum of the waits no controller can avoid (per batch: the longest time from starting or swapping
a server to its first passing health check, plus the longest drain until nothing was in flight),
their ratio (the controller's overhead), the requests per second held during the rollout and the
dropped requests. With --max-rate it also looks for the highest request rate at which
one-at-a-time still drops nothing.

    .venv/bin/python bench/bench_rollout.py [--size 9] [--users 20] [--max-rate]

Each run uses its own project (bench-<n>) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def sandbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)


def run(n: int, size: int, users: int, strategy: list[str], env: dict[str, str], set_env: list[str]) -> dict[str, Any]:
    project = f"bench-{n}"
    sandbox("down", "--project", project)
    up_args = ["up", "--project", project, "--size", str(size), "--port", str(free_port())]
    for pair in set_env:
        up_args += ["--env", pair]
    proc = sandbox(*up_args)
    if proc.returncode:
        raise SystemExit(f"up failed: {proc.stderr}")
    try:
        roll_args = ["roll", "--project", project, "--to", "v2", *strategy, "--users", str(users), "--json"]
        for pair in set_env:
            roll_args += ["--set-env", pair]
        proc = sandbox(*roll_args, env=env)
        report = json.loads(proc.stdout)
    finally:
        sandbox("down", "--project", project)
    duration = float(report["duration_s"])
    floor = report.get("unavoidable_s") or 0.0  # sandbox.results.overhead, in every report
    return {
        "strategy": " ".join(strategy),
        "duration_s": round(duration, 2),
        "unavoidable_s": round(floor, 2),
        "ratio": report.get("overhead_ratio"),
        "rps_rollout": report["phases"]["rollout"]["rps"],
        "requests": report["requests"]["total"],
        "dropped": report["requests"]["dropped"],
        "stall_s": report["stall_s"],
        "peak_instances": report["peak_instances"],
        "outcome": report["outcome"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--set-env", action="append", default=[],
                        help="app environment for both versions, e.g. APP_STARTUP_DELAY=3")
    parser.add_argument("--max-rate", action="store_true", help="also search the highest zero-drop rate")
    args = parser.parse_args()
    rows = []
    for n, strategy in enumerate([["--strategy", "one-at-a-time"], ["--strategy", "rolling", "--batch", "3"],
                                  ["--strategy", "double-half"]], start=1):
        rows.append(run(n, args.size, args.users, strategy, {}, args.set_env))
        print(json.dumps(rows[-1]), flush=True)
    if args.max_rate:
        for users in (10, 25, 50, 100, 200):
            row = run(10 + users, args.size, users, ["--strategy", "one-at-a-time", "--think-ms", "0-10"], {},
                      args.set_env)
            row["users"] = users
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

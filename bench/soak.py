"""Soak: N consecutive rollouts under load on one fleet (issue 9 figures; not a test).

Alternates v1 -> v2 -> v1 ..., the strategies in turn, each roll under live Locust traffic; prints
one line per rollout, then the totals (requests, dropped, stall seconds, verdicts) and the
containers, networks and volumes on the engine before and after (the project is removed at the end).
With --out FILE the same is written there as Markdown, headed by the command, the commit and the
machine's load (bench/SOAK.md is committed from such a run).

    .venv/bin/python bench/soak.py [-n 100] [--size 3] [--load light|default] [--project soak] [--out bench/SOAK.md]

``--load light`` (the default, as every committed soak before issue 18) runs 10 users with 1 s of warm-up and
cooldown: too few warm-up answers for the latency check, which is then SKIP. ``--load default`` passes no load
flag at all, so each roll runs `sandbox roll`'s own defaults (20 users, 3 s warm-up) and the p99 check is judged;
the totals count how that check ended (``p99_ratio``: PASS / SKIP / FAIL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
from provenance import header as provenance_header  # bench/provenance.py (this script's directory)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sandbox.fleet import labels as L  # noqa: E402  (after the repo is on the path)

STRATEGIES = (("one-at-a-time",), ("rolling", "--batch", "2"), ("surge", "--batch", "1"), ("double-half",),
              ("blue-green",), ("one-at-a-time", "--mode", "in-place"))


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def engine_counts(client: docker.DockerClient, filters: dict[str, Any] | None = None) -> dict[str, int]:
    """Containers, networks, volumes on the engine (shared: other projects count too), or the project's."""
    api = client.api  # one listing call each: the shared engine's objects come and go meanwhile
    return {"containers": len(api.containers(all=True, filters=filters)),
            "networks": len(api.networks(filters=filters)),
            "volumes": len((api.volumes(filters=filters) or {}).get("Volumes") or [])}


def one_roll(i: int, args: argparse.Namespace) -> dict[str, Any]:
    target = "v2" if i % 2 == 0 else "v1"
    strategy = STRATEGIES[i % len(STRATEGIES)]
    load = ["--users", str(args.users), "--warmup", "1", "--cooldown", "1"] if args.load == "light" else []
    load1 = round(os.getloadavg()[0], 2)  # the machine's 1-minute load average as this roll starts
    proc = sandbox("roll", "--project", args.project, "--to", target, "--strategy", *strategy, *load, "--json")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return {"n": i + 1, "to": target, "strategy": " ".join(strategy), "load1": load1,
                "error": proc.stderr.strip()[-200:]}
    return {"n": i + 1, "to": target, "strategy": " ".join(strategy), "load1": load1, "outcome": report["outcome"],
            "requests": report["requests"]["total"], "dropped": report["requests"]["dropped"],
            "stall_s": report.get("stall_s") or 0.0, "verdict": "PASS" if report["verdict"]["pass"] else "FAIL",
            "failed_checks": [c["name"] for c in report["verdict"]["checks"] if not c["pass"]],
            "p99": p99_status(report)}


def p99_status(report: dict[str, Any]) -> str:
    """How the latency check ended: its status, with the two p99s when it was judged."""
    for check in report["verdict"]["checks"]:
        if check["name"] == "p99_ratio":
            judged = check.get("rollout_p99_ms") is not None and check.get("status") != "SKIP"
            return (f"{check.get('status')} {check.get('steady_p99_ms')}->{check.get('rollout_p99_ms')} ms" if judged
                    else str(check.get("status")))
    return "absent"


def header() -> list[str]:
    return provenance_header("Soak results (issue 9)", "bench/soak.py", sys.argv[1:],
                             ["engine_before/engine_after count everything on the engine (other projects too);"
                              " project_left_after_down counts this project only"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="rollouts (default 100)")
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--load", choices=("light", "default"), default="light",
                    help="light: 10 users, 1 s warm-up/cooldown (p99 check SKIP); default: roll's own defaults")
    ap.add_argument("--users", type=int, default=10, help="users with --load light")
    ap.add_argument("--port", type=int, default=18990)
    ap.add_argument("--project", default="soak")
    ap.add_argument("--out", type=Path, help="also write the results here as Markdown")
    args = ap.parse_args()
    head = header()
    t0 = time.monotonic()
    client = docker.from_env()
    if any(engine_counts(client, L.project_filter(args.project)).values()):
        print(f"project {args.project!r} exists already: choose another --project", file=sys.stderr)
        return 2
    before = engine_counts(client)
    up = sandbox("up", "--project", args.project, "--size", str(args.size), "--port", str(args.port))
    if up.returncode != 0:
        print(f"up failed: {up.stderr.strip()}", file=sys.stderr)
        return 2
    runs = []
    try:
        for i in range(args.n):
            runs.append(one_roll(i, args))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        sandbox("down", "--project", args.project)
    after = engine_counts(client)
    verdicts = Counter(r.get("verdict", "error") for r in runs)
    totals = json.dumps({
        "rollouts": len(runs), "requests": sum(r.get("requests", 0) for r in runs),
        "dropped": sum(r.get("dropped", 0) for r in runs),
        "stall_s_total": round(sum(r.get("stall_s", 0.0) for r in runs), 3),
        "stall_s_max": max((r.get("stall_s", 0.0) for r in runs), default=0.0),
        "verdicts": dict(verdicts),
        "p99_ratio": dict(Counter(str(r.get("p99", "error")).split()[0] for r in runs)),
        "load1_min_max": [min((r["load1"] for r in runs), default=None), max((r["load1"] for r in runs), default=None)],
        "p99_rollout_ms_max": max((float(r["p99"].split("->")[1].split()[0]) for r in runs
                                   if "->" in str(r.get("p99", ""))), default=None),
        "outcomes": dict(Counter(r.get("outcome", "error") for r in runs)),
        "engine_before": before, "engine_after": after,
        "project_left_after_down": engine_counts(client, L.project_filter(args.project)),
        "minutes": round((time.monotonic() - t0) / 60, 1),
    }, indent=2)
    print(totals)
    if args.out:
        args.out.write_text("\n".join([*head, "## Totals", "", "```json", totals, "```", "",
                                        "## Each rollout", "", "```", *map(json.dumps, runs), "```", ""]))
    return 0 if verdicts.get("PASS", 0) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())

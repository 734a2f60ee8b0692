"""The canary strategy (issue 22), with numbers: the share of answers each weight gets, and how far a
breaking new version reaches under canary against one-at-a-time.

    .venv/bin/python bench/canary.py [--step-pause 30s] [--out bench/CANARY.md]

One 9-server toy fleet (`up --size 9`, dynamic load balancer), four rollouts, each from v1:

1. `roll --strategy canary --steps 5,25,50,100` at the default load (20 users, think 50-200 ms):
   per step, the share of answers from v2 over the step's window against its weight, with the
   statistical bound for the answers counted (3 standard deviations of a binomial share:
   3 x sqrt(w (1 - w) / n)); the run's dropped requests;
2. the same with `--sticky-canary` and 100 users at think 500-1000 ms (about the default load's
   request rate, spread over more users: a sticky share is a share of users, and with 20 users
   the 5 % step gets no user at all about one time in three, 0.95^20): the downgrades (answers
   from v1 to a user after a v2 one);
3. and 4. `--v2-mode breaking` (v2 renames a JSON field the v1 clients read) under canary with
   `--sticky-canary`, then under one-at-a-time, each with the same 100 users: where each stopped,
   and the share of users who met a failure (a dropped request or an answer that broke their
   contract: `users_failed_share` in the report's exposure figures).

Between two rollouts the fleet goes back to v1 with no load (`roll --to v1 --strategy double-half
--no-load`) when it is not there already.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
STEPS = "5,25,50,100"
BREAKING_LOAD = ["--users", "100", "--think-ms", "500-1000"]


def run(args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def roll(project: str, extra: list[str]) -> tuple[list[str], dict[str, Any], int]:
    args = [*PY, "roll", "--project", project, "--to", "v2", "--json", *extra]
    proc = run(args)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"{shown(args)} exited {proc.returncode}, no report:\n{proc.stderr[-3000:]}") from None
    return args, report, proc.returncode


def back_to_v1(project: str) -> list[str]:
    status = json.loads(run([*PY, "status", "--project", project, "--json"]).stdout)
    args = [*PY, "roll", "--project", project, "--to", "v1", "--strategy", "double-half", "--no-load"]
    if {i["version"] for i in status["instances"]} != {"v1"} and run(args).returncode != 0:
        raise SystemExit("the roll back to v1 failed")
    return args


def bound_pp(weight: int, answers: int) -> float | None:
    """3 standard deviations of a share ``weight`` % measured over ``answers`` answers, in points."""
    if not answers or weight >= 100:
        return None
    w = weight / 100
    return round(300 * math.sqrt(w * (1 - w) / answers), 2)


def share_rows(report: dict[str, Any], users: int | None = None) -> list[str]:
    """One row per step; the bound over ``users`` when given (a sticky share is a share of users, each
    user's requests going to one version), else over the answers."""
    rows = []
    for step in report.get("canary", []):
        new = sum(step["samples"].get(v, 0) for v in ("v2",))
        total = sum(step["samples"].values())
        share = step["observed_share"]
        diff = None if share is None else round(100 * share - step["weight"], 2)
        bound = bound_pp(step["weight"], users or total)
        allowed = max(2.0, bound or 0.0)
        within = "-" if diff is None or step["weight"] >= 100 else ("yes" if abs(diff) <= allowed else "NO")
        rows.append(f"| {step['step']} | {step['weight']} % | {'-' if share is None else f'{100 * share:.2f} %'} "
                    f"| {new} of {total} | {'-' if diff is None else f'{diff:+.2f}'} | "
                    f"{'-' if bound is None else f'{bound:.2f}'} | {within} | {step['extensions']} | "
                    f"{step['status']} |")
    return rows


def breaking_row(name: str, report: dict[str, Any], code: int) -> str:
    exp = report["exposure"]
    steps = report.get("canary", [])
    failed = next((s for s in steps if s["status"] == "failed"), None)
    where = (f"step {failed['step']} ({failed['weight']} %): {failed['reason']}" if failed else
             "ran to the end" if report["outcome"] == "completed" else report["outcome"])
    share = exp.get("users_failed_share")
    return (f"| {name} | {report['outcome']} (exit {code}) | {where} | {exp['users_failed']} of {exp['users_total']} "
            f"({'-' if share is None else f'{100 * share:.0f} %'}) | {exp['contract_violations']} | "
            f"{report['requests']['dropped']} |")


def failed_checks(report: dict[str, Any]) -> str:
    failed = [c for c in report["verdict"]["checks"] if not c["pass"]]
    return ", ".join(f"{c['name']} {c['value']} (limit {c['limit']})" for c in failed) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-pause", default="30s", help="--step-pause of the canary rollouts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    project, port = f"bcanary{secrets.token_hex(3)}", free_port()
    up = [*PY, "up", "--project", project, "--size", "9", "--port", str(port)]
    canary = ["--strategy", "canary", "--steps", STEPS, "--step-pause", args.step_pause]
    try:
        if run(up).returncode != 0:
            raise SystemExit("up failed")
        healthy_args, healthy, healthy_code = roll(project, canary)
        back = back_to_v1(project)
        sticky_args, sticky, sticky_code = roll(project, [*canary, "--sticky-canary", *BREAKING_LOAD])
        back_to_v1(project)
        broken_args, broken, broken_code = roll(project, [*canary, "--sticky-canary", "--v2-mode", "breaking",
                                                          *BREAKING_LOAD])
        back_to_v1(project)
        one_args, one, one_code = roll(project, ["--strategy", "one-at-a-time", "--v2-mode", "breaking",
                                                 *BREAKING_LOAD])
    finally:
        run([*PY, "down", "--project", project])
    lines = header("The canary: shares by weight, and a breaking v2", "bench/canary.py", sys.argv[1:], [
        f"fleet: {shown(up)} (dynamic load balancer); between two rollouts, back to v1 with {shown(back)}",
        f"1. {shown(healthy_args)} (default load: 20 users, think 50-200 ms)",
        "share: answers from v2 of all answers over the step's window (from its weight being set to the "
        "end of its hold); bound: 3 standard deviations of a binomial share of that many answers, "
        "3 x sqrt(w (1 - w) / n), in percentage points; within: |share - weight| <= max(2, bound)"])
    lines += ["| step | weight | share of answers from v2 | v2 answers of all | share - weight (points) "
              "| bound (points) | within | extended | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *share_rows(healthy), "",
              f"- outcome {healthy['outcome']} (exit {healthy_code}; verdict checks failed: "
              f"{failed_checks(healthy)}); requests {healthy['requests']['total']}, "
              f"dropped {healthy['requests']['dropped']}; peak containers {healthy['peak_instances']}", "",
              f"2. {shown(sticky_args)} (bound: over the {sticky['exposure']['users_total']} users, not the "
              "answers: a sticky user's requests all go to one version)", "",
              "| step | weight | share of answers from v2 | v2 answers of all | share - weight (points) "
              "| bound (points) | within | extended | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              *share_rows(sticky, users=sticky["exposure"]["users_total"]), "",
              f"- outcome {sticky['outcome']} (exit {sticky_code}; verdict checks failed: {failed_checks(sticky)}); "
              f"downgrades "
              f"{sticky['exposure']['downgrades']} ({sticky['exposure']['users_downgraded']} users); requests "
              f"{sticky['requests']['total']}, dropped {sticky['requests']['dropped']}; users who met v2 "
              f"{sticky['exposure']['users_saw_both']} of {sticky['exposure']['users_total']} (a sticky share "
              "moves by whole users: 1 point each here)", "",
              "3. and 4. a breaking v2:", "", f"- canary: {shown(broken_args)}", f"- one-at-a-time: {shown(one_args)}",
              "", "| strategy | outcome | stopped at | users who met a failure | contract violations | dropped |",
              "| --- | --- | --- | --- | --- | --- |",
              breaking_row("canary, --sticky-canary", broken, broken_code),
              breaking_row("one-at-a-time", one, one_code)]
    publish(lines, args.out)


if __name__ == "__main__":
    main()

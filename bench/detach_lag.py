"""Issue 19's endpoint-removal race with numbers: `roll --detach-lag` against the toy app's stop switches.

    .venv/bin/python bench/detach_lag.py [--out bench/DETACH_LAG.md]

Each case is its own 3-server toy fleet (`up --size 3 --env ...`), rolled v1 -> v2 once at the
default load (20 users, think 50-200 ms, warmup and cooldown 3 s) with `--max-error-ratio 1` (so no
case is cut short by an automatic rollback), then removed. The stop switch is on the v1 servers,
the ones the rollout stops:

- exit at once on SIGTERM (`APP_STOP_MODE=exit-now`) with `--detach-lag 2`: the load balancer keeps
  routing to a server that is gone for 2 s, so requests drop;
- the fix doctor recommends for that app, its `pre_stop_sleep_s` of 5 s (what a Kubernetes
  `preStop: sleep 5` does): the app keeps serving 5 s after SIGTERM (`APP_STOP_DELAY=5`), same lag;
- the same exit-at-once app without the lag (the sandbox detaches before it signals);
- the toy app as the sandbox's fleets run it (`APP_STOP_DELAY=0`: at SIGTERM it closes its listener
  and finishes what is in flight, as most servers' graceful shutdown does) with the 2 s lag.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    what: str
    env: tuple[str, ...]  # the v1 servers' (the ones stopped)
    lag: float


CASES = (Case("exits at once on SIGTERM", ("APP_STOP_MODE=exit-now",), 2),
         Case("the fix: keeps serving 5 s after SIGTERM (doctor's pre_stop_sleep_s)", ("APP_STOP_DELAY=5",), 2),
         Case("exits at once on SIGTERM, no lag", ("APP_STOP_MODE=exit-now",), 0),
         Case("graceful, closes its listener at SIGTERM (the fleet's default)", (), 2))


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)


def row(case: Case, up: list[str], roll: list[str], proc: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The table row and the commands' bullet for one case."""
    commands = f"- {case.what}: {shown(up)}, then {shown(roll)} (exit {proc.returncode})"
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"| {case.what} | {case.lag:g} | - | - | - | no report: {tail[0]} |", commands
    req = report["requests"]
    stops = [s.get("detail", {}).get("exit_code") for s in report.get("steps", []) if s.get("phase") == "stop"]
    died = sum(1 for f in report.get("faults") or [] if f.get("fault") == "died")
    verdict = "PASS" if report["verdict"]["pass"] else "FAIL"
    return (f"| {case.what} | {case.lag:g} | {req['total']} | {req['dropped']} | "
            f"{died} of {len(stops)}; exit codes {', '.join(str(c) for c in stops) or '-'} | "
            f"{verdict} ({report.get('outcome')}) |"), commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results here too (bench/DETACH_LAG.md)")
    parser.add_argument("--project", default="bench-lag")
    args = parser.parse_args()
    head = header("The endpoint-removal race: roll --detach-lag on a toy fleet (issue 19)", "bench/detach_lag.py",
                  sys.argv[1:], ["3 servers, v1 -> v2 one at a time, the default load; each case run once"])
    rows, commands = [], []
    for n, case in enumerate(CASES):
        project = f"{args.project}-{n}"
        up = [*PY, "up", "--project", project, "--port", str(free_port()), "--size", "3",
              *(f for e in case.env for f in ("--env", e))]
        roll = [*PY, "roll", "--project", project, "--to", "v2", "--detach-lag", f"{case.lag:g}",
                "--max-error-ratio", "1", "--json"]
        try:
            started = run(up)
            if started.returncode:
                print(f"up failed: {started.stderr.strip()[-300:]}", file=sys.stderr)
                return 1
            line, said = row(case, up, roll, run(roll))
        finally:
            run([*PY, "down", "--project", project])
        rows.append(line)
        commands.append(said)
    lines = [*head, "| v1 servers (the ones stopped) | detach lag s | requests | dropped | "
             "exited while still attached; stop exit codes | verdict (outcome) |",
             "| --- | --- | --- | --- | --- | --- |", *rows, "", "Commands:", "", *commands, ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

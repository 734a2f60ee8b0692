"""Issue 9's compare table in one run of one commit, written to bench/COMPARE.md.

    .venv/bin/python bench/compare_matrix.py                               # 9 servers, the real figures
    .venv/bin/python bench/compare_matrix.py --quick --out /tmp/COMPARE.md  # 3 servers, short: a smoke run

One `sandbox compare --json` for each of v2 `compatible` and `breaking` (`--v2-mode`) x `--sessions
memory` and `shared` (one Redis container per fleet): compare's default strategies on 9 servers
under compare's default load (20 users, 3 s warmup and cooldown). Each combination has its own
project (`<prefix>-<v2>-<sessions>`, whose fleets compare names `-1`, `-2`, ...) and port, and is
removed afterwards; the file says what was left. The file is headed by the command, the commit,
the date, the machine and its load average, then one table per combination with its exact command,
then the exposure figures side by side. Exits 0 when every combination gave its table and left
nothing behind (a verdict that fails is a figure, not an error: a breaking v2 fails by design),
1 otherwise, 2 when a project it would use exists already.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from provenance import PY, header, shown  # bench/provenance.py (this script's directory)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sandbox.config import PROJECT_RE  # noqa: E402
from sandbox.fleet import labels as L  # noqa: E402  (after the repo is on the path)
from sandbox.ports import free_port  # noqa: E402  (the editable install, or the repo on the path)
from sandbox.rollout import strategies  # noqa: E402

V2_MODES = ("compatible", "breaking")
SESSIONS = ("memory", "shared")


@dataclass(frozen=True)
class Plan:
    """What one run measures (--quick shrinks it)."""

    size: int = 9
    strategies: str = "one-at-a-time,rolling:3,double-half,blue-green,naive"  # compare's default, named
    load: tuple[str, ...] = ()  # compare's defaults: 20 users, 3 s warmup, 3 s cooldown
    load_note: str = "compare's defaults (20 users, 3 s warmup, 3 s cooldown)"

    @property
    def n_strategies(self) -> int:
        return len(self.strategies.split(","))


FULL = Plan()
QUICK = Plan(size=3, strategies="one-at-a-time,blue-green,naive",
             load=("--users", "10", "--warmup", "2", "--cooldown", "2"),
             load_note="10 users, 2 s warmup, 2 s cooldown")


@dataclass
class Combo:
    """One `sandbox compare` of the matrix and what came of it."""

    v2_mode: str
    sessions: str
    project: str
    command: str = ""
    exit_code: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    left: list[str] = field(default_factory=list)  # objects still labelled with its projects afterwards
    minutes: float = 0.0

    @property
    def title(self) -> str:
        return f"v2 {self.v2_mode}, sessions {self.sessions}"


def fleet_projects(project: str, n_strategies: int) -> list[str]:
    """The project and the fleets compare makes of it (`<project>-1` ... `<project>-n`)."""
    return [project, *(f"{project}-{n}" for n in range(1, n_strategies + 1))]


def labelled(client: docker.DockerClient, project: str) -> list[str]:
    """Names of the containers, networks and volumes carrying this project's labels."""
    f = L.project_filter(project)
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=f)]
            + [f"network {n.name}" for n in client.networks.list(filters=f)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=f)])


def compare_args(plan: Plan, project: str, port: int, v2_mode: str, sessions: str, report: Path) -> list[str]:
    return [*PY, "compare", "--project", project, "--port", str(port), "--size", str(plan.size),
            "--strategies", plan.strategies, "--v2-mode", v2_mode, "--sessions", sessions, *plan.load,
            "--json", "--report", str(report)]


def run_compare(args: Sequence[str]) -> tuple[int | None, list[dict[str, Any]], str | None]:
    """Exit code, the table's rows, and what went wrong when there is no table."""
    try:
        proc = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        return None, [], "still running after 3600 s, stopped"
    try:
        return proc.returncode, list(json.loads(proc.stdout)["rows"]), None
    except (ValueError, KeyError, TypeError):
        tail = proc.stderr.strip().splitlines()[-1:]
        return proc.returncode, [], f"no JSON table on stdout; stderr ends: {' '.join(tail) or '(nothing)'}"


def run_combo(client: docker.DockerClient, plan: Plan, combo: Combo, reports: Path) -> None:
    """One compare; its fleets are removed afterwards whatever happened, and what is left is named."""
    args = compare_args(plan, combo.project, free_port(), combo.v2_mode, combo.sessions,
                        reports / f"{combo.v2_mode}-{combo.sessions}")
    combo.command = shown(args)
    print(f"compare-matrix: {combo.title}: {combo.command}", flush=True)
    t0 = time.monotonic()
    try:
        combo.exit_code, combo.rows, combo.error = run_compare(args)
    finally:
        for name in fleet_projects(combo.project, plan.n_strategies):
            if labelled(client, name):
                subprocess.run([*PY, "down", "--project", name], cwd=REPO, capture_output=True, timeout=600)
            combo.left += labelled(client, name)
    combo.minutes = (time.monotonic() - t0) / 60


# -- the file ---------------------------------------------------------------------------------------
COLUMNS = ("strategy", "verdict", "failed checks", "requests", "dropped", "duration_s",
           "users_saw_both (share)", "downgrades", "sessions_lost", "contract_violations",
           "users_exposed_share", "requests_exposed_share")


def pct(share: Any) -> str:
    return "-" if share is None else f"{100 * float(share):.1f} %"


def num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def label(row: dict[str, Any]) -> str:
    """`rolling:3` as compare was asked; a strategy without a batch (or of batch 1) by its name alone."""
    return strategies.of(str(row.get("strategy"))).label(row.get("batch"))


def cells(row: dict[str, Any]) -> list[str]:
    saw_both = f"{num(row.get('users_saw_both'))} of {num(row.get('users_total'))}"
    return [label(row), "PASS" if row.get("pass") else "FAIL", ", ".join(row.get("failed_checks") or []) or "-",
            num(row.get("requests")), num(row.get("dropped")), num(row.get("duration_s")),
            f"{saw_both} ({pct(row.get('users_saw_both_share'))})",
            num(row.get("downgrades")), num(row.get("sessions_lost")), num(row.get("contract_violations")),
            pct(row.get("users_exposed_share")), pct(row.get("requests_exposed_share"))]


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def combo_section(combo: Combo) -> list[str]:
    lines = [f"## {combo.title}", "", combo.command, ""]
    if combo.error is not None:
        lines += [f"No table: the command exited {combo.exit_code} and gave no report ({combo.error}).", ""]
    else:
        lines += [*md_table(COLUMNS, [cells(r) for r in combo.rows]), ""]
        lines.append(f"Exit code {combo.exit_code} (1 when a strategy other than naive failed its verdict); "
                     f"{combo.minutes:.1f} minutes.")
    lines += [f"Left after `down`: {', '.join(combo.left) if combo.left else 'nothing'}.", ""]
    return lines


def side_by_side(combos: Sequence[Combo]) -> list[str]:
    """Per strategy, users_saw_both and sessions_lost in each combination: what tells them apart."""
    order = list(dict.fromkeys(label(r) for c in combos for r in c.rows))
    by = {(c.title, label(r)): r for c in combos for r in c.rows}
    rows = [[s, *(f"{num(by[c.title, s].get('users_saw_both'))} / {num(by[c.title, s].get('sessions_lost'))}"
                  if (c.title, s) in by else "-" for c in combos)] for s in order]
    return ["## users_saw_both / sessions_lost side by side", "",
            *md_table(["strategy", *(c.title for c in combos)], rows), ""]


MEANINGS = [
    "## What the columns mean", "",
    "From each strategy's report (README, \"What the numbers mean\"): `requests` every request the load "
    "generator started; `dropped` those with no successful answer; `duration_s` the rollout from its first "
    "step to its last; *window* figures count only requests sent within the rollout window (first to last "
    "change of the load balancer's servers): `users_saw_both` users answered by both versions (share of all "
    "users), `downgrades` answers from the old version after the new one; `sessions_lost` users whose "
    "session, in use during the rollout, died with its server; `contract_violations` answers that broke the "
    "API a user expected; `users_exposed_share` and `requests_exposed_share` the users and requests sent "
    "while both versions were attached. `failed checks` names the verdict's checks that failed (a breaking "
    "v2 fails `contract_violations` by design; naive drops by design).", ""]


def document(head: Sequence[str], combos: Sequence[Combo], minutes: float) -> str:
    body = [line for combo in combos for line in combo_section(combo)]
    return "\n".join([*head, *body, *side_by_side(combos), *MEANINGS,
                      f"The whole run took {minutes:.1f} minutes.", ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 servers, 3 strategies, short load (a smoke run)")
    parser.add_argument("--out", type=Path, help="where to write the tables (default bench/COMPARE.md; "
                                                 "with --quick, reports/compare-matrix/COMPARE-quick.md)")
    parser.add_argument("--prefix", default="cmpmx", help="project name prefix (default cmpmx)")
    parser.add_argument("--reports", type=Path, default=Path("reports") / "compare-matrix",
                        help="compare's report directories go under this one (default reports/compare-matrix, "
                             "from where you are)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (REPO / "reports" / "compare-matrix" / "COMPARE-quick.md" if args.quick
                       else REPO / "bench" / "COMPARE.md")
    longest = f"{args.prefix}-compatible-memory-{plan.n_strategies}"
    if not PROJECT_RE.match(longest):
        print(f"prefix: {args.prefix!r} must be letters, digits or dashes, short enough that {longest!r} "
              "is a project name (at most 40)", file=sys.stderr)
        return 2
    client = docker.from_env(timeout=120)
    combos = [Combo(v2, sessions, f"{args.prefix}-{v2}-{sessions}") for v2 in V2_MODES for sessions in SESSIONS]
    taken = [p for c in combos for p in fleet_projects(c.project, plan.n_strategies) if labelled(client, p)]
    if taken:
        print(f"project {taken[0]!r} exists already: choose another --prefix", file=sys.stderr)
        return 2
    head = header("Compare matrix (issue 9)", "bench/compare_matrix.py", argv,
                  [f"{plan.size} servers per fleet; strategies {plan.strategies}; load: {plan.load_note}",
                   "each table is one `sandbox compare` (each strategy on a fresh fleet of its own), run one after "
                   "the other in this order on the same engine"])
    reports = args.reports.resolve()  # compare runs in the repo: show the path from there when it is inside
    reports = reports.relative_to(REPO) if reports.is_relative_to(REPO) else reports
    t0 = time.monotonic()
    for combo in combos:
        run_combo(client, plan, combo, reports)
        print("\n".join(combo_section(combo)), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document(head, combos, (time.monotonic() - t0) / 60))
    print(f"wrote {out}", flush=True)
    return 0 if all(c.error is None and not c.left for c in combos) else 1


if __name__ == "__main__":
    sys.exit(main())

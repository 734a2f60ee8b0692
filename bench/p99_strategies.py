"""A booting server's cost to the serving ones, before and after a change (issue 18, section 1).

    .venv/bin/python bench/p99_strategies.py [--pairs 3] [--wrk-pairs 3] [--size 9] [--out FILE] [REPO ...]

For each checkout given (default: this one), and in each of ``--pairs`` rounds: one rollout of
``--size`` servers at the default load with one-at-a-time, rolling --batch 3 and double-half,
each on a fresh fleet; p99 in the warm-up (steady), p99 during the rollout, and their ratio. Then
``--wrk-pairs`` rounds of wrk at capacity (``-t2 -c50``): an 8 s window on the steady fleet, then
an 8 s window from the start of a one-at-a-time ``--no-load`` rollout; the ratio of their rates.

The checkouts take turns run by run (A B, then B A, ...), so other work on a shared machine
weighs on both alike; the table gives each checkout's median and spread (min-max). Each checkout
runs its own ``sandbox`` (``python -m sandbox`` from its root) and its own projects, removed after.
wrk is the Debian package ``wrk`` (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provenance import header as provenance_header  # bench/provenance.py (this script's directory)
from provenance import publish
from run_all import parse_wrk, wrk_args  # bench/run_all.py

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {"one-at-a-time": ["--strategy", "one-at-a-time"],
              "rolling 3": ["--strategy", "rolling", "--batch", "3"],
              "double-half": ["--strategy", "double-half"]}
WRK_S = 8


def sandbox(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=repo, capture_output=True, text=True,
                          timeout=900)


def commit(repo: Path) -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    return sha.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "")


@contextmanager
def fleet(repo: Path, project: str, size: int) -> Iterator[int]:
    port = free_port()
    sandbox(repo, "down", "--project", project)
    proc = sandbox(repo, "up", "--project", project, "--size", str(size), "--port", str(port))
    try:
        if proc.returncode:
            raise RuntimeError(f"up failed: {proc.stderr.strip()[-300:]}")
        yield port
    finally:
        sandbox(repo, "down", "--project", project)


def roll(repo: Path, project: str, *extra: str) -> dict[str, Any]:
    proc = sandbox(repo, "roll", "--project", project, "--to", "v2", "--json", *extra)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"roll gave no report: {proc.stderr.strip()[-300:]}") from exc
    return report


def p99(report: dict[str, Any], phase: str) -> float | None:
    value = ((report.get("phases") or {}).get(phase) or {}).get("latency_ms", {}).get("p99")
    return None if value is None else float(value)


def p99_run(repo: Path, tag: str, size: int, strategy: list[str]) -> dict[str, Any]:
    project = f"bench-p99-{tag}"
    with fleet(repo, project, size):
        report = roll(repo, project, *strategy)
    steady, rollout = p99(report, "warmup"), p99(report, "rollout")
    return {"steady": steady, "rollout": rollout, "ratio": rollout / steady if steady and rollout else None,
            "dropped": report["requests"]["dropped"], "duration_s": report.get("duration_s")}


def wrk_window(port: int) -> dict[str, Any]:
    proc = subprocess.run(wrk_args(port, WRK_S), capture_output=True, text=True, timeout=WRK_S + 60)
    return parse_wrk(proc.stdout)


def rollout_span(report: dict[str, Any]) -> tuple[float, float]:
    """Epoch seconds of the rollout window (the report's ``window``: first to last change to the LB)."""
    window = report.get("window") or {}
    return float(window.get("start") or 0.0), float(window.get("end") or 0.0)


def wrk_run(repo: Path, tag: str, size: int) -> dict[str, Any]:
    """wrk's rate in 8 s of steady state, then in 8 s from the start of a one-at-a-time --no-load rollout
    (its ``rollout-start`` line on stderr)."""
    project = f"bench-wrk-{tag}"
    with fleet(repo, project, size) as port:
        wrk_window(port)  # warm-up: connections, NGINX workers and the apps' first requests
        steady = wrk_window(port)
        roller = subprocess.Popen([sys.executable, "-m", "sandbox", "roll", "--project", project, "--to", "v2",
                                   "--json", "--no-load", "--strategy", "one-at-a-time"], cwd=repo,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert roller.stderr is not None
        progress = []
        for line in roller.stderr:
            progress.append(line)
            if "rollout-start" in line:
                break
        t0 = time.time()
        during = wrk_window(port)
        t1 = time.time()
        out, err = roller.communicate(timeout=900)
    try:
        report = json.loads(out)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"roll gave no report: {(''.join(progress) + err)[-300:]}") from exc
    first, last = rollout_span(report)
    inside = max(0.0, min(t1, last) - max(t0, first)) / (t1 - t0)
    return {"steady": steady["rps"], "rollout": during["rps"],
            "ratio": during["rps"] / steady["rps"] if steady["rps"] and during["rps"] else None,
            "errors": during["errors"] + during["non_2xx"], "inside": round(inside, 2),
            "rollout_s": report.get("duration_s")}


def summary(values: list[float | None], digits: int = 2) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"**{statistics.median(known):.{digits}f}** ({min(known):.{digits}f}-{max(known):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="*", type=Path, default=[REPO], help="checkouts to compare (default: this)")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the three strategies per checkout")
    parser.add_argument("--wrk-pairs", type=int, default=3, help="rounds of wrk steady/rollout per checkout")
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    repos = [r.resolve() for r in args.repos]
    names = {r: f"{r.name} @ {commit(r)}" for r in repos}
    p99s: dict[Path, dict[str, list[dict[str, Any]]]] = {r: {s: [] for s in STRATEGIES} for r in repos}
    wrks: dict[Path, list[dict[str, Any]]] = {r: [] for r in repos}
    for n in range(args.pairs):
        for strategy, flags in STRATEGIES.items():
            for i, repo in enumerate(repos if n % 2 == 0 else repos[::-1]):
                row = p99_run(repo, f"{n}-{i}", args.size, flags)
                p99s[repo][strategy].append(row)
                print(json.dumps({"repo": names[repo], "strategy": strategy, **row}), flush=True)
    for n in range(args.wrk_pairs):
        for i, repo in enumerate(repos if n % 2 == 0 else repos[::-1]):
            row = wrk_run(repo, f"{n}-{i}", args.size)
            wrks[repo].append(row)
            print(json.dumps({"repo": names[repo], "wrk": True, **row}), flush=True)
    lines = provenance_header("p99 rollout / steady and wrk's rate during a rollout, checkouts side by side",
                              "bench/p99_strategies.py", sys.argv[1:], [
        f"{args.size} servers, default load (`sandbox roll --to v2 --json --strategy ...`, 20 users), "
        "a fresh fleet per rollout; steady = the warm-up's p99, rollout = the rollout's p99 (ms)",
        f"wrk: `{' '.join(wrk_args(0, WRK_S)).replace(':0/', ':PORT/')}` on the steady fleet, then the same "
        f"{WRK_S} s window from the `rollout-start` of `sandbox roll --to v2 --json --no-load --strategy "
        "one-at-a-time`; inside = the part of the window the rollout's window (first to last LB change) spanned",
        "cells: median (min-max) over the runs; the checkouts took turns run by run"])
    lines += ["| checkout | strategy | runs | p99 steady ms | p99 rollout ms | rollout / steady | dropped |",
              "|---|---|---|---|---|---|---|"]
    for repo in repos:
        for strategy in STRATEGIES:
            rows = p99s[repo][strategy]
            if rows:
                lines.append(f"| {names[repo]} | {strategy} | {len(rows)} | {summary([r['steady'] for r in rows], 1)} "
                             f"| {summary([r['rollout'] for r in rows], 1)} | {summary([r['ratio'] for r in rows])} "
                             f"| {sum(r['dropped'] for r in rows)} |")
    if any(wrks.values()):
        lines += ["", "| checkout | runs | wrk steady req/s | wrk in rollout req/s | rollout / steady | errors "
                  "| inside |", "|---|---|---|---|---|---|---|"]
        for repo in repos:
            rows = wrks[repo]
            lines.append(f"| {names[repo]} | {len(rows)} | {summary([r['steady'] for r in rows], 0)} | "
                         f"{summary([r['rollout'] for r in rows], 0)} | {summary([r['ratio'] for r in rows])} | "
                         f"{sum(r['errors'] for r in rows)} | {summary([r['inside'] for r in rows])} |")
    raw = {names[r]: {"p99": p99s[r], "wrk": wrks[r]} for r in repos}
    lines += ["", "Raw runs:", "", "```json", json.dumps(raw, indent=1), "```", ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

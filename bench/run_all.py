"""All of issue 10's figures in one run of one commit, written to bench/RESULTS.md.

    .venv/bin/python bench/run_all.py            # the full run (about 15 minutes on 2 quiet cores)
    .venv/bin/python bench/run_all.py --quick    # a small version of every figure (10 minutes on a busy machine)

Figures (each with the command that made it): the highest request rate at which one-at-a-time
over 9 servers drops 0 with client keep-alive on, in dynamic and in reload LB mode (a ladder of
user counts, think time 0, stopping at the first drop); the same fleet's capacity through the LB
with `wrk -t2 -c50` and a wrk run during a rollout (a cross-check of dropped); the overhead ratio
of one-at-a-time, rolling 3 and double-half; p99 during the rollout / p99 in steady state at the
highest zero-drop rate; N = 9, 18, 36, 60: rollout time, dropped, peak memory of the project's
containers; `up --size 9` and `sandbox demo` end to end. Installs nothing: without `wrk` on PATH
the wrk figures say so. Each measurement uses its own project (bench-all-*) and removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpu import cpu_split, describe, sampling  # bench/cpu.py (this script's directory)
from provenance import PY, shown
from provenance import header as provenance_header  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
# `up --size 60` boots 60 Python apps at once: on 2 cores some need more than the default 30 s
ENV = {**os.environ, "SANDBOX_READY_TIMEOUT": "180"}


@dataclass(frozen=True)
class Plan:
    """What one run measures (--quick shrinks it)."""

    size: int = 9
    ladder: tuple[int, ...] = (25, 50, 100, 200, 400)
    fleets: tuple[int, ...] = (9, 18, 36, 60)
    fleet_batch: int = 3
    fleet_users: int = 20
    overhead_users: int = 20
    wrk_s: int = 10
    demo: bool = True


FULL = Plan()
QUICK = Plan(size=4, ladder=(10, 40), fleets=(4, 8), fleet_users=5, overhead_users=5, wrk_s=3, demo=False)


@dataclass
class Out:
    """The results file, section by section."""

    sections: list[str] = field(default_factory=list)

    def add(self, title: str, lines: Sequence[str]) -> None:
        self.sections.append("\n".join([f"## {title}", "", *lines, ""]))
        print(self.sections[-1], flush=True)


def run(args: Sequence[str], timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)
    return proc, time.monotonic() - t0


@dataclass
class Fleet:
    project: str
    port: int
    up_s: float
    up_cmd: str


@contextmanager
def fleet(tag: str, size: int, *extra: str) -> Iterator[Fleet]:
    project, port = f"bench-all-{tag}", free_port()
    run([*PY, "down", "--project", project])
    args = [*PY, "up", "--project", project, "--size", str(size), "--port", str(port), *extra]
    proc, took = run(args)
    try:
        if proc.returncode:
            raise RuntimeError(f"up failed: {proc.stderr.strip().splitlines()[-1:]}")
        yield Fleet(project, port, took, shown(args))
    finally:
        run([*PY, "down", "--project", project])


def roll(f: Fleet, *extra: str) -> tuple[dict[str, Any], str]:
    args = [*PY, "roll", "--project", f.project, "--to", "v2", "--json", *extra]
    proc, _ = run(args)
    try:
        return json.loads(proc.stdout), shown(args)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"roll gave no report: {proc.stderr.strip()[-300:]}") from exc


# -- memory ---------------------------------------------------------------------------------------
_MEM_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def project_memory_mib(project: str) -> float:
    """Memory of the project's containers now (docker stats, one sample), in MiB."""
    ids, _ = run(["docker", "ps", "-q", "--filter", f"label=io.rolling-sandbox.project={project}"], timeout=60)
    if not ids.stdout.split():
        return 0.0
    proc, _ = run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}",
                   *ids.stdout.split()], timeout=120)
    total = 0.0
    for line in proc.stdout.splitlines():
        m = re.match(r"(\S+) ([\d.]+)(\w+) /", line)
        if m:
            total += float(m.group(2)) * _MEM_UNITS.get(m.group(3), 1) / 2**20
    return round(total, 1)


@contextmanager
def peak_memory(project: str) -> Iterator[list[float]]:
    """Sample the project's memory until the block ends; the list's max is the peak."""
    samples: list[float] = []
    with sampling(lambda: samples.append(project_memory_mib(project)), 0):
        yield samples


# -- wrk ------------------------------------------------------------------------------------------
def parse_wrk(text: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)) if rps else None, "requests": int(total.group(1)) if total else None,
            "errors": errors, "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def wrk_args(port: int, seconds: int) -> list[str]:
    return ["wrk", "-t2", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]


def wrk(port: int, seconds: int) -> tuple[dict[str, Any], str]:
    args = wrk_args(port, seconds)
    proc, _ = run(args, timeout=seconds + 60)
    return parse_wrk(proc.stdout), shown(args)


def wrk_during(f: Fleet) -> tuple[dict[str, Any], dict[str, Any], str]:
    """wrk from 1 s before a --no-load rollout until 1 s after it (SIGINT makes wrk report)."""
    args = wrk_args(f.port, 600)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        report, roll_cmd = roll(f, "--no-load")
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    return parse_wrk(out), report, f"{shown(args)} (stopped 1 s after the rollout) during {roll_cmd}"


# -- the figures ----------------------------------------------------------------------------------
def p99(report: dict[str, Any], phase: str) -> float | None:
    return ((report.get("phases") or {}).get(phase) or {}).get("latency_ms", {}).get("p99")


def ladder(plan: Plan, lb_apply: str) -> list[dict[str, Any]]:
    """Rollouts at growing user counts (think 0) until the first one that drops."""
    rows = []
    for users in plan.ladder:
        with fleet(f"rate-{lb_apply}-{users}", plan.size, "--lb-apply", lb_apply) as f, cpu_split() as split:
            report, roll_cmd = roll(f, "--strategy", "one-at-a-time", "--users", str(users), "--think-ms", "0")
        phases = report.get("phases") or {}
        rows.append({"users": users, "rps": (phases.get("rollout") or {}).get("rps"),
                     "dropped": report["requests"]["dropped"], "p99_rollout": p99(report, "rollout"),
                     "p99_steady": p99(report, "warmup"), "cmd": roll_cmd, "up_cmd": f.up_cmd,
                     "cores": describe(split.cores())})
        print(json.dumps(rows[-1]), flush=True)
        if rows[-1]["dropped"]:
            break
    return rows


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    clean = [r for r in rows if not r["dropped"]]
    return max(clean, key=lambda r: r["rps"] or 0) if clean else None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def section_rate(out: Out, plan: Plan) -> dict[str, dict[str, Any] | None]:
    tops: dict[str, dict[str, Any] | None] = {}
    lines = ["| LB mode | users | req/s in rollout | dropped | p99 rollout ms | p99 steady ms | cores used | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("dynamic", "reload"):
        rows = ladder(plan, mode)
        tops[mode] = best(rows)
        lines += [f"| {mode} | {r['users']} | {fmt(r['rps'])} | {r['dropped']} | {fmt(r['p99_rollout'])} | "
                  f"{fmt(r['p99_steady'])} | {r['cores']} | {r['cmd']} |" for r in rows]
    lines += [""] + [f"- highest zero-drop rate, {m}: " + (f"**{fmt(t['rps'])} req/s** ({t['users']} users)"
                                                          if t else "none (the first step dropped)")
                     for m, t in tops.items()]
    lines += [f"- {m}: the ladder ended without a drop, so its rate is a lower bound"
              for m, t in tops.items() if t is not None and t["users"] == plan.ladder[-1]]
    lines += ["- cores used: average cores per group of processes over the whole `sandbox roll` (warm-up, "
              "rollout, cool-down; bench/cpu.py reads /proc for every process on the machine, so other work would "
              "count too): locust = the load generator, apps = the app "
              "servers, nginx = the LB, docker = dockerd, containerd and shims, controller = the sandbox "
              f"process; the machine has {os.cpu_count()}"]
    out.add(f"Highest zero-drop rate, one-at-a-time over {plan.size} servers, client keep-alive on", lines)
    return tops


def section_wrk(out: Out, plan: Plan, tops: dict[str, dict[str, Any] | None]) -> None:
    title = f"LB capacity with wrk ({plan.size} servers, keep-alive on)"
    if shutil.which("wrk") is None:
        out.add(title, ["wrk is not installed (Debian package `wrk`; scripts/setup.sh installs it as root): "
                        "no wrk figures in this run."])
        return
    with fleet("wrk", plan.size) as f:
        wrk(f.port, 2)  # warm-up: connections, NGINX workers and the apps' first requests
        with cpu_split() as split:
            steady, steady_cmd = wrk(f.port, plan.wrk_s)
    top = tops.get("dynamic")
    share = (f"{100 * top['rps'] / steady['rps']:.0f} %" if top and top["rps"] and steady["rps"] else "-")
    lines = [f"- steady: **{fmt(steady['rps'])} req/s**, {steady['errors']} socket errors, "
             f"{steady['non_2xx']} non-2xx: {steady_cmd}; cores used: {describe(split.cores())} "
             "(wrk itself is in other)",
             f"- highest zero-drop Locust rate in dynamic mode / wrk capacity: {share}"]
    for mode in ("dynamic", "reload"):
        with fleet(f"wrk-{mode}", plan.size, "--lb-apply", mode) as f:
            during, report, during_cmd = wrk_during(f)
        lines.append(f"- during a rollout, {mode} mode ({report.get('strategy')}, "
                     f"{fmt(report.get('duration_s'), 2)} s): {fmt(during['rps'])} req/s, {during['requests']} "
                     f"requests, **{during['errors']} socket errors, {during['non_2xx']} non-2xx**: {during_cmd}")
    out.add(title, lines)


def section_overhead(out: Out, plan: Plan) -> None:
    lines = ["| strategy | rollout s | unavoidable s | overhead ratio | dropped | req/s | p99 rollout / steady ms "
             "| command |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for tag, strategy in (("one", ["--strategy", "one-at-a-time"]),
                          ("rolling3", ["--strategy", "rolling", "--batch", "3"]),
                          ("dh", ["--strategy", "double-half"])):
        with fleet(f"ovh-{tag}", plan.size) as f:
            report, roll_cmd = roll(f, *strategy, "--users", str(plan.overhead_users))
        rollout, steady = p99(report, "rollout"), p99(report, "warmup")
        rps = ((report.get("phases") or {}).get("rollout") or {}).get("rps")
        ratio = f" = {rollout / steady:.2f}" if rollout and steady else ""
        lines.append(f"| {' '.join(strategy[1:])} | {fmt(report.get('duration_s'), 2)} | "
                     f"{fmt(report.get('unavoidable_s'), 2)} | **{fmt(report.get('overhead_ratio'), 2)}** | "
                     f"{report['requests']['dropped']} | {fmt(rps)} "
                     f"| {fmt(rollout)} / {fmt(steady)}{ratio} | {roll_cmd} |")
    lines.append("")
    lines.append("unavoidable: per batch, the longest start-to-first-healthy, plus the longest wait until the "
                 "drained servers had nothing in flight, plus the old servers' stop (`unavoidable_s` in every "
                 "report). These rolls run the default users (with their think time), well below the machine's "
                 "capacity, so their p99 ratio is the rollout's cost to latency when there is CPU to spare.")
    out.add(f"Controller overhead over {plan.size} servers ({plan.overhead_users} users)", lines)


def section_p99(out: Out, tops: dict[str, dict[str, Any] | None]) -> None:
    lines = []
    for mode, top in tops.items():
        if top and top["p99_rollout"] and top["p99_steady"]:
            lines.append(f"- {mode}: {fmt(top['p99_rollout'])} ms / {fmt(top['p99_steady'])} ms = "
                         f"**{top['p99_rollout'] / top['p99_steady']:.2f}** ({top['users']} users: {top['cmd']})")
        else:
            lines.append(f"- {mode}: no zero-drop step")
    out.add("p99 during the rollout / p99 in steady state (warm-up), at the highest zero-drop rate", lines)


def section_fleets(out: Out, plan: Plan) -> None:
    lines = ["| N | batches | rollout s | s per batch | dropped | idle MiB per server | peak MiB (all containers) "
             "| command |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in plan.fleets:
        with fleet(f"n{n}", n) as f:
            idle = project_memory_mib(f.project)
            with peak_memory(f.project) as samples:
                report, roll_cmd = roll(f, "--strategy", "rolling", "--batch", str(plan.fleet_batch),
                                        "--users", str(plan.fleet_users))
        batches = -(-n // plan.fleet_batch)
        duration = report.get("duration_s") or 0.0
        lines.append(f"| {n} | {batches} | {fmt(duration, 2)} | {duration / batches:.2f} | "
                     f"{report['requests']['dropped']} | {idle / (n + 1):.1f} | {fmt(max(samples, default=None))} | "
                     f"{f.up_cmd}, then {roll_cmd} |")
    lines += ["", "idle MiB per server: the project's memory after `up` over N app containers + the LB."]
    out.add(f"Large fleets: rolling, batch {plan.fleet_batch}", lines)


def section_times(out: Out, plan: Plan) -> None:
    ups = []
    for i in range(3):
        with fleet(f"up{i}", 9) as f:
            ups.append(f.up_s)
    lines = [f"- `up --size 9`: {', '.join(f'{t:.2f}' for t in ups)} s (best **{min(ups):.2f} s**): {f.up_cmd}"]
    if plan.demo:
        project = "bench-all-demo"
        args = [*PY, "demo", "--project", project, "--port", str(free_port())]
        proc, took = run(args)
        run([*PY, "down", "--project", project])
        lines.append(f"- `sandbox demo` end to end: **{took:.1f} s**, exit {proc.returncode}: {shown(args)}")
    out.add("Wall-clock times", lines)


def header(argv: Sequence[str]) -> list[str]:
    return provenance_header("Benchmark results (issue 10)", "bench/run_all.py", argv,
                             ["every `sandbox` command below ran with `SANDBOX_READY_TIMEOUT=180` "
                              "(60 apps booting at once)"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small version of every figure (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md",
                        help="where to write the results (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    t0 = time.monotonic()
    out = Out()
    steps: list[Callable[[], None]] = []
    tops: dict[str, dict[str, Any] | None] = {}
    steps.append(lambda: tops.update(section_rate(out, plan)))
    steps += [lambda: section_wrk(out, plan, tops), lambda: section_p99(out, tops),
              lambda: section_overhead(out, plan), lambda: section_fleets(out, plan),
              lambda: section_times(out, plan)]
    head = header(argv)
    for step in steps:
        step()
    text = "\n".join([*head, *out.sections, f"The whole run took {(time.monotonic() - t0) / 60:.1f} minutes.", ""])
    args.out.write_text(text)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

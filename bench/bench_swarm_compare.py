"""Issue 11's closing figures: the compare table on Docker Swarm, in one run of one commit.

    .venv/bin/python bench/bench_swarm_compare.py                  # 9 servers, writes bench/SWARM.md
    .venv/bin/python bench/bench_swarm_compare.py --init-swarm     # the same on an engine in no swarm
    .venv/bin/python bench/bench_swarm_compare.py --size 4 --warmup 2 --cooldown 2 --out /tmp/swarm.md  # a smoke run

One `sandbox compare --engine swarm --json` invocation runs the four strategies, each on a fresh
fleet under the same Locust load: the controller's one-at-a-time and rolling 3, and Swarm's own
`service update` with stop-first and start-first (update parallelism 1, delay 0, failure action
pause, stop grace period 20 s, a HEALTHCHECK on /healthz). The results file is headed by the
command, the commit, the date and the machine's load average, then one row per strategy:
outcome, dropped, requests, duration, peak containers, p99 over the whole run and during the
rollout, verdict. Needs a swarm manager; `--init-swarm` inits a single-node swarm when the engine
is in none and leaves it afterwards (removing the docker_gwbridge that init made), so the engine's
swarm state is left as found. The compare's fleets are removed by compare itself.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from provenance import header  # noqa: E402  (after bench/ is on the path)

from sandbox.ports import free_port  # noqa: E402  (the editable install, or the repo on the path)

STRATEGIES = "one-at-a-time,rolling:3,swarm-native:stop-first,swarm-native:start-first"
SWARM_UPDATE = ["--update-parallelism", "1", "--update-delay", "0", "--update-failure-action", "pause",
                "--stop-grace-period", "20"]
TIMEOUT_S = 3600


def swarm_state() -> tuple[str, bool]:
    """This engine's LocalNodeState and whether it is a manager (`docker info`)."""
    out = subprocess.run(["docker", "info", "--format", "{{json .Swarm}}"], capture_output=True, text=True,
                         timeout=60).stdout
    info = json.loads(out or "{}")
    return str(info.get("LocalNodeState", "")), bool(info.get("ControlAvailable"))


@contextmanager
def single_node_swarm(init: bool) -> Iterator[None]:
    """Yield on a swarm manager: the engine's own, or (``init``) a single-node swarm made here and
    left afterwards, with the docker_gwbridge network init made. SystemExit(2) when neither."""
    state, manager = swarm_state()
    if manager:
        yield
        return
    if state == "active" or not init:
        raise SystemExit("bench_swarm_compare: this engine is not a swarm manager; run `docker swarm init "
                         "--advertise-addr 127.0.0.1` or pass --init-swarm")
    gw = ["docker", "network", "ls", "-q", "--filter", "name=^docker_gwbridge$"]
    had_gwbridge = bool(subprocess.run(gw, capture_output=True, text=True, timeout=60).stdout.strip())
    subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True,
                   timeout=120)
    try:
        yield
    finally:
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=120)
        if not had_gwbridge:
            subprocess.run(["docker", "network", "rm", "docker_gwbridge"], capture_output=True, timeout=60)


def compare_args(args: argparse.Namespace, report_dir: Path) -> list[str]:
    return ["compare", "--engine", "swarm", "--project", args.project, "--port", str(free_port()),
            "--size", str(args.size), "--strategies", STRATEGIES, *SWARM_UPDATE,
            "--users", str(args.users), "--warmup", str(args.warmup), "--cooldown", str(args.cooldown),
            "--report", str(report_dir), "--json"]


def row(spec: str, line: dict[str, Any], report: dict[str, Any]) -> str:
    """One Markdown table row from compare.json's line and the strategy's own report.json."""
    def num(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    rollout_p99 = ((report.get("phases") or {}).get("rollout") or {}).get("latency_ms", {}).get("p99")
    cells = [f"`{spec}`", str(line.get("outcome")), num(line.get("dropped")),
             num((report.get("requests") or {}).get("total")), num(line.get("duration_s")),
             num(line.get("peak_instances")), num((report.get("latency_ms") or {}).get("p99")), num(rollout_p99),
             str(line.get("verdict"))]
    return "| " + " | ".join(cells) + " |"


def table(specs: Sequence[str], compare: dict[str, Any], report_dir: Path) -> list[str]:
    lines = ["| strategy | outcome | dropped | requests | duration s | peak containers | p99 ms (run) "
             "| p99 ms (rollout) | verdict |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for spec, line in zip(specs, compare["rows"], strict=True):
        path = report_dir / spec.replace(":", "-") / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else {}
        lines.append(row(spec, line, report))
    return lines


def measure(args: argparse.Namespace, report_dir: Path) -> list[str]:
    """Run the one compare; its command, time and exit code, then the table."""
    argv = compare_args(args, report_dir)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sandbox", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    took = time.monotonic() - t0
    try:
        compare = json.loads(proc.stdout)
    except ValueError as exc:
        raise SystemExit(f"bench_swarm_compare: compare gave no table (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-400:]}") from exc
    shown = shlex.join(["sandbox", *argv]).replace(str(report_dir), "DIR")
    return [f"## Compare on Swarm, {args.size} servers, {args.users} users", "",
            f"`{shown}`", "",
            f"took {took:.0f} s, exit code {proc.returncode} (1 = a strategy failed its verdict)", "",
            *table(STRATEGIES.split(","), compare, report_dir), "",
            "dropped: requests with no HTTP answer, a 5xx, or still unanswered when the load stopped; "
            "p99 (run): all answers of the run (warmup, rollout, cooldown); p99 (rollout): answers sent during "
            "the rollout; peak containers: app tasks running at once (for swarm-native, those Swarm is stopping "
            "included).", ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=9, help="servers per fleet (default 9; rolling 3 needs 4+)")
    parser.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before each rollout (default 3)")
    parser.add_argument("--cooldown", type=float, default=3, help="seconds of load after it (default 3)")
    parser.add_argument("--project", default="bench-swarm", help="compare's fleets are PROJECT-1 .. PROJECT-4")
    parser.add_argument("--init-swarm", action="store_true",
                        help="on an engine in no swarm, init a single-node one and leave it afterwards")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SWARM.md",
                        help="where to write the results (default bench/SWARM.md)")
    parser.add_argument("--report", type=Path, help="keep the per-strategy reports here (default: a temp dir)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.size < 4:
        parser.error("--size must be at least 4 (rolling 3 needs a batch below the fleet's size)")
    head = header("Swarm compare (issue 11)", "bench/bench_swarm_compare.py", argv,
                  ["engine: a single-node Docker Swarm; the LB a plain container on 127.0.0.1"])
    with single_node_swarm(args.init_swarm), tempfile.TemporaryDirectory(prefix="swarm-compare-") as tmp:
        body = measure(args, args.report or Path(tmp))
    text = "\n".join([*head, *body])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

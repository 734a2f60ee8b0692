"""Issue 23's figures: the rehearsal on a multi-node Swarm made by `sandbox cluster`, in one run of one commit.

    .venv/bin/python bench/cluster.py --out bench/CLUSTER.md                  # all of it (about 20 minutes)
    .venv/bin/python bench/cluster.py --skip-sweep --out /tmp/cluster.md      # without the size sweep

On the local engine (which must be in no swarm, or a manager of one; `cluster up` makes the swarm
when it is in none and `cluster down` leaves it again):

1. `sandbox cluster up --nodes N` and `sandbox cluster down`: how long each takes (the node image is
   built before the clock starts, as `sandbox images` would have);
2. one `sandbox compare --engine swarm --size 9` of every strategy that rolls on Swarm and Swarm's
   own update (stop-first and start-first) on that cluster, under the same default load: dropped, duration, p99 steady
   and rollout, and where the servers ran;
3. a worker node lost mid-rollout: `docker kill` of worker-1's container once the first new server
   is attached: the requests lost (and what that node was serving), how long until the sandbox
   noticed and until the rollout ended with a full fleet, the outcome; then the node started again,
   and how long it took to rejoin;
4. with `--partition`, a network partition: worker-2's container disconnected from the cluster's
   network mid-rollout, reconnected 30 s later;
5. the sweep: `cluster up --nodes n`, `up --size s`, `roll --strategy one-at-a-time` for each n:s of
   `--sweep`, dropped and duration each: what this machine carries.

Everything is removed afterwards (fleets, then the cluster); the engine's swarm state is as found.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_swarm_compare import table  # noqa: E402  (after bench/ is on the path)
from provenance import header  # noqa: E402

from sandbox.fleet import cluster  # noqa: E402  (the editable install, or the repo on the path)
from sandbox.fleet.images import ensure_node_image  # noqa: E402
from sandbox.ports import free_port  # noqa: E402

# every strategy that rolls in replace mode on Swarm, and Swarm's own update both ways
COMPARED = ("one-at-a-time,rolling:3,surge:1,double-half,blue-green,swarm-native:stop-first,"
            "swarm-native:start-first")
TIMEOUT_S = 3600


def sandbox(*args: str, timeout: float = TIMEOUT_S) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def must(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise SystemExit(f"bench/cluster.py: {what} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def cluster_up(nodes: int) -> float:
    proc, took = sandbox("cluster", "up", "--nodes", str(nodes))
    must(proc, f"cluster up --nodes {nodes}")
    return took


def cluster_down() -> float:
    proc, took = sandbox("cluster", "down")
    must(proc, "cluster down")
    return took


def placement(report: dict[str, Any]) -> str:
    """``vm 3, worker-1 3, worker-2 3``: the new servers by node."""
    counts: dict[str, int] = {}
    for step in report.get("steps") or []:
        if step.get("phase") == "start" and step.get("node"):
            counts[step["node"]] = counts.get(step["node"], 0) + 1
    return ", ".join(f"{n} {c}" for n, c in sorted(counts.items())) or "-"


def p99s(report: dict[str, Any]) -> tuple[Any, Any]:
    like = report.get("like_for_like") or {}
    return (like.get("steady") or {}).get("p99_ms"), (like.get("rollout") or {}).get("p99_ms")


def compare_section(size: int, report_dir: Path) -> list[str]:
    argv = ["compare", "--engine", "swarm", "--project", "bench-cluster", "--port", str(free_port()),
            "--size", str(size), "--strategies", COMPARED, "--report", str(report_dir), "--json"]
    proc, took = sandbox(*argv)
    try:
        compared = json.loads(proc.stdout)
    except ValueError as exc:
        raise SystemExit(f"bench/cluster.py: compare gave no table (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-600:]}") from exc
    specs = COMPARED.split(",")
    extra = ["| strategy | p99 steady ms | p99 rollout ms | rollout / steady | new servers by node |",
             "| --- | ---: | ---: | ---: | --- |"]
    for spec in specs:
        path = report_dir / spec.replace(":", "-") / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else {}
        steady, rollout = p99s(report)
        ratio = f"{rollout / steady:.2f}" if steady and rollout else "-"
        extra.append(f"| `{spec}` | {steady if steady is not None else '-'} | "
                     f"{rollout if rollout is not None else '-'} | {ratio} | {placement(report)} |")
    shown = shlex.join(["sandbox", *argv]).replace(str(report_dir), "DIR")
    return [f"## {size} servers over the cluster's nodes, every strategy in one compare", "", f"`{shown}`", "",
            f"took {took:.0f} s, exit code {proc.returncode}", "", *table(specs, compared, report_dir), "", *extra, "",
            "p99 steady: the warm-up's answers; p99 rollout: the rollout's answers of the same requests; "
            "swarm-native places its own tasks (its report names no node).", ""]


def _wait_line(proc: subprocess.Popen[str], word: str, timeout: float, seen: list[str]) -> float:
    """Read stderr until a line holding ``word``; the time it came. Lines kept in ``seen``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if word in line:
            return time.time()
    raise SystemExit(f"bench/cluster.py: no {word!r} line from the roll:\n{''.join(seen)[-2000:]}")


def fault_section(kind: str, size: int, client: docker.DockerClient) -> list[str]:
    """A worker lost (``kill``) or cut off (``partition``) once the first new server is attached."""
    project, port = f"bench-{kind}", free_port()
    must(sandbox("up", "--engine", "swarm", "--project", project, "--size", str(size), "--port", str(port))[0], "up")
    target = "worker-1" if kind == "kill" else "worker-2"
    status = json.loads(must(sandbox("status", "--project", project, "--json")[0], "status"))
    serving_there = sorted(i["name"] for i in status["instances"] if i.get("node") == target)
    argv = ["roll", "--project", project, "--to", "v2", "--strategy", "one-at-a-time", "--json"]
    roll = subprocess.Popen([sys.executable, "-m", "sandbox", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    _wait_line(roll, "attach", 600, seen)
    node = client.containers.get(cluster.container_name(target))
    network = client.networks.get(cluster.NETWORK)
    t_fault, t_fault_mono = time.time(), time.monotonic()
    if kind == "kill":
        node.kill()
    else:
        network.disconnect(node, force=True)
        threading.Timer(30.0, lambda: network.connect(node)).start()
    errs: list[str] = []
    reader = threading.Thread(target=lambda: errs.extend(roll.stderr or []), daemon=True)
    reader.start()
    out = roll.stdout.read() if roll.stdout else ""
    roll.wait(timeout=TIMEOUT_S)
    t_end = time.time()
    reader.join(timeout=5)
    report: dict[str, Any] = json.loads(out) if out.strip() else {}
    after = json.loads(must(sandbox("status", "--project", project, "--json")[0], "status"))
    running = [i for i in after["instances"] if i["state"] == "running"]
    consistent = (len(running) == size and {i["version"] for i in running} == {"v2"}
                  and sorted(after["lb"]["upstreams"]) == sorted(i["address"] for i in running))
    died = [s for s in report.get("steps") or [] if s.get("phase") == "died"]
    t0 = report.get("steps_t0") or 0.0
    noticed = (t0 + min(float(s["t"]) for s in died) - t_fault) if died else None
    lost = [f for f in report.get("faults") or [] if f.get("fault") == "node_lost"]
    rejoin = None
    if kind == "kill":
        t_start = time.monotonic()
        node.start()
        rejoin = _wait_ready(client, target, t_start)
    else:
        rejoin = _wait_ready(client, target, t_fault_mono)
    sandbox("down", "--project", project)
    what = ("worker-1's container killed (`docker kill`: its engine and its tasks gone at once)" if kind == "kill"
            else "worker-2's container disconnected from the cluster's network (`docker network disconnect`), "
                 "reconnected 30 s later")
    lines = [f"## A worker {'lost' if kind == 'kill' else 'cut off'} mid-rollout ({size} servers, one-at-a-time)", "",
             f"`sandbox {shlex.join(argv)}`; once the first new server was attached: {what}.", "",
             f"- outcome: {report.get('outcome', 'no report: ' + ''.join(errs)[-300:])}, verdict "
             f"{'PASS' if (report.get('verdict') or {}).get('pass') else 'FAIL'}; "
             f"exit code {roll.returncode}",
             f"- requests: {(report.get('requests') or {}).get('total')} sent, "
             f"{(report.get('requests') or {}).get('dropped')} dropped",
             f"- servers on {target} when the rollout started: {len(serving_there)} ({', '.join(serving_there)})",
             f"- node_lost faults: {json.dumps(lost)}",
             f"- noticed {noticed:.1f} s after the fault" if noticed is not None else "- never noticed as dead",
             f"- the rollout ended {t_end - t_fault:.1f} s after the fault; then the fleet was "
             f"{'consistent' if consistent else 'NOT consistent'}: {len(running)} of {size} running, versions "
             f"{sorted({i['version'] for i in running})}, the LB's set {'equal to' if consistent else 'vs'} "
             "the running servers",
             rejoined(target, rejoin, kind), ""]
    return lines


def rejoined(target: str, rejoin: float | None, kind: str) -> str:
    if rejoin is None:
        return f"- {target} did not turn ready again within 180 s"
    after = "it was started again" if kind == "kill" else "the fault (reconnected at 30 s)"
    return f"- {target} ready again {rejoin:.1f} s after {after}"


def _wait_ready(client: docker.DockerClient, hostname: str, since: float, timeout: float = 180) -> float | None:
    while time.monotonic() - since < timeout:
        for node in client.nodes.list():
            attrs = node.attrs
            if attrs.get("Description", {}).get("Hostname") == hostname and attrs["Status"]["State"] == "ready":
                return time.monotonic() - since
        time.sleep(1)
    return None


def sweep_section(pairs: Sequence[tuple[int, int]]) -> list[str]:
    lines = ["## What this machine carries: nodes and fleet size", "",
             "Each: `cluster up --nodes n`, `up --engine swarm --size s`, `roll --to v2 --strategy one-at-a-time` "
             "(default load), `down`, `cluster down`.", "",
             "| nodes | servers | outcome | dropped | requests | duration s | p99 rollout ms | verdict |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for nodes, size in pairs:
        cluster_up(nodes)
        try:
            project = f"bench-sweep-{nodes}-{size}"
            up, _ = sandbox("up", "--engine", "swarm", "--project", project, "--size", str(size),
                            "--port", str(free_port()))
            if up.returncode != 0:
                lines.append(f"| {nodes} | {size} | up failed: {up.stderr.strip()[-120:]} | | | | | |")
                continue
            roll, _ = sandbox("roll", "--project", project, "--to", "v2", "--strategy", "one-at-a-time", "--json")
            report = json.loads(roll.stdout) if roll.stdout.strip() else {}
            req = report.get("requests") or {}
            lines.append(f"| {nodes} | {size} | {report.get('outcome', 'no report')} | {req.get('dropped')} | "
                         f"{req.get('total')} | {report.get('duration_s')} | {p99s(report)[1]} | "
                         f"{'PASS' if (report.get('verdict') or {}).get('pass') else 'FAIL'} |")
            sandbox("down", "--project", project)
        finally:
            cluster_down()
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="nodes for the compare and the faults (default 3)")
    parser.add_argument("--size", type=int, default=9, help="servers for the compare and the faults (default 9)")
    parser.add_argument("--sweep", default="3:9,3:18,5:18,5:30",
                        help="nodes:servers pairs (default 3:9,3:18,5:18,5:30)")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--partition", action="store_true", help="also cut a worker off mid-rollout, then reconnect it")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "CLUSTER.md")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    client = docker.from_env(timeout=600)
    ensure_node_image(client, log=print)
    head = header("A multi-node Swarm made by `sandbox cluster` (issue 23)", "bench/cluster.py", argv,
                  [f"the local engine is the manager; {args.nodes - 1} workers are engines in containers"])
    body: list[str] = []
    up_s = cluster_up(args.nodes)
    try:
        status = json.loads(must(sandbox("cluster", "status", "--json")[0], "cluster status"))
        body += ["## `sandbox cluster up` and `down`", "",
                 f"- `sandbox cluster up --nodes {args.nodes}`: {up_s:.1f} s (the node image already built; "
                 "it includes copying the toy's two app images to each worker)",
                 f"- nodes: {', '.join(n['hostname'] + ' (' + n['role'] + ', ' + n['state'] + ')' for n in status)}"]
        with tempfile.TemporaryDirectory(prefix="cluster-compare-") as tmp:
            compared = compare_section(args.size, Path(tmp))
        faults = fault_section("kill", args.size, client)
        if args.partition:
            faults += fault_section("partition", args.size, client)
    finally:
        down_s = cluster_down()
    body += [f"- `sandbox cluster down`: {down_s:.1f} s", "", *compared, *faults]
    if not args.skip_sweep:
        pairs = [(int(a), int(b)) for a, b in (p.split(":") for p in args.sweep.split(",") if p)]
        body += sweep_section(pairs)
    text = "\n".join([*head, *body])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a booting server's latency cost goes (issue 18, section 1), written to bench/BOOT_COST.md.

    .venv/bin/python bench/boot_cost.py [--size 9] [--rate 200] [--window 7] [--repeat 3] [--reads 45]
                                        [--out bench/BOOT_COST.md]

A fleet of ``--size`` toy servers serves a fixed request rate (an open-loop aiohttp client in this
process, so the rate does not fall when answers slow down). Each window measures the p99 of the
requests sent in it while one thing happens to ``--size`` extra containers of the app image that
the load balancer never routes to:

- ``steady``: nothing (the baseline);
- ``create``: the engine creates them (``docker create``: no process, no network endpoint);
- ``start-net``: they are started on the fleet's network, all at once (network attach + the app's
  own start);
- ``start-nonet``: the same with ``network_mode=none`` (the app's start without a network attach);
- ``start-one-by-one``: started on the network one after another (the engine never does two at once);
- ``archive``: ``--reads`` exports of one small file (``/srv/app/VERSION``) out of the running ones,
  8 at a time (how the controller read a toy server's version, 45 times in a one-at-a-time rollout
  of 9 before issue 18's fix);
- ``inspect``: as many plain inspections (``docker inspect``) of the same containers.

Every container carries the project's labels and the project is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import docker
from provenance import PY, publish
from provenance import header as provenance_header  # bench/provenance.py (this script's directory)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sandbox.fleet import labels as L  # noqa: E402  (after the repo is on the path)
from sandbox.fleet.images import image_set  # noqa: E402
from sandbox.fleet.runtime import network_name  # noqa: E402
from sandbox.ports import free_port  # noqa: E402

WINDOWS = ("steady", "create", "start-net", "start-nonet", "start-one-by-one", "archive", "inspect")


def sandbox(*args: str) -> None:
    subprocess.run([*PY, *args], cwd=REPO, check=True, capture_output=True, text=True, timeout=600)


def p99(values: list[float]) -> float | None:
    if len(values) < 100:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def open_loop(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Send ``rate`` requests a second for ``seconds`` whatever the answers do; (latencies ms, errors)."""
    latencies: list[float] = []
    errors = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status >= 500:
                    errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
            return
        latencies.append((time.perf_counter() - t0) * 1000)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as session:
        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
    return latencies, errors


def extra_containers(client: docker.DockerClient, project: str, image: str, count: int,
                     network: str | None) -> list[Any]:
    labels = L.project_labels(project, L.ROLE_APP, **{L.LABEL_SLOT: "bench"})
    options: dict[str, Any] = {"network": network} if network else {"network_mode": "none"}
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: client.containers.create(
            image, name=f"{project}-extra-{i}", labels=labels, detach=True, read_only=True,
            tmpfs={"/tmp": "size=16m"}, user="10001:10001", mem_limit="128m", **options), range(count)))


def start_all(containers: list[Any], at_once: bool) -> None:
    if at_once:
        with ThreadPoolExecutor(len(containers)) as pool:
            list(pool.map(lambda c: c.start(), containers))
    else:
        for c in containers:
            c.start()


def read_each(containers: list[Any], reads: int, read: Callable[[Any], Any]) -> None:
    """``reads`` calls of ``read`` over ``containers`` in turn, 8 at a time (the controller's pool)."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: read(containers[i % len(containers)]), range(reads)))


def remove(containers: list[Any]) -> None:
    with ThreadPoolExecutor(max(1, len(containers))) as pool:
        list(pool.map(lambda c: c.remove(force=True), containers))


async def window(url: str, args: argparse.Namespace, action: Callable[[], Any] | None) -> dict[str, Any]:
    """The p99 of the requests sent while ``action`` runs (in a thread) and until the window ends."""
    load = asyncio.create_task(open_loop(url, args.rate, args.window))
    took = None
    if action is not None:
        t0 = time.perf_counter()
        await asyncio.to_thread(action)
        took = round(time.perf_counter() - t0, 2)
    latencies, errors = await load
    value = p99(latencies)
    return {"p99_ms": None if value is None else round(value, 2), "requests": len(latencies), "errors": errors,
            "action_s": took}


async def one_round(client: docker.DockerClient, url: str, project: str, image: str,
                    args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    net = network_name(project)
    out = {"steady": await window(url, args, None)}
    made: list[Any] = []

    def create() -> None:
        made.extend(extra_containers(client, project, image, args.size, net))
    out["create"] = await window(url, args, create)
    out["start-net"] = await window(url, args, lambda: start_all(made, at_once=True))
    remove(made)
    made.clear()
    made.extend(extra_containers(client, project, image, args.size, None))
    out["start-nonet"] = await window(url, args, lambda: start_all(made, at_once=True))
    remove(made)
    made.clear()
    made.extend(extra_containers(client, project, image, args.size, net))
    out["start-one-by-one"] = await window(url, args, lambda: start_all(made, at_once=False))
    await asyncio.sleep(2)  # the apps' own start is over
    out["archive"] = await window(url, args, lambda: read_each(
        made, args.reads, lambda c: b"".join(c.get_archive("/srv/app/VERSION")[0])))
    out["inspect"] = await window(url, args, lambda: read_each(
        made, args.reads, lambda c: client.api.inspect_container(c.id)))
    remove(made)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, open loop")
    parser.add_argument("--window", type=float, default=7.0, help="seconds per window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reads", type=int, default=45, help="archive exports / inspections per window")
    parser.add_argument("--project", default="bench-boot")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    port = free_port()
    client = docker.from_env(timeout=120)
    image = image_set().app["v2"]
    sandbox("up", "--project", args.project, "--size", str(args.size), "--port", str(port))
    rounds = []
    try:
        for _ in range(args.repeat):
            rounds.append(asyncio.run(one_round(client, f"http://127.0.0.1:{port}/", args.project, image, args)))
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        sandbox("down", "--project", args.project)
    lines = provenance_header("Where a booting server's latency cost goes", "bench/boot_cost.py", sys.argv[1:], [
        f"{args.size} serving toy servers at {args.rate:g} req/s (open loop, GET /), {args.window:g} s windows; "
        f"each window acts on {args.size} extra containers of the app image the LB never routes to",
        "p99 of the requests sent in the window, in ms; action_s: how long the engine calls took"])
    lines += ["| window | " + " | ".join(f"round {i + 1} p99 ms" for i in range(len(rounds))) + " | median | "
              "action s (median) |", "|---|" + "---|" * (len(rounds) + 2)]
    for name in WINDOWS:
        values = [r[name]["p99_ms"] for r in rounds]
        known = [v for v in values if v is not None]
        took = [r[name]["action_s"] for r in rounds if r[name]["action_s"] is not None]
        median = f"{statistics.median(known):g}" if known else "-"
        median_took = f"{statistics.median(took):g}" if took else "-"
        cells = " | ".join("-" if v is None else f"{v:g}" for v in values)
        lines.append(f"| {name} | {cells} | {median} | {median_took} |")
    lines += ["", "Raw rounds:", "", "```json", json.dumps(rounds, indent=1), "```", ""]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

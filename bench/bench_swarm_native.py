"""Swarm's own rolling update, measured: does `service update` with this config drop requests?

One service with N replicas (dnsrr, on the project's overlay) behind the sandbox's NGINX; the
same Locust load and the same measurement as `sandbox roll`. The controller does not roll
anything: it calls `service update` (new image, the update config below) and only keeps the
load balancer's attached set equal to the tasks that run and are meant to run (desired state
running), polled every 0.2 s. With `--healthcheck`, a task counts as running only once its
HEALTHCHECK (GET /healthz) passes, so start-first waits for readiness.

    python bench/bench_swarm_native.py --size 9 --order stop-first --parallelism 1
    python bench/bench_swarm_native.py --size 9 --order start-first --parallelism 1 --healthcheck

Needs a swarm manager (`docker swarm init --advertise-addr 127.0.0.1`). Removes what it created.
This is a bench, not yet a `--strategy swarm-native` of the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox.fleet.balancer import NginxBalancer
from sandbox.fleet.loadbalancer import Upstream
from sandbox.fleet.swarm import SwarmEngine, UpdatePolicy
from sandbox.load.run import LoadRun, LoadSettings
from sandbox.ports import free_port
from sandbox.results.measure import measure

START_TIMEOUT_S = 120.0


async def follow(rt: SwarmEngine, balancer: NginxBalancer, service_id: str,
                 stop: asyncio.Event, events: list[Any]) -> None:
    """Keep the attached set equal to the serving tasks until ``stop``."""
    current: dict[str, str] = {}
    while not stop.is_set():
        want, _ = await rt.serving(balancer.project, service_id)
        if want != current:
            await balancer.apply([Upstream(name=k[:12], address=v, version="?") for k, v in sorted(want.items())])
            events.append({"t": time.time(), "phase": "lb-sync", "instance": None,
                           "detail": {"attached": len(want)}})
            current = want
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rt = SwarmEngine.connect()
    images = await rt.ensure_images()
    project, port = f"swn{secrets.token_hex(3)}", free_port()
    events: list[Any] = []
    stop = asyncio.Event()
    workdir = Path(tempfile.mkdtemp(prefix="swarm-native-"))
    try:
        await rt.ensure_network(project)
        await rt.start_lb(project, port, images.lb)
        balancer = NginxBalancer(rt, project, port)
        await balancer.apply([], rollout=None, size=args.size, sticky=False, retry=False,
                             client_keepalive_s=0, app_env={})
        service_id = await rt.start_replicated(project, "v1", images.app["v1"],
                                               {"APP_STOP_DELAY": f"{args.app_stop_delay:g}"}, args.size,
                                               healthcheck=args.healthcheck)
        follower = asyncio.create_task(follow(rt, balancer, service_id, stop, events))
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(balancer.state.upstreams) < args.size:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(balancer.state.upstreams)} of {args.size} tasks serve after "
                                 f"{START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.2)
        load = LoadRun(balancer.url, LoadSettings(users=args.users), workdir / "requests.jsonl")
        await load.start()
        await asyncio.sleep(args.warmup)
        t0 = time.time()
        events.append({"t": t0, "phase": "rollout-start", "instance": None})
        await rt.update_image(service_id, images.app["v2"], UpdatePolicy(
            parallelism=args.parallelism, delay_s=args.delay, order=args.order,
            failure_action=args.failure_action, stop_grace_s=args.stop_grace_period))
        state = ""
        while state not in ("completed", "paused", "rollback_completed", "rollback_paused"):
            await asyncio.sleep(0.2)
            state = await rt.update_state(service_id)
        t1 = time.time()
        events.append({"t": t1, "phase": "rollout-end", "instance": None, "detail": {"outcome": state}})
        await asyncio.sleep(args.cooldown)
        await load.stop()
        stop.set()
        await follower
        measured = measure(load.all_rows(), events)
        return {"order": args.order, "parallelism": args.parallelism, "delay_s": args.delay,
                "healthcheck": args.healthcheck, "app_stop_delay_s": args.app_stop_delay,
                "size": args.size, "users": args.users,
                "update_state": state, "duration_s": round(t1 - t0, 1),
                "requests": {"total": measured.requests.total, "dropped": measured.requests.dropped,
                             "by_version": dict(measured.requests.by_version)},
                "stall_s": measured.stall_s, "lb_syncs": sum(e["phase"] == "lb-sync" for e in events)}
    finally:
        stop.set()
        await rt.down(project)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=9)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--order", choices=("stop-first", "start-first"), default="stop-first")
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--delay", type=float, default=0.0, help="--update-delay, seconds")
    p.add_argument("--failure-action", choices=("pause", "rollback", "continue"), default="pause")
    p.add_argument("--stop-grace-period", type=float, default=20.0)
    p.add_argument("--healthcheck", action="store_true", help="a HEALTHCHECK on /healthz gates 'running'")
    p.add_argument("--app-stop-delay", type=float, default=0.0,
                   help="APP_STOP_DELAY: seconds the app keeps serving after SIGTERM (a preStop sleep)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--cooldown", type=float, default=3.0)
    print(json.dumps(asyncio.run(run(p.parse_args()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``swarm-native``: hand the rollout to Swarm itself, and measure what users saw.

A separate path from the plan/controller: one service with N replicas behind the same
NGINX, the same Locust load and the same measurement and report. Swarm runs
``service update`` with the user's update config; the sandbox only keeps the load
balancer's attached set equal to the tasks that run and are meant to run (polled every
0.2 s). It answers "with this update config, does my service drop requests?".

Used by ``compare`` (``--strategies swarm-native:stop-first,swarm-native:start-first``) on
``--engine swarm``; each run starts and removes its own fleet.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.config import Settings
from sandbox.errors import RolloutError, SandboxError, UsageError
from sandbox.fleet.balancer import NginxBalancer, lb_read_timeout_s
from sandbox.fleet.images import ImageSet
from sandbox.fleet.loadbalancer import LbRow, LoadBalancer, Upstream
from sandbox.fleet.swarm import SwarmEngine, UpdatePolicy
from sandbox.load.rows import parse_think_ms
from sandbox.load.run import LoadEnd, LoadRun, LoadSettings
from sandbox.results.measure import MeasureSettings, measure
from sandbox.results.model import Report
from sandbox.results.records import Event
from sandbox.results.report import build_report, write_report_dir
from sandbox.results.verdict import Limits
from sandbox.rollout.mixed import not_run

log = logging.getLogger("sandbox.rollout.swarm_native")

NATIVE = "swarm-native"
ORDERS = ("stop-first", "start-first")
FOLLOW_S = 0.2
START_TIMEOUT_S = 120.0
UPDATE_TIMEOUT_S = 1800.0
DONE_STATES = ("completed", "paused", "rollback_completed", "rollback_paused")
APP_ENV_DEFAULTS = {"APP_STOP_DELAY": "0"}  # as the controller's: the user's `app_env` wins


def parse_order(spec: str) -> str:
    """``"swarm-native:start-first"`` -> "start-first" (default stop-first); UsageError if bad."""
    _, _, order = spec.strip().partition(":")
    order = order or "stop-first"
    if order not in ORDERS:
        raise UsageError(f"strategies: {spec!r}: swarm-native takes :stop-first or :start-first")
    return order


def update_policy(settings: Settings, order: str) -> UpdatePolicy:
    """The settings' update config for Swarm's ``service update``, in ``order``."""
    return UpdatePolicy(parallelism=settings.update_parallelism, delay_s=settings.update_delay, order=order,
                        failure_action=settings.update_failure_action, stop_grace_s=settings.stop_grace_period)


async def _follow(runtime: SwarmEngine, balancer: LoadBalancer, service_id: str, stop: asyncio.Event,
                  events: list[Event], versions: dict[str, str], peak: list[int]) -> None:
    """Keep the attached set equal to the serving tasks until ``stop``; an event per change."""
    current: dict[str, str] = {}
    while not stop.is_set():
        want, running = await runtime.serving(balancer.project, service_id)
        peak[0] = max(peak[0], running)
        if want != current:
            await balancer.apply([Upstream(name=k[:12], address=v, version=versions.get(k, "?"))
                                  for k, v in sorted(want.items())])
            for k in want.keys() - current.keys():
                events.append({"t": time.time(), "phase": "attach", "instance": k[:12], "address": want[k]})
            for k in current.keys() - want.keys():
                events.append({"t": time.time(), "phase": "detach", "instance": k[:12], "address": current[k]})
            current = want
        await asyncio.sleep(FOLLOW_S)


async def rehearse(settings: Settings, *, runtime: SwarmEngine, images: ImageSet, order: str,
                   report_dir: Path | None = None, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Start a fleet of ``settings.size`` replicas on v1, let Swarm update it to v2 under load,
    report; remove the fleet whatever happened. ``settings.project`` must not exist yet."""
    project, size = settings.project, settings.size
    events: list[Event] = []
    stop = asyncio.Event()
    peak = [0]
    workdir = Path(tempfile.mkdtemp(prefix=f"rolling-sandbox-{project}-"))
    rows_path = (report_dir or workdir) / "requests.jsonl"
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
    follower: asyncio.Task[None] | None = None
    load: LoadRun | None = None
    try:
        await runtime.ensure_network(project)
        await runtime.start_lb(project, settings.port, images.lb)
        balancer = NginxBalancer(runtime, project, settings.port)
        await balancer.apply([], rollout=None, sticky=settings.sticky, size=size, retry=settings.lb_retry,
                             client_keepalive_s=65 if settings.client_keepalive else 0, app_env=dict(settings.app_env),
                             read_timeout_s=lb_read_timeout_s(settings.client_timeout_s), lb_apply=settings.lb_apply)
        env = {**APP_ENV_DEFAULTS, **settings.app_env}
        service_id = await runtime.start_replicated(project, "v1", images.app["v1"], env, size,
                                                    healthcheck=settings.swarm_healthcheck)
        follower = asyncio.create_task(_follow(runtime, balancer, service_id, stop, events, {}, peak))
        await _until(lambda: len(balancer.state.upstreams) >= size, START_TIMEOUT_S,
                     f"{size} replicas did not all serve within {START_TIMEOUT_S:g} s")
        load = LoadRun(balancer.url, LoadSettings(
            users=settings.users, spawn_rate=settings.spawn_rate, locustfile=settings.locustfile,
            v2_mode=settings.v2_mode, workers=settings.load_workers, think_s=parse_think_ms(settings.think_ms),
            timeout_s=settings.client_timeout_s), rows_path)
        await load.start()
        events.append({"t": time.time(), "phase": "load-start", "instance": None})
        await asyncio.sleep(settings.warmup_s)
        say(f"{project}: service update to v2, {order}, parallelism {settings.update_parallelism}")
        t0 = time.time()
        events.append({"t": t0, "phase": "rollout-start", "instance": None})
        await runtime.update_image(service_id, images.app["v2"], update_policy(settings, order))
        state = await _update_done(runtime, service_id)
        t1 = time.time()
        events.append({"t": t1, "phase": "rollout-end", "instance": None, "detail": {"outcome": state}})
        await asyncio.sleep(settings.cooldown_s)
        # stamped when asked: the second Locust takes to exit is not a stall of the fleet
        events.append({"t": time.time(), "phase": "load-stop", "instance": None})
        await load.stop()
        try:
            nginx_rows: list[LbRow] | None = await balancer.access_log()
        except SandboxError:
            nginx_rows = None
    finally:
        stop.set()
        if follower is not None:
            follower.cancel()
        if load is not None:
            await load.stop()
        await runtime.down(project)
    report = _native_report(settings, order, load.all_rows(), events, state, t1 - t0, peak[0],
                            load_end=load.end, nginx=nginx_rows)
    out = report.to_json()
    if report_dir is not None:
        out["files"] = {k: str(v) for k, v in write_report_dir(report, report_dir).items()}
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def _native_report(settings: Settings, order: str, rows: list[Any], events: list[Event], state: str,
                   duration_s: float, peak: int, *, load_end: LoadEnd | None = None,
                   nginx: list[LbRow] | None = None) -> Report:
    """The report of one swarm-native update, like every other rehearsal's (pure): ``load_end`` says
    whether the load generator ran whole (None: unknown, which fails ``load_alive``), ``nginx`` is the
    LB's log (None: not read)."""
    measured = measure(rows, events, nginx=nginx, settings=MeasureSettings(slow_ms=settings.slow_ms),
                       sent=load_end.sent if load_end else None)
    meta = {"project": settings.project, "kind": "roll", "strategy": f"{NATIVE}:{order}", "size": settings.size,
            "batch": settings.update_parallelism, "mode": "replace", "from_version": "v1", "to_version": "v2",
            "outcome": "completed" if state == "completed" else f"swarm: {state}",
            "duration_s": round(duration_s, 3), "peak_instances": peak, "sticky": settings.sticky,
            "lb_apply": settings.lb_apply, "users": settings.users, "load": True,
            "load_alive": None if load_end is None else not (load_end.died_early or load_end.killed),
            # Swarm rolls its tasks itself: no step of ours to run a check after, so each one is said not run
            "mixed_checks": not_run(settings.mixed_checks, "not run: Swarm's own update has no step to run it at")}
    return build_report(meta=meta, measured=measured, steps=events, limits=Limits.from_settings(settings))


async def _update_done(runtime: SwarmEngine, service_id: str) -> str:
    """Poll Swarm's update state until it completes, pauses or rolls back; return it."""
    state = ""
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    while state not in DONE_STATES:
        if time.monotonic() > deadline:
            raise RolloutError(f"Swarm's update did not finish within {UPDATE_TIMEOUT_S:g} s (state {state!r})")
        await asyncio.sleep(FOLLOW_S)
        state = await runtime.update_state(service_id)
    return state


async def _until(cond: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RolloutError(message)
        await asyncio.sleep(FOLLOW_S)

"""``swarm-native``: hand the rollout to Swarm itself, and measure what users saw.

Swarm rolls instead of the plan/controller: one service with N replicas behind the same
NGINX, the same load phases (``LoadPhases``) and the same report (``rollout_report``) as
every rehearsal, rolling the fleet's declared versions. Swarm runs
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
from sandbox.fleet import versions
from sandbox.fleet.balancer import lb_read_timeout_s
from sandbox.fleet.images import ImageSet
from sandbox.fleet.loadbalancer import LbRow, LoadBalancer, Upstream
from sandbox.fleet.swarm import SwarmEngine, UpdateOrder, UpdatePolicy
from sandbox.results.records import Event
from sandbox.results.report import write_report_dir
from sandbox.rollout.load_phases import LoadPhases
from sandbox.rollout.mixed import not_run
from sandbox.rollout.rehearsal import Collected, Deps, Prepared, Ran, fleet_history, rollout_report

log = logging.getLogger("sandbox.rollout.swarm_native")

NATIVE = "swarm-native"
ORDERS: tuple[UpdateOrder, ...] = ("stop-first", "start-first")
FOLLOW_S = 0.2
START_TIMEOUT_S = 120.0
UPDATE_TIMEOUT_S = 1800.0
DONE_STATES = ("completed", "paused", "rollback_completed", "rollback_paused")
APP_ENV_DEFAULTS = {"APP_STOP_DELAY": "0"}  # as the controller's: the user's `app_env` wins


def parse_order(spec: str) -> UpdateOrder:
    """``"swarm-native:start-first"`` -> "start-first" (default stop-first); UsageError if bad."""
    _, _, order = spec.strip().partition(":")
    order = order or "stop-first"
    if order not in ORDERS:
        raise UsageError(f"strategies: {spec!r}: swarm-native takes :stop-first or :start-first")
    return order


def update_policy(settings: Settings, order: UpdateOrder) -> UpdatePolicy:
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
            # version "": not known here (the admin body takes a version name or none, never "?")
            await balancer.apply([Upstream(name=k[:12], address=v, version=versions.get(k, ""))
                                  for k, v in sorted(want.items())])
            for k in want.keys() - current.keys():
                events.append({"t": time.time(), "phase": "attach", "instance": k[:12], "address": want[k]})
            for k in current.keys() - want.keys():
                events.append({"t": time.time(), "phase": "detach", "instance": k[:12], "address": current[k]})
            current = want
        await asyncio.sleep(FOLLOW_S)


async def rehearse(settings: Settings, *, runtime: SwarmEngine, images: ImageSet, order: UpdateOrder,
                   report_dir: Path | None = None, say: Callable[[str], None] = log.info,
                   deps: Deps | None = None) -> dict[str, Any]:
    """Start a fleet of ``settings.size`` replicas on the first declared version (``settings.version``),
    let Swarm update it to the last (``settings.to_version``) under load, report like every rehearsal;
    remove the fleet whatever happened. ``settings.project`` must not exist yet. ``deps``: the
    balancer, the load and its tick (tests pass fakes)."""
    deps = deps or Deps()
    prepared = native_plan(settings, images, order)
    project, size = settings.project, settings.size
    events: list[Event] = []
    stop = asyncio.Event()
    peak = [0]
    workdir = Path(tempfile.mkdtemp(prefix=f"rolling-sandbox-{project}-"))
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
    follower: asyncio.Task[None] | None = None
    load = LoadPhases(settings, events=events, make_load=deps.load, say=say, tick_s=deps.tick_s)
    started = time.time()
    try:
        await runtime.ensure_network(project)
        await runtime.start_lb(project, settings.port, images.lb)
        balancer = deps.balancer(runtime, project, settings.port)
        await balancer.apply([], rollout=None, sticky=settings.sticky, size=size, retry=settings.lb_retry,
                             client_keepalive_s=65 if settings.client_keepalive else 0, app_env=dict(settings.app_env),
                             read_timeout_s=lb_read_timeout_s(settings.client_timeout_s), lb_apply=settings.lb_apply)
        service_id = await runtime.start_replicated(project, prepared.source, images.app[prepared.source],
                                                    prepared.env, size, healthcheck=settings.swarm_healthcheck)
        follower = asyncio.create_task(_follow(runtime, balancer, service_id, stop, events, {}, peak))
        await _until(lambda: len(balancer.state.upstreams) >= size, START_TIMEOUT_S,
                     f"{size} replicas did not all serve within {START_TIMEOUT_S:g} s")
        await load.warmup(balancer.url, (report_dir or workdir) / "requests.jsonl")
        say(f"{project}: service update to {prepared.target}, {order}, parallelism {settings.update_parallelism}")
        t0 = time.time()
        events.append({"t": t0, "phase": "rollout-start", "instance": None, "version": prepared.target,
                       "detail": {"from": prepared.source, "to": prepared.target, "strategy": prepared.strategy,
                                  "kind": prepared.kind}})
        await runtime.update_image(service_id, images.app[prepared.target], update_policy(settings, order))
        state = await _update_done(runtime, service_id)
        t1 = time.time()
        events.append({"t": t1, "phase": "rollout-end", "instance": None, "detail": {"outcome": state}})
        await load.cooldown()
        lb = balancer.state
        try:
            nginx_rows: list[LbRow] | None = await balancer.access_log()
        except SandboxError:  # not read: the report says ``unrecorded`` is unknown
            nginx_rows = None
    finally:
        stop.set()
        if follower is not None:
            follower.cancel()
        await load.stop()
        await runtime.down(project)
    ran = Ran(outcome="completed" if state == "completed" else f"swarm: {state}", message="", started=started,
              t_start=t0, t_end=t1, peak=peak[0], load=load.ran, load_alive=load.alive,
              # Swarm rolls its tasks itself: no step of ours to run a check after, so each one is said not run
              mixed_checks=not_run(settings.mixed_checks, "not run: Swarm's own update has no step to run it at"))
    collected = Collected(rows=load.rows(), nginx_rows=nginx_rows or [], events=events,
                          history=fleet_history([], events), lb=lb, load_end=load.end(),
                          lb_log_read=nginx_rows is not None, long_lived_rows=load.long_lived_rows())
    report = rollout_report(settings, prepared, ran, collected)
    out = report.to_json()
    if report_dir is not None:
        out["files"] = {k: str(v) for k, v in write_report_dir(report, report_dir).items()}
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def native_plan(settings: Settings, images: ImageSet, order: str) -> Prepared:
    """What a swarm-native run rolls (pure): the fleet's declared versions, from ``settings.version``
    (default the first) to ``settings.to_version`` (default the last), Swarm's parallelism as the batch."""
    source = versions.pick(images.app, settings.version, default_last=False, what="version")
    target = versions.pick(images.app, settings.to_version, default_last=True, what="to")
    return Prepared(kind="roll", source=source, target=target, strategy=f"{NATIVE}:{order}", size=settings.size,
                    env={**APP_ENV_DEFAULTS, **settings.app_env}, instances=[], steps=[],
                    batch=settings.update_parallelism, mode="replace", versions=tuple(images.app))


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

"""What each CLI command does, as keyword-only coroutines the CLI (and tests) call.

Each one takes a validated :class:`~sandbox.config.Settings`; the CLI only
parses flags, builds the settings and prints what comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.config import BATCHED_STRATEGIES, IN_PLACE_STRATEGIES, STRATEGIES, Settings, check_port_free
from sandbox.errors import BalancerError, NotFoundError, RolloutError, SandboxError, UsageError
from sandbox.fleet.balancer import Balancer
from sandbox.fleet.images import ImageSet, ensure_images
from sandbox.fleet.runtime import Instance, Runtime
from sandbox.load.run import LoadRun, LoadSettings
from sandbox.results.measure import (
    AddressHistory,
    MeasureSettings,
    address_history_from_events,
    attribute_versions,
    measure,
)
from sandbox.results.records import Event
from sandbox.results.report import build_report, write_report_dir
from sandbox.rollout import plan as planner
from sandbox.rollout.executor import Controller, Interrupted
from sandbox.ui.progress import Progress, TrafficMonitor, make_progress

log = logging.getLogger("sandbox.commands")

MIN_SAMPLE_FOR_ERROR_RATIO = 30


def other_version(version: str) -> str:
    return "v1" if version == "v2" else "v2"


# -- images ---------------------------------------------------------------------------------------
async def images(*, runtime: Runtime, force: bool = False, say: Callable[[str], None] = log.info) -> ImageSet:
    """Build the images that are missing (all of them with ``force``)."""
    return await asyncio.to_thread(ensure_images, runtime.client, log=say, force=force)


# -- up / status / down ---------------------------------------------------------------------------
async def up(settings: Settings, *, runtime: Runtime, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Start ``settings.size`` servers on ``settings.version`` behind NGINX on 127.0.0.1:``port``.

    Bad input (a taken port, an existing fleet) raises UsageError before anything is created.
    A failure halfway removes what this call created.
    """
    project = settings.project
    if await runtime.has_project(project):
        raise UsageError(f"project: {project!r} is already up; `sandbox status` shows it, `sandbox down` removes it")
    check_port_free(settings.port)
    image_set = await asyncio.to_thread(ensure_images, runtime.client, log=say)
    try:
        await runtime.ensure_network(project)
        await runtime.start_lb(project, settings.port, image_set.lb)
        balancer = Balancer(runtime, project, settings.port)
        controller = Controller(runtime, balancer, settings, image_set)
        await balancer.apply([], rollout=None, sticky=settings.sticky, size=settings.size,
                            retry=settings.lb_retry, client_keepalive_s=65 if settings.client_keepalive else 0,
                            app_env=dict(settings.app_env))
        steps = planner.plan([], planner.PlanSettings(size=settings.size, to_version=settings.version,
                                                       strategy="double-half"))
        await controller.execute(steps, settings.version, env=dict(settings.app_env))
    except BaseException:
        with suppress(Exception):
            await runtime.down(project)
        raise
    say(f"{settings.size} servers on {settings.version} behind http://127.0.0.1:{settings.port}")
    return await status(settings, runtime=runtime)


async def status(settings: Settings, *, runtime: Runtime) -> dict[str, Any]:
    """The fleet as Docker and the load balancer's live config see it."""
    lb, instances = await runtime.require_fleet(settings.project)
    port = await runtime.lb_port(settings.project)
    balancer = Balancer(runtime, settings.project, port or 0)
    try:
        state = await balancer.load()
        upstreams = state.upstreams
    except SandboxError:
        state, upstreams = None, []
    attached = {u.name for u in upstreams}
    return {
        "project": settings.project,
        "lb": {
            "url": f"http://127.0.0.1:{port}",
            "state": lb.status,
            "upstreams": [u.address for u in upstreams],
            "size": state.size if state else None,
            "sticky": state.sticky if state else None,
            "retry": state.retry if state else None,
            "client_keepalive_s": state.client_keepalive_s if state else None,
            "rollout": state.rollout if state else None,
        },
        "instances": [
            {"name": i.name, "slot": i.slot, "version": i.version, "state": i.state,
             "address": i.address, "attached": i.name in attached}
            for i in instances
        ],
    }


async def down(settings: Settings, *, runtime: Runtime) -> dict[str, int]:
    """Remove this project's containers, volumes and network; nothing else."""
    return await runtime.down(settings.project)


# -- roll / rollback ------------------------------------------------------------------------------
@dataclass
class RolloutResult:
    report: dict[str, Any]
    exit_code: int
    message: str


async def roll(
    settings: Settings,
    *,
    runtime: Runtime,
    to_version: str | None = None,
    kind: str = "roll",
    progress: Progress | None = None,
    report_dir: Path | None = None,
    install_sigint: bool = True,
) -> RolloutResult:
    """Move the fleet to ``to_version`` (default ``settings.to_version``) under live traffic.

    ``kind="rollback"`` reverts the last roll recorded in the load balancer's state.
    Raises NotFoundError (no fleet), UsageError (nothing to roll back); a failed
    rollout is reported in the result, not raised.
    """
    project = settings.project
    await runtime.require_fleet(project)
    port = await runtime.lb_port(project)
    if port is None:
        raise NotFoundError(f"project {project!r}: the load balancer has no port label")
    balancer = Balancer(runtime, project, port)
    state = await balancer.load()
    if kind == "rollback":
        last = state.rollout or {}
        if last.get("kind") != "roll" or not last.get("from"):
            raise UsageError("rollback: nothing to roll back (no roll recorded for this fleet)")
        target = str(last["from"])
    else:
        target = to_version or settings.to_version
    source = other_version(target)
    image_set = await asyncio.to_thread(ensure_images, runtime.client)
    listed = await runtime.instances(project)
    size = state.size or len({i.slot for i in listed})
    progress = progress or make_progress()
    events: list[Event] = []

    def on_event(event: Event) -> None:
        progress.event(event)

    controller = Controller(runtime, balancer, settings, image_set, on_event=on_event)
    controller.events = events
    for name in await controller.reconcile(listed):
        progress.line(f"took {name} out of the load balancer: its container is gone or not running")
    instances, servers = await controller.fleet(listed)
    strategy = settings.strategy
    plan_settings = planner.PlanSettings(size=size, to_version=target, strategy=strategy,  # type: ignore[arg-type]
                                         batch=settings.batch, mode=settings.mode)
    steps = planner.plan(servers, plan_settings)
    # the fleet's own environment (from `up --env`) always; --set-env only for the new version
    env = dict(state.app_env) if kind == "rollback" else {**state.app_env, **settings.set_env}
    if not steps:
        report = build_report(meta={"project": project, "kind": kind, "strategy": strategy, "size": size,
                                    "mode": settings.mode, "from_version": source, "to_version": target,
                                    "outcome": "completed", "duration_s": 0.0, "peak_instances": len(instances)},
                              measured=measure([], []), steps=[])
        return RolloutResult(report=report, exit_code=0, message=f"already on {target}: nothing to do")

    workdir = Path(tempfile.mkdtemp(prefix=f"rolling-sandbox-{project}-"))
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
    rows_path = (report_dir or workdir) / "requests.jsonl"
    load: LoadRun | None = None
    monitor = TrafficMonitor()
    outcome = "completed"
    message = ""
    started = time.time()
    t_roll_start = t_roll_end = None
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if hasattr(progress, "seed"):
        attached_names = {u.name for u in balancer.state.upstreams}
        for inst in instances:
            progress.seed(inst.name, inst.slot, inst.version, inst.name in attached_names)
    ticker: asyncio.Task[None] | None = None
    executing = asyncio.Event()
    try:
        with progress:
            if install_sigint:
                def first_interrupt() -> None:
                    progress.line("Ctrl-C: finishing the current step, then stopping (Ctrl-C again to cut it short)")
                sigint_state = {"count": 0}

                def on_sigint() -> None:
                    sigint_state["count"] += 1
                    if sigint_state["count"] == 1:
                        controller.stop_requested.set()
                        first_interrupt()
                    elif task is not None and executing.is_set():
                        task.cancel()  # a second Ctrl-C cuts the current step short
                loop.add_signal_handler(signal.SIGINT, on_sigint)
            if settings.load and steps:
                load = LoadRun(balancer.url, LoadSettings(
                    users=settings.users, spawn_rate=settings.spawn_rate, locustfile=settings.locustfile,
                    v2_mode=settings.v2_mode), rows_path)
                await load.start()
                events.append({"t": time.time(), "phase": "load-start", "instance": None})

                async def tick() -> None:
                    while True:
                        monitor.add(load.new_rows())
                        progress.traffic(monitor)
                        await asyncio.sleep(0.5)
                ticker = asyncio.create_task(tick())
                await _sleep_unless(controller.stop_requested, settings.warmup_s)

            def health() -> str | None:
                total, failed = monitor.since_mark()
                if total >= MIN_SAMPLE_FOR_ERROR_RATIO and failed / total > settings.max_error_ratio:
                    return (f"error ratio {failed / total:.1%} ({failed} of {total} requests) is above "
                            f"max_error_ratio {settings.max_error_ratio:.1%}")
                return None

            monitor.mark()
            t_roll_start = time.time()
            controller.emit("rollout-start", None, version=target,
                            detail={"from": source, "to": target, "instances": len(instances),
                                    "strategy": strategy, "kind": kind})
            await balancer.apply(list(balancer.state.upstreams),
                                 rollout={"kind": kind, "from": source, "to": target, "strategy": strategy,
                                          "status": "running"})
            try:
                executing.set()
                await controller.execute(steps, target, env=env, instances=instances,
                                         health=health if kind == "roll" else None, from_version=source)
            except (RolloutError, BalancerError) as exc:
                controller.emit("failed", None, detail={"reason": str(exc)})
                progress.line(f"rollout failed: {exc}")
                if settings.auto_rollback and kind == "roll":
                    outcome, message = await _roll_back(controller, settings, size, source, progress, exc)
                else:
                    outcome = "failed"
                    message = (f"rollout failed: {exc}. The fleet is consistent; `sandbox rollback` reverts it, "
                               f"`sandbox roll --to {target}` tries again.")
            except (Interrupted, asyncio.CancelledError):
                if task is not None:
                    task.uncancel()
                outcome = "interrupted"
                controller.emit("interrupted", None)
                message = (f"interrupted: every attached server is healthy and the load balancer is consistent. "
                           f"`sandbox roll --to {target}` resumes, `sandbox rollback` reverts.")
            finally:
                executing.clear()
            t_roll_end = time.time()
            controller.emit("rollout-end", None, detail={"outcome": outcome})
            # what `rollback` reads next: an automatic rollback is recorded as a completed rollback
            if outcome == "rolled_back":
                record = {"kind": "rollback", "from": target, "to": source, "status": "completed"}
            else:
                record = {"kind": kind, "from": source, "to": target, "status": outcome}
            await balancer.apply(list(balancer.state.upstreams), rollout={**record, "strategy": strategy})
            if load is not None:
                await asyncio.sleep(settings.cooldown_s)
                await load.stop()
                events.append({"t": time.time(), "phase": "load-stop", "instance": None})
                monitor.add(load.new_rows())
    finally:
        if ticker is not None:
            ticker.cancel()
        if install_sigint:
            with suppress(Exception):
                loop.remove_signal_handler(signal.SIGINT)
        if load is not None:
            await load.stop()

    rows = load.all_rows() if load is not None else []
    nginx_rows: list[Any] = []
    if load is not None:
        with suppress(SandboxError):
            t_load = events[0]["t"] if events else started
            nginx_rows = [r for r in await balancer.access_log() if float(r.get("time", 0)) >= t_load - 1]
    history = fleet_history(instances, events)
    measured = measure(rows, events, nginx=nginx_rows, address_history=history,
                       settings=MeasureSettings(slow_budget_s=settings.slow_budget_s))
    meta = {
        "project": project, "kind": kind, "strategy": strategy, "size": size,
        "batch": settings.batch if strategy in BATCHED_STRATEGIES else (size if strategy in (
            "double-half", "blue-green") else 1),
        "mode": settings.mode, "from_version": source, "to_version": target, "outcome": outcome,
        "duration_s": round((t_roll_end or time.time()) - (t_roll_start or started), 3),
        "peak_instances": controller.peak, "sticky": balancer.state.sticky, "users": settings.users if load else 0,
        "load": load is not None, "plan_steps": len(steps),
    }
    report = build_report(meta=meta, measured=measured, steps=events)
    report["attribution"] = attribution(rows, nginx_rows, history)
    if report_dir is not None:
        report["files"] = {k: str(v) for k, v in write_report_dir(report, report_dir).items()}
    shutil.rmtree(workdir, ignore_errors=True)
    dropped = int(report["requests"]["dropped"])
    exit_code = 0
    if outcome == "interrupted":
        exit_code = Interrupted.exit_code
    elif outcome != "completed" or dropped > settings.max_dropped:
        exit_code = 1
    return RolloutResult(report=report, exit_code=exit_code, message=message)


def fleet_history(initial: list[Instance], events: list[Event]) -> AddressHistory:
    """Which version held which address when: the fleet at the start, then the run's events."""
    present: list[Event] = [
        {"t": 0.0, "phase": "start", "instance": i.name, "address": i.address, "version": i.version}
        for i in initial if i.address
    ]
    return address_history_from_events([*present, *events])


def attribution(rows: list[Any], nginx_rows: list[Any], history: AddressHistory) -> dict[str, Any]:
    """Where the version served came from, and how well the two sources agree.

    ``header``: rows whose answer carried X-App-Version; ``compared``: rows that also
    have a version read from NGINX's log (upstream address mapped to its container);
    ``agreement``: the share of those where both say the same (None with nothing to compare).
    """
    from_log = {r["rid"]: r.get("version") for r in attribute_versions(
        [{**r, "version": None} for r in rows], nginx_rows, history)}
    both = [(r.get("version"), from_log.get(r["rid"])) for r in rows
            if r.get("version") and from_log.get(r["rid"])]
    return {
        "header": sum(1 for r in rows if r.get("version")),
        "from_log": sum(1 for v in from_log.values() if v),
        "compared": len(both),
        "agreement": round(sum(a == b for a, b in both) / len(both), 4) if both else None,
    }


async def _roll_back(controller: Controller, settings: Settings, size: int, source: str,
                     progress: Progress, cause: BaseException) -> tuple[str, str]:
    """Roll back to ``source`` with the same care; return (outcome, message)."""
    controller.emit("rollback-start", None, version=source)
    progress.line(f"rolling back to {source}")
    listed = await controller.runtime.instances(controller.project)
    await controller.reconcile(listed)
    listed, servers = await controller.fleet(listed)
    strategy = "rolling" if settings.strategy == "naive" else settings.strategy
    back = planner.plan(servers, planner.PlanSettings(size=size, to_version=source, strategy=strategy,  # type: ignore[arg-type]
                                                       batch=settings.batch, mode=settings.mode))
    try:
        await controller.execute(back, source, env=dict(controller.balancer.state.app_env),
                                 from_version=other_version(source), instances=listed)
    except SandboxError as exc:
        controller.emit("failed", None, detail={"reason": f"rollback: {exc}"})
        return "failed", f"rollout failed ({cause}) and so did the rollback ({exc}); `sandbox status` shows the fleet"
    controller.emit("rollback-end", None, version=source)
    return "rolled_back", f"rolled back to {source}: {cause}"


async def _sleep_unless(flag: asyncio.Event, seconds: float) -> None:
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(flag.wait(), timeout=seconds)




# -- demo / compare -------------------------------------------------------------------------------
async def demo(
    settings: Settings,
    *,
    runtime: Runtime,
    keep: bool = False,
    report_dir: Path | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = log.info,
) -> RolloutResult:
    """One command for a workshop: build what is missing, start the fleet, roll to v2 under
    load, report, and tear down unless ``keep``."""
    say(f"demo: {settings.size} servers on v1, {settings.users} users, rolling to v2 with {settings.strategy}")
    await up(settings, runtime=runtime, say=say)
    try:
        result = await roll(settings, runtime=runtime, to_version="v2", progress=progress, report_dir=report_dir)
    finally:
        if not keep:
            await runtime.down(settings.project)
            say(f"demo: removed project {settings.project} (--keep leaves it running)")
    return result


async def compare(
    settings: Settings,
    *,
    runtime: Runtime,
    strategies: list[str],
    report_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
) -> list[dict[str, Any]]:
    """Run each strategy on a fresh fleet of ``settings.size`` under the same load; one report each.

    Each fleet is its own project (``<project>-<n>``) and is removed afterwards, whatever happened.
    """
    reports: list[dict[str, Any]] = []
    for n, spec in enumerate(strategies, start=1):
        strategy, batch = parse_strategy_spec(spec, settings.batch)
        mode = settings.mode if strategy in IN_PLACE_STRATEGIES else "replace"
        one = dataclasses.replace(settings, project=f"{settings.project}-{n}",
                                  strategy=settings.strategy if strategy == "swarm-native" else strategy,  # type: ignore[arg-type]
                                  mode=mode, batch=batch)
        say(f"compare: {spec} ({n}/{len(strategies)})")
        if await runtime.has_project(one.project):
            await runtime.down(one.project)
        if strategy == "swarm-native":  # Swarm rolls, not the controller: a path of its own
            from sandbox.rollout import swarm_native
            image_set = await asyncio.to_thread(ensure_images, runtime.client, log=say)
            reports.append(await swarm_native.rehearse(
                one, runtime=runtime, images=image_set, order=swarm_native.parse_order(spec),  # type: ignore[arg-type]
                report_dir=(report_dir / spec.replace(":", "-")) if report_dir else None, say=say))
            continue
        await up(one, runtime=runtime, say=say)
        try:
            result = await roll(one, runtime=runtime, to_version="v2", progress=Progress(),
                                report_dir=(report_dir / spec.replace(":", "-")) if report_dir else None)
            reports.append(result.report)
        finally:
            await runtime.down(one.project)
    return reports


def parse_strategy_spec(spec: str, default_batch: int = 1) -> tuple[str, int]:
    """``"rolling:3"`` -> ("rolling", 3); ``"double-half"`` -> ("double-half", 1). UsageError if bad."""
    name, _, batch_text = spec.strip().partition(":")
    if name == "swarm-native":  # compare only, on --engine swarm; ":stop-first" or ":start-first"
        from sandbox.rollout.swarm_native import parse_order
        parse_order(spec)
        return name, 1
    if name not in STRATEGIES:
        raise UsageError(f"strategies: {name!r} must be one of {', '.join(STRATEGIES)}")
    if not batch_text:
        return name, default_batch if name in BATCHED_STRATEGIES else 1
    if not batch_text.isdigit() or int(batch_text) < 1:
        raise UsageError(f"strategies: batch in {spec!r} must be a whole number of at least 1")
    return name, int(batch_text)

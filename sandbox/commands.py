"""What each CLI command does, as keyword-only coroutines the CLI (and tests) call.

Each one takes a validated :class:`~sandbox.config.Settings`; the CLI only
parses flags, builds the settings and prints what comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.config import STRATEGIES, Settings, check_port_free
from sandbox.errors import RolloutError, SandboxError, UsageError, hint
from sandbox.fleet import access, versions
from sandbox.fleet import labels as L
from sandbox.fleet.balancer import NginxBalancer, lb_read_timeout_s
from sandbox.fleet.engine import Engine
from sandbox.fleet.images import ImageSet
from sandbox.fleet.loadbalancer import LoadBalancer
from sandbox.lock import locked
from sandbox.poll import poll
from sandbox.results.compare import compare_json
from sandbox.results.markdown import compare_table
from sandbox.results.model import Report
from sandbox.results.verdict import compare_exit_code
from sandbox.rollout import plan as planner
from sandbox.rollout import steer
from sandbox.rollout import strategies as registry
from sandbox.rollout.executor import Executor
from sandbox.rollout.rehearsal import Kind, Prepared, Rehearsal, RolloutResult, rehearse
from sandbox.ui.progress import Progress

log = logging.getLogger("sandbox.commands")


# -- images ---------------------------------------------------------------------------------------
async def images(*, runtime: Engine, force: bool = False, prune: bool = False,
                 say: Callable[[str], None] = log.info) -> ImageSet:
    """Build the images that are missing (all of them with ``force``), the PostgreSQL one included;
    with ``prune``, then remove older rolling-sandbox images no container uses."""
    image_set = await runtime.ensure_images(say=say, force=force)
    await runtime.ensure_db_image(say=say, force=force)  # `up --service postgres`'s, so that it is there too
    if prune:
        removed = await runtime.prune_images()
        say(f"removed {len(removed)} older images" + (f": {', '.join(removed)}" if removed else ""))
    return image_set


# -- up / status / down ---------------------------------------------------------------------------
@locked("up")
async def up(settings: Settings, *, runtime: Engine, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Start ``settings.size`` servers on ``settings.version`` behind NGINX on 127.0.0.1:``port``.

    Bad input (a taken port, an existing fleet) raises UsageError before anything is created.
    A failure halfway removes what this call created.
    """
    project = settings.project
    if await runtime.has_project(project):
        raise UsageError(f"project: {project!r} is already up; {hint('status', project)} shows it, "
                         f"{hint('down', project)} removes it")
    check_port_free(settings.port)
    image_set = await fleet_images(settings, runtime=runtime, say=say)
    version = versions.pick(image_set.app, settings.version, default_last=False, what="version")
    label = {L.LABEL_VERSIONS: versions.to_label(image_set.app, image_set.toy, image_set.spec)}
    try:
        await runtime.ensure_network(project)
        app_env = dict(settings.app_env)
        if settings.sessions == "shared":  # every server of the fleet, and of every rollout, keeps carts there
            password = access.new_secret()  # recorded with the app env: every later server gets it
            app_env["APP_REDIS"] = await runtime.start_redis(project, image_set.base, password)
            app_env[access.SESSION_PASSWORD_ENV] = password
        if "postgres" in settings.services:  # recorded with the app env: every later server gets it
            db_image = await runtime.ensure_db_image(say=say)
            app_env[access.DATABASE_URL_ENV] = await runtime.start_postgres(project, db_image, access.new_secret())
            await wait_for_database(runtime, project, timeout_s=max(settings.ready_timeout, 60.0), say=say)
        balancer = NginxBalancer(runtime, project, settings.port)
        executor = Executor(runtime, balancer, settings, image_set)
        # the load balancer starts while the app containers do; the first attach waits for it
        lb_ready = asyncio.ensure_future(_start_lb(settings, runtime, balancer, image_set.lb, app_env, label))

        async def lb_before_attach(step: planner.Step) -> None:
            if step.action in ("attach", "reattach", "switch"):
                await lb_ready

        executor.before_step = lb_before_attach
        steps = planner.merge_reloads(planner.plan([], planner.PlanSettings(
            size=settings.size, to_version=version, strategy="double-half")))
        try:
            await executor.execute(steps, version, env=app_env)
        finally:
            await asyncio.gather(lb_ready, return_exceptions=True)
        await lb_ready  # raises what starting the load balancer raised, if anything
    except BaseException:
        with suppress(Exception):
            await runtime.down(project)
        raise
    say(f"{settings.size} servers on {version} behind http://127.0.0.1:{settings.port}")
    return await status(settings, runtime=runtime)


async def wait_for_database(runtime: Engine, project: str, *, timeout_s: float,
                            say: Callable[[str], None] = log.info) -> None:
    """Wait until the project's PostgreSQL server accepts connections (``pg_isready``); raises
    RolloutError naming what the probe last said when it does not within ``timeout_s``."""
    last: list[str] = []

    async def ready() -> bool | None:
        ok, said = await runtime.postgres_ready(project)
        last[:] = [said]
        return True if ok else None

    if await poll(ready, timeout=timeout_s, interval=0.3) is None:
        raise RolloutError(f"the PostgreSQL server of {project!r} was not ready within {timeout_s:g} s"
                           + (f": {last[0]}" if last and last[0] else ""))
    say(f"postgres: {project}-postgres accepts connections")


async def _start_lb(settings: Settings, runtime: Engine, balancer: LoadBalancer, image: str,
                    app_env: dict[str, str], labels: dict[str, str]) -> None:
    await runtime.start_lb(settings.project, settings.port, image, extra_labels=labels)
    await balancer.apply([], rollout=None, sticky=settings.sticky, size=settings.size,
                         retry=settings.lb_retry, client_keepalive_s=65 if settings.client_keepalive else 0,
                         read_timeout_s=lb_read_timeout_s(settings.client_timeout_s), app_env=app_env,
                         lb_apply=settings.lb_apply)



async def fleet_images(settings: Settings, *, runtime: Engine,
                       say: Callable[[str], None] = log.info) -> ImageSet:
    """The images a new fleet runs: the toy app's, or the user's ``--image``/``--build`` versions
    (each checked to exist, each directory built) with the sandbox's own load balancer.

    Raises UsageError for a missing image before anything is built or created.
    """
    if settings.images:  # a missing image fails before anything is built
        await runtime.resolve_versions(settings.project, settings.images, {})
    image_set = await runtime.ensure_images(say=say)
    if not (settings.images or settings.builds):
        return dataclasses.replace(image_set, spec=settings.app_spec())
    app = await runtime.resolve_versions(settings.project, settings.images, settings.builds, say)
    return dataclasses.replace(image_set, app=app, toy=False, spec=settings.app_spec())


async def status(settings: Settings, *, runtime: Engine) -> dict[str, Any]:
    """The fleet as Docker and the load balancer's live config see it."""
    lb, instances = await runtime.require_fleet(settings.project)
    port = await runtime.lb_port(settings.project)
    balancer = NginxBalancer(runtime, settings.project, port or 0)
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
            "state": lb.state,
            "upstreams": [u.address for u in upstreams],
            "size": state.size if state else None,
            "sticky": state.sticky if state else None,
            "retry": state.retry if state else None,
            "client_keepalive_s": state.client_keepalive_s if state else None,
            "lb_apply": state.lb_apply if state else None,
            "rollout": state.rollout if state else None,
            "canary": state.canary if state else None,  # a canary's weight while one runs
            "versions": (versions.from_label(lb.labels.get(L.LABEL_VERSIONS)) or ({}, True))[0] or None,
            "app": versions.spec_from_label(lb.labels.get(L.LABEL_VERSIONS)).as_dict(),
        },
        "services": access.services(state.app_env if state else {}),
        # the session store or database when not running (an engine restart stops them; `roll` starts them)
        "stopped": [{"name": h.name, "role": h.labels.get(L.LABEL_ROLE, ""), "state": h.state}
                    for h in await runtime.stopped_services(settings.project)],
        "instances": [
            {"name": i.name, "slot": i.slot, "version": i.version, "state": i.state,
             "address": i.address, "attached": i.name in attached, **({"node": i.node} if i.node else {})}
            for i in instances
        ],
        # a rollout running now, as its controller answers (None: none runs)
        "steering": await steer.query(settings.project),
    }


@locked("down")
async def down(settings: Settings, *, runtime: Engine) -> dict[str, int]:
    """Remove this project's containers, volumes and network; nothing else."""
    return await runtime.down(settings.project)


# -- roll / rollback ------------------------------------------------------------------------------
@locked("roll")
async def roll(
    settings: Settings,
    *,
    runtime: Engine,
    to_version: str | None = None,
    kind: Kind = "roll",
    progress: Progress | None = None,
    report_dir: Path | None = None,
    install_sigint: bool = True,
) -> RolloutResult:
    """Move the fleet to ``to_version`` (default ``settings.to_version``) under live traffic.

    ``kind="rollback"`` reverts the last roll recorded in the load balancer's state.
    Raises NotFoundError (no fleet), UsageError (nothing to roll back); a failed
    rollout is reported in the result, not raised. See ``sandbox.rollout.rehearsal``.
    """
    return await rehearse(settings, runtime=runtime, kind=kind, to_version=to_version, progress=progress,
                          report_dir=report_dir, install_sigint=install_sigint)


async def plan_only(settings: Settings, *, runtime: Engine, kind: Kind = "roll") -> Prepared:
    """The plan of a roll (or rollback) of the fleet as it is now; reads Docker and the load
    balancer, changes nothing (no stale upstream taken out, no image built)."""
    return await Rehearsal(settings, runtime=runtime, kind=kind, install_sigint=False).prepare()


# -- demo / compare -------------------------------------------------------------------------------
@locked("demo")
async def demo(
    settings: Settings,
    *,
    runtime: Engine,
    keep: bool = False,
    report_dir: Path | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = log.info,
) -> RolloutResult:
    """One command for a workshop: build what is missing, start the fleet, roll to v2 under
    load, report, and tear down unless ``keep``."""
    declared = list({**settings.images, **settings.builds}) or list(versions.TOY_VERSIONS)
    say(f"demo: {settings.size} servers on {settings.version or declared[0]}, {settings.users} users, "
        f"rolling to {settings.to_version or declared[-1]} with {settings.strategy}")
    await up(settings, runtime=runtime, say=say)
    try:
        result = await roll(settings, runtime=runtime, progress=progress, report_dir=report_dir)
    finally:
        if not keep:
            await runtime.down(settings.project)
            say(f"demo: removed project {settings.project} (--keep leaves it running)")
    return result


@dataclass
class CompareResult:
    reports: list[Report]  # one per strategy, in the order asked
    table: dict[str, list[dict[str, Any]]]  # compare.json
    exit_code: int
    files: dict[str, Path]  # what was written: {"json": ..., "markdown": ...}


async def compare(
    settings: Settings,
    *,
    runtime: Engine,
    strategies: list[str],
    report_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
    progress_for: Callable[[Settings], Progress] = lambda _settings: Progress(),
    replace: bool = False,
) -> CompareResult:
    """Run each strategy on a fresh fleet of ``settings.size`` under the same load; one report each,
    and ``compare.json``/``compare.md`` beside them in ``report_dir``.

    Each fleet is its own project (``<project>-<n>``) and is removed afterwards, whatever happened.
    One that exists already is not compare's: UsageError before anything runs, unless ``replace``.
    The exit code judges every strategy but the baselines (naive drops by design).
    """
    taken = [f"{settings.project}-{n}" for n in range(1, len(strategies) + 1)
             if await runtime.has_project(f"{settings.project}-{n}")]
    if taken and not replace:
        raise UsageError(f"project: {', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; compare "
                         "runs each strategy on its own new fleet (--replace removes them first)")
    reports: list[Report] = []
    for n, spec in enumerate(strategies, start=1):
        strategy, batch = parse_strategy_spec(spec, settings.batch)
        mode = settings.mode if registry.of(strategy).in_place else "replace"
        one = dataclasses.replace(settings, project=f"{settings.project}-{n}",
                                  strategy=settings.strategy if strategy == "swarm-native" else strategy,
                                  mode=mode, batch=batch)
        say(f"compare: {spec} ({n}/{len(strategies)})")
        if one.project in taken:
            await down(one, runtime=runtime)
        if strategy == "swarm-native":  # Swarm rolls, not the controller: a path of its own
            from sandbox.fleet.swarm import SwarmEngine
            from sandbox.rollout import swarm_native
            if not isinstance(runtime, SwarmEngine):
                raise UsageError(f"strategies: {spec.strip()!r} needs --engine swarm")
            image_set = await runtime.ensure_images(say=say)
            reports.append(Report.from_json(await swarm_native.rehearse(
                one, runtime=runtime, images=image_set, order=swarm_native.parse_order(spec),
                report_dir=(report_dir / spec.replace(":", "-")) if report_dir else None, say=say)))
            continue
        await up(one, runtime=runtime, say=say)
        try:
            progress = progress_for(one)
            result = await roll(one, runtime=runtime, progress=progress,
                                report_dir=(report_dir / spec.replace(":", "-")) if report_dir else None)
            reports.append(Report.from_json(result.report))
            progress.finish(reports[-1])
        finally:
            await runtime.down(one.project)
    table = compare_json(reports)
    files: dict[str, Path] = {}
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        files = {"json": report_dir / "compare.json", "markdown": report_dir / "compare.md"}
        files["json"].write_text(json.dumps(table, indent=2, default=str))
        files["markdown"].write_text(compare_table(reports))
        say(f"compare: {files['markdown']} and compare.json, one report per strategy beside them")
    return CompareResult(reports=reports, table=table, files=files,
                         exit_code=compare_exit_code(reports))


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
        return name, default_batch if registry.of(name).batched else 1
    if not batch_text.isdigit() or int(batch_text) < 1:
        raise UsageError(f"strategies: batch in {spec!r} must be a whole number of at least 1")
    return name, int(batch_text)

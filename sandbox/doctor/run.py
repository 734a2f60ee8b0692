"""One doctor run: a fleet of its own (``<project>-doctor``), the experiments, the diagnosis, teardown.

The fleet is one server behind the project's NGINX, started by ``up``'s own code with the app
contract of the settings; the experiments boot more servers beside it. Whatever happens, the
fleet is removed at the end; no other project is touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from sandbox import commands
from sandbox.config import Settings
from sandbox.doctor.lab import Lab, run_experiments
from sandbox.doctor.measure import LocustfileRun, LongLivedKind
from sandbox.doctor.output import Diagnosis
from sandbox.errors import UsageError
from sandbox.fleet import versions
from sandbox.fleet.balancer import NginxBalancer
from sandbox.fleet.engine import Engine
from sandbox.fleet.runtime import DockerEngine
from sandbox.load.rows import parse_think_ms
from sandbox.load.run import LoadRun, LoadSettings
from sandbox.ports import free_port
from sandbox.results.measure import is_ok, is_unanswered

DOCKER_ONLY = "engine: doctor runs plain Docker containers; drop --engine swarm"
#: The service time assumed per request when the rehearsed load's rate is estimated.
SERVICE_S = 0.01
#: How long ``--locustfile`` runs against doctor's fleet.
LOCUSTFILE_S = 15.0


async def locustfile_run(settings: Settings, url: str, seconds: float = 0.0) -> LocustfileRun:
    """Run ``settings.locustfile`` (``--users`` of them) against ``url`` for ``seconds`` (default
    LOCUSTFILE_S); what its requests took. Its longest request counts against the stop timeout:
    doctor's own requests only know ``--path``."""
    seconds = seconds or LOCUSTFILE_S
    with tempfile.TemporaryDirectory(prefix="rolling-sandbox-doctor-") as tmp:
        load = LoadRun(url, LoadSettings(users=settings.users, spawn_rate=settings.spawn_rate,
                                         locustfile=settings.locustfile, think_s=parse_think_ms(settings.think_ms),
                                         timeout_s=settings.client_timeout_s), Path(tmp) / "rows.jsonl")
        await load.start()
        try:
            await asyncio.sleep(seconds)
        finally:
            await load.stop()
        rows = load.all_rows()
    ended = [r for r in rows if not is_unanswered(r)]  # the load's stop cut the rest short
    longest = max((r for r in ended if is_ok(r)), key=lambda r: float(r.get("latency_ms") or 0.0), default=None)
    return LocustfileRun(
        locustfile=str(settings.locustfile), seconds=seconds, requests=len(ended),
        failed=sum(1 for r in ended if not is_ok(r)),
        longest_s=round(float(longest.get("latency_ms") or 0.0) / 1000, 3) if longest else 0.0,
        longest_name=f"{longest.get('method')} {longest.get('name')}" if longest else "")


def doctor_project(project: str) -> str:
    """Doctor's own fleet's name for ``project``."""
    return f"{project}-doctor"


def check_long_path(flag: str, path: str | None) -> None:
    """UsageError naming ``flag`` unless ``path`` is None or an absolute URL path."""
    if path is not None and not (path.startswith("/") and " " not in path):
        raise UsageError(f"{flag}: {path!r} must start with / and have no spaces")


def offered_rps(settings: Settings) -> float:
    """The rehearsed load (``--users``, each waiting ``--think-ms`` between requests) in requests per second."""
    low, high = parse_think_ms(settings.think_ms)
    return settings.users / ((low + high) / 2 + SERVICE_S)


async def doctor(settings: Settings, *, runtime: Engine, long_paths: Sequence[tuple[LongLivedKind, str]] = (),
                 say: Callable[[str], None]) -> Diagnosis:
    """Run every experiment on a fleet of doctor's own for the app ``settings`` declare; the diagnosis.

    Raises UsageError (another engine than plain Docker, a missing image) before anything is
    created, and what the engine raises; the fleet is removed in every case.
    """
    if not isinstance(runtime, DockerEngine):
        raise UsageError(DOCKER_ONLY)
    project = doctor_project(settings.project)
    own = dataclasses.replace(settings, project=project, size=1, port=free_port())
    if await runtime.has_project(project):  # a doctor run that was killed left it; it is doctor's own
        await runtime.down(project)
    try:
        await commands.up(own, runtime=runtime, say=say)
        images = await commands.fleet_images(own, runtime=runtime, say=say)
        version = versions.pick(images.app, own.version, default_last=False, what="version")
        balancer = NginxBalancer(runtime, project, own.port)
        await balancer.load()
        lab = Lab(runtime=runtime, balancer=balancer, images=images, version=version, env=dict(own.app_env),
                  paths=list(own.paths or ("/",)), ready_timeout_s=own.ready_timeout,
                  base=(await runtime.instances(project))[0])
        measured = await run_experiments(lab, long_paths=long_paths, offered_rps=offered_rps(settings),
                                         size=settings.size, say=say)
        if settings.locustfile is not None:
            say(f"doctor: your locustfile ({settings.locustfile.name}) for {LOCUSTFILE_S:g} s")
            locust = await locustfile_run(settings, balancer.url)
            measured = dataclasses.replace(measured, locustfile=locust,
                                           longest_request_s=max(measured.longest_request_s, locust.longest_s))
    finally:
        await runtime.down(project)
    image = images.app[version] if not images.toy else f"the toy app ({version})"
    return Diagnosis.of(image, measured)

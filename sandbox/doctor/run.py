"""One doctor run: a fleet of its own (``<project>-doctor``), the experiments, the diagnosis, teardown.

The fleet is one server behind the project's NGINX, started by ``up``'s own code with the app
contract of the settings; the experiments boot more servers beside it. Whatever happens, the
fleet is removed at the end; no other project is touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sandbox import commands
from sandbox.config import Settings
from sandbox.doctor.lab import Lab, run_experiments
from sandbox.doctor.measure import LongLivedKind
from sandbox.doctor.output import Diagnosis
from sandbox.errors import UsageError
from sandbox.fleet import versions
from sandbox.fleet.balancer import NginxBalancer
from sandbox.fleet.engine import Engine
from sandbox.fleet.runtime import DockerEngine
from sandbox.load.rows import parse_think_ms
from sandbox.ports import free_port

DOCKER_ONLY = "engine: doctor runs plain Docker containers; drop --engine swarm"
#: The service time assumed per request when the rehearsed load's rate is estimated.
SERVICE_S = 0.01


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
    finally:
        await runtime.down(project)
    image = images.app[version] if not images.toy else f"the toy app ({version})"
    return Diagnosis.of(image, measured)

"""The one place that picks the engine: plain Docker containers, or Swarm services.

``up``, ``demo``, ``compare`` and ``images`` use the engine from the settings
(``--engine``, ``engine`` in sandbox.toml, ``SANDBOX_ENGINE``). Commands that act on
an existing fleet (``status``, ``roll``, ``rollback``, ``down``) use the engine
recorded on its load balancer (label ``LABEL_ENGINE``), so they need no flag; a fleet
without a load balancer falls back to the settings, or to Swarm when Swarm still holds
services of the project (a half-removed Swarm fleet is still removed by ``down``).
"""

from __future__ import annotations

import logging

import docker
import docker.errors

from sandbox.errors import EngineError
from sandbox.fleet import labels as L
from sandbox.fleet.docker_base import short
from sandbox.fleet.engine import Engine
from sandbox.fleet.runtime import DockerEngine
from sandbox.fleet.swarm import SwarmEngine

log = logging.getLogger("sandbox.fleet.engines")

ENGINES: dict[str, type[DockerEngine] | type[SwarmEngine]] = {"docker": DockerEngine, "swarm": SwarmEngine}


def recorded_engine(client: docker.DockerClient, project: str) -> str | None:
    """The engine that started ``project``'s fleet, from its load balancer's label (its state
    volume's when the container was removed, or Swarm services carrying the project's labels),
    or None when nothing says."""
    lbs = client.containers.list(all=True, filters=L.project_filter(project, L.ROLE_LB))
    if lbs:
        labels = lbs[0].labels
    else:
        volumes = client.volumes.list(filters=L.project_filter(project, L.ROLE_STATE))
        labels = (volumes[0].attrs.get("Labels") or {}) if volumes else {}
    engine = labels.get(L.LABEL_ENGINE)
    if engine in ENGINES:
        return engine
    try:
        if client.services.list(filters=L.project_filter(project)):
            return "swarm"
    except docker.errors.APIError:  # not a swarm manager: no services to find
        pass
    return None


def connect(engine: str, project: str | None = None) -> Engine:
    """Connect the engine for ``engine``, or, given ``project`` (a command on an existing fleet),
    for the engine recorded on that fleet. Raises EngineError (no engine answers) or UsageError
    (Swarm asked for on an engine that is not a swarm manager); neither creates anything."""
    if project is not None:
        base = DockerEngine.connect()
        try:
            found = recorded_engine(base.client, project)
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {short(exc)}") from exc
        if found is not None and found != engine:
            log.info("project %s runs on %s (recorded on its load balancer): using that", project, found)
            engine = found
        if engine == "docker":
            return base
    return ENGINES[engine].connect()

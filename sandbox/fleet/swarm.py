"""The same fleet on Docker Swarm: every app server is a one-replica Swarm service.

:class:`SwarmEngine` implements :class:`~sandbox.fleet.engine.Engine` beside the plain Docker
engine (both build on :class:`~sandbox.fleet.docker_base.DockerBase`), so the controller, the
plan and the measurement do not know which engine runs. What changes:

- the project's network is an attachable overlay (labelled with the project), so the
  servers may run on any node and the load balancer, a plain container on the manager
  (``DockerBase.start_lb``: published on 127.0.0.1, no routing mesh), reaches them;
- an app server is a service named ``<project>-app-<slot>-<hex>`` with one replica, in
  ``dnsrr`` endpoint mode (no virtual IP, no ingress: IPVS is not needed), restart
  policy ``none`` (a server that fails to boot stays failed, as a plain container does),
  labels on the service and on its container spec; ``Instance.id`` is the service id and
  ``Instance.ip`` its task's address on the overlay;
- the host cannot route to an overlay address, so ``Instance.probe_ip`` is the task
  container's address on ``docker_gwbridge`` (reachable from the node it runs on): the
  controller's health and drain probes go there, NGINX uses the overlay address;
- on several nodes (``sandbox cluster``, :mod:`sandbox.fleet.cluster`) a task on another node
  is probed through the load balancer's relay instead (``Instance.probe_via``: ``GET
  /probe/IP:PORT/PATH`` on its admin listener), its container is read, signalled and killed
  through that node's engine socket, every image a service names is copied to each worker
  first, and a node seen down (its worker container stopped, or Swarm calls it not ready) has
  its tasks reported exited and gets no new one;
- stop scales the service to 0 (Swarm sends SIGTERM and waits ``stop_grace_period``),
  reads the task's exit code, then removes the service; kill removes the task's
  container at once, then the service;
- the image is passed by its local image id, which Swarm runs without trying to pull (every
  node that may run a task must hold it); your own images get their contract (port label,
  stop signal and grace, command, memory, read-only, their USER) as for plain containers.

In-place mode cannot work here (there is no code volume to swap); the settings reject it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import docker
import docker.errors
from docker.models.services import Service
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Healthcheck,
    Mount,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)
from docker.utils import parse_bytes

from sandbox.errors import EngineError, ReadinessError, UsageError
from sandbox.fleet import labels as L
from sandbox.fleet.balancer import ADMIN_PORT
from sandbox.fleet.cluster import Cluster, node_client
from sandbox.fleet.docker_base import APP_USER, DockerBase, app_name, network_name, short
from sandbox.fleet.engine import APP_PORT, Instance, LbHandle
from sandbox.fleet.versions import AppSpec

if TYPE_CHECKING:
    from sandbox.config import FailureAction

log = logging.getLogger("sandbox.fleet.swarm")

UpdateOrder = Literal["stop-first", "start-first"]  # `docker service update --update-order`

GWBRIDGE = "docker_gwbridge"
STOP_GRACE_S = 20.0  # stop_grace_period of every app service (the app bounds its own drain at 15 s)
TASK_START_TIMEOUT_S = 60.0  # from service create to a task that runs (or has failed)
POLL_S = 0.1
DOWN_TIMEOUT_S = 60.0
NANO = 1_000_000_000
# Swarm task states: https://docs.docker.com/engine/swarm/how-swarm-mode-works/swarm-task-states/
_STARTING = {"new", "pending", "assigned", "accepted", "ready", "preparing", "starting"}
_ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
NOT_A_MANAGER = ("engine: --engine swarm needs a swarm manager, and this Docker engine is not one; "
                 "run `docker swarm init` (or use --engine docker)")


@dataclass(frozen=True)
class UpdatePolicy:
    """How Swarm's own rolling update replaces the tasks (``docker service update`` flags)."""

    parallelism: int
    delay_s: float
    order: UpdateOrder
    failure_action: FailureAction
    stop_grace_s: float


# -- pure parts -----------------------------------------------------------------------------------
def check_manager(info: Mapping[str, Any]) -> None:
    """Raise UsageError (naming `docker swarm init`) unless ``docker info`` says this is a manager."""
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        raise UsageError(NOT_A_MANAGER)


def container_state(task: Mapping[str, Any] | None) -> str:
    """A Swarm task's state in the words of a container's: created, running, exited (or gone)."""
    if task is None:
        return "gone"
    state = str(task.get("Status", {}).get("State", ""))
    if state == "running":
        return "running"
    if state in _STARTING:
        return "created"
    return "exited" if state in _ENDED else state or "unknown"


def latest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest task of a one-replica service (a service keeps its older tasks' history)."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: (t.get("CreatedAt", ""), t.get("Version", {}).get("Index", 0)))


def task_ip(task: Mapping[str, Any] | None, network_id: str) -> str | None:
    """The task's address on the network ``network_id`` (without the prefix length), or None."""
    for attachment in (task or {}).get("NetworksAttachments") or []:
        if attachment.get("Network", {}).get("ID") == network_id:
            for address in attachment.get("Addresses") or []:
                return str(address).split("/")[0]
    return None


def task_container_id(task: Mapping[str, Any] | None) -> str | None:
    return ((task or {}).get("Status", {}).get("ContainerStatus") or {}).get("ContainerID") or None


def to_instance(service: Mapping[str, Any], task: Mapping[str, Any] | None, network_id: str,
                gateway_ips: Mapping[str, str], *, where: Placement | None = None) -> Instance:
    """The :class:`Instance` a one-replica app service is: its id and name, its task's state and
    overlay address, and (``gateway_ips``: container id -> address on docker_gwbridge) its probe
    address. ``where`` (several nodes): the node of its task; a task on another node than this
    engine's is probed through ``where.relay`` (the load balancer's admin listener) instead."""
    spec = service.get("Spec", {})
    labels = spec.get("Labels") or {}
    state = container_state(task)
    cid = task_container_id(task)
    node_id = str((task or {}).get("NodeID", ""))
    remote = where is not None and bool(node_id) and node_id != where.local
    if remote and where is not None and node_id in where.down and state != "gone":
        state = "exited"  # its node is down: the task's container is gone with it, whatever Swarm says yet
    return Instance(
        id=str(service.get("ID", "")),
        name=str(spec.get("Name", "")),
        slot=int(labels.get(L.LABEL_SLOT, "0")),
        version=labels.get(L.LABEL_VERSION, "?"),
        state=state,
        ip=task_ip(task, network_id) if state == "running" else None,
        created=str(service.get("CreatedAt", "")),
        probe_ip=gateway_ips.get(cid) if cid and state == "running" and not remote else None,
        port=int(labels.get(L.LABEL_APP_PORT, APP_PORT)),
        probe_via=where.relay if remote and where is not None and state == "running" else None,
        node=where.names.get(node_id, "") if where is not None else "",
    )


def node_names(nodes: list[Any]) -> dict[str, str]:
    """Swarm node id -> its hostname (``docker node ls``'s names), for the nodes given."""
    return {str(n.id): str(n.attrs.get("Description", {}).get("Hostname", "")) for n in nodes}


@dataclass(frozen=True)
class Placement:
    """What places a task on a node: this engine's node id, every node's hostname by id, and the
    relay prefix (``ip:port/probe/``) that reaches a task on another node (None before the
    project's load balancer runs)."""

    local: str
    names: Mapping[str, str]
    relay: str | None = None
    down: frozenset[str] = frozenset()  # nodes that are not ready, or whose worker container stopped


def serving_addresses(tasks: list[dict[str, Any]], network_id: str) -> dict[str, str]:
    """Task id -> ``ip:port`` on the overlay, of the tasks that run and are meant to run (pure).

    A task Swarm is shutting down (desired state no longer ``running``) is left out at once:
    Swarm waits 2 s between that and SIGTERM, the window a load balancer has to detach it."""
    out: dict[str, str] = {}
    for t in tasks:
        if t.get("DesiredState") == "running" and t.get("Status", {}).get("State") == "running":
            ip = task_ip(t, network_id)
            if ip:
                out[str(t["ID"])] = f"{ip}:{APP_PORT}"
    return out


def gateway_ips(gwbridge_attrs: Mapping[str, Any]) -> dict[str, str]:
    """Container id -> its IPv4 address on docker_gwbridge, from that network's inspect data."""
    out: dict[str, str] = {}
    for cid, endpoint in (gwbridge_attrs.get("Containers") or {}).items():
        address = str(endpoint.get("IPv4Address", "")).split("/")[0]
        if address:
            out[cid] = address
    return out


def app_service_spec(project: str, slot: int, version: str, image_id: str, env: Mapping[str, str],
                     from_version: str = "", *, replicas: int = 1, name: str | None = None,
                     spec: AppSpec | None = None, toy: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``APIClient.create_service`` for one app server (pure).

    The hardening of the plain containers where Swarm (API 1.41) has it: read-only root (unless
    the app's ``spec`` says otherwise), a tmpfs /tmp, every capability dropped, a memory and a
    pid limit, and for the toy app uid 10001 (your own images keep their USER). Swarm 20.10 has
    no no-new-privileges for services. ``spec`` is the app's contract as for plain containers:
    port (a label), stop signal and grace period, command, memory.
    """
    spec = spec or AppSpec()
    extra = {L.LABEL_SLOT: str(slot), L.LABEL_VERSION: version, L.LABEL_APP_PORT: str(spec.port)}
    if from_version:
        extra[L.LABEL_FROM] = from_version
    labels = L.project_labels(project, L.ROLE_APP, **extra)
    name = name or app_name(project, slot)
    resources = Resources(mem_limit=int(parse_bytes(spec.memory)))
    resources["Limits"]["Pids"] = 128
    container = ContainerSpec(
        image_id,
        hostname=name,
        env=dict(env),
        user=APP_USER if toy else None,
        labels=labels,
        read_only=spec.read_only,
        mounts=[Mount("/tmp", None, type="tmpfs", tmpfs_size=16 * 1024 * 1024)],
        cap_drop=["ALL"],
        stop_grace_period=int(spec.stop_timeout * NANO),
        stop_signal=spec.stop_signal or None,
        args=list(spec.command) or None,
    )
    template = TaskTemplate(
        container,
        resources=resources,
        restart_policy=RestartPolicy(condition="none"),
        networks=[network_name(project)],
    )
    return {
        "task_template": template,
        "name": name,
        "labels": labels,
        "mode": ServiceMode("replicated", replicas=replicas),
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def app_healthcheck(port: int = APP_PORT) -> Healthcheck:
    """The app's /healthz as a task HEALTHCHECK: Swarm calls a task running only once it passes
    (and only then routes to it). Generous, because one `docker exec` of python3 took 5 s on a
    2-core machine under load."""
    return Healthcheck(
        test=["CMD", "python3", "-c",
              f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=1)"],
        interval=1 * NANO, timeout=10 * NANO, retries=3, start_period=30 * NANO,
    )


def update_config(policy: UpdatePolicy) -> UpdateConfig:
    """The SDK's UpdateConfig for ``policy`` (its stop grace period goes on the service itself)."""
    return UpdateConfig(parallelism=policy.parallelism, delay=int(policy.delay_s * NANO),
                        order=policy.order, failure_action=policy.failure_action)


# -- the engine -----------------------------------------------------------------------------------
class SwarmEngine(DockerBase):
    """The app servers as Swarm services; the load balancer, exec and files as DockerBase has them."""

    engine = "swarm"
    network_driver: ClassVar[dict[str, Any]] = {"driver": "overlay", "attachable": True}

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self._node_clients: dict[str, docker.DockerClient] = {}  # a cluster worker's socket -> its client
        self._copied: set[str] = set()  # image ids already on every cluster worker
        self._local: str | None = None  # this engine's Swarm node id, once read

    def _local_node(self) -> str:
        if self._local is None:
            self._local = str((self.client.info().get("Swarm") or {}).get("NodeID", ""))
        return self._local

    @classmethod
    def connect(cls) -> Self:
        """Connect as DockerBase does, then require a swarm manager (UsageError naming `docker swarm init`)."""
        engine = super().connect()
        try:
            info = engine.client.info()
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {short(exc)}") from exc
        check_manager(info)
        return engine

    # -- discovery ----------------------------------------------------------------------------
    def _network_id(self, project: str) -> str:
        try:
            return self.client.networks.get(network_name(project)).id or ""
        except docker.errors.NotFound:
            return ""

    async def admin_ip(self, lb: LbHandle, project: str) -> str | None:
        """The host cannot route to the overlay: the LB's address on docker_gwbridge instead."""
        return (await self._call(self._gateway_ips)).get(lb.id)

    def _gateway_ips(self) -> dict[str, str]:
        try:
            return gateway_ips(self.client.api.inspect_network(GWBRIDGE))
        except docker.errors.NotFound:
            return {}

    def _app_services(self, project: str) -> list[Service]:
        return self.client.services.list(filters=L.project_filter(project, L.ROLE_APP))

    def _describe_service(self, service: Service, network_id: str, gw: Mapping[str, str],
                          where: Placement | None = None) -> Instance:
        return to_instance(service.attrs, latest_task(service.tasks()), network_id, gw, where=where)

    # -- several nodes ------------------------------------------------------------------------
    def _placement(self, project: str, gw: Mapping[str, str]) -> Placement | None:
        """None on a one-node swarm (every task is on this engine); else this engine's node, the
        nodes' hostnames, and the relay through the project's load balancer."""
        nodes = self.client.nodes.list()
        if len(nodes) < 2:
            return None
        local = self._local_node()
        names = node_names(nodes)
        lb = self._lb(project)
        lb_ip = gw.get(lb.id) if lb is not None else None
        return Placement(local, names, f"{lb_ip}:{ADMIN_PORT}/probe/" if lb_ip else None,
                         down=frozenset(self._down_nodes(nodes, names)))

    def _down_nodes(self, nodes: list[Any], names: Mapping[str, str]) -> set[str]:
        """Node ids that are down: not ``ready`` in Swarm's view, or a cluster worker whose container
        is not running (seen at once; Swarm notices a lost node only after its heartbeats stop)."""
        down = {str(n.id) for n in nodes if n.attrs.get("Status", {}).get("State") != "ready"}
        stopped = Cluster(self.client).stopped_workers()  # one listing of the cluster's worker containers
        return down | {node_id for node_id, name in names.items() if name in stopped}

    def _node_down(self, task: Mapping[str, Any] | None) -> str | None:
        """The hostname of ``task``'s node when that node is down, else None."""
        node_id = str((task or {}).get("NodeID", ""))
        if not node_id or node_id == self._local_node():
            return None
        nodes = self.client.nodes.list()
        names = node_names(nodes)
        return names.get(node_id, node_id[:12]) if node_id in self._down_nodes(nodes, names) else None

    def _task_client(self, task: Mapping[str, Any] | None) -> docker.DockerClient | None:
        """The engine that runs ``task``'s container: this one, or a cluster worker's (through its
        socket, ``sandbox cluster up``); None for a node of a swarm the sandbox did not make."""
        node_id = str((task or {}).get("NodeID", ""))
        if not node_id or node_id == self._local_node():
            return self.client
        try:
            hostname = self.client.nodes.get(node_id).attrs.get("Description", {}).get("Hostname", "")
        except docker.errors.NotFound:
            return None
        socket = Cluster(self.client).sockets(running=True).get(hostname)
        if not socket:  # not a worker of ours, or its container (its engine) is gone
            return None
        if socket not in self._node_clients:
            self._node_clients[socket] = node_client(socket, timeout=60)
        return self._node_clients[socket]

    def _on_every_node(self, image_id: str) -> None:
        """Copy the image onto each cluster worker that lacks it (once per image and process): a
        service names its image by id, which a node without it cannot pull."""
        if image_id in self._copied:
            return
        if len(self.client.nodes.list()) > 1:
            Cluster(self.client, say=log.info).copy_images([image_id])
        self._copied.add(image_id)

    async def app_states(self, project: str) -> dict[str, str]:
        """Service name -> its task's state (a service is not a container name)."""
        return {i.name: i.state for i in await self.instances(project)}

    async def instances(self, project: str) -> list[Instance]:
        """This project's app services, in (slot, created) order, whatever their tasks' state."""
        return await self._call(self._instances, project)

    def _instances(self, project: str) -> list[Instance]:
        services = self._app_services(project)
        network_id, gw = self._network_id(project), self._gateway_ips()
        where = self._placement(project, gw) if services else None
        out = [self._describe_service(s, network_id, gw, where) for s in services]
        return sorted(out, key=lambda i: (i.slot, i.created))

    # -- app services -------------------------------------------------------------------------
    async def start_app(
        self, project: str, slot: int, version: str, image: str, env: dict[str, str], from_version: str = "",
        *, spec: AppSpec | None = None, toy: bool = True,
    ) -> Instance:
        """A one-replica service from the local ``image`` with the app's contract ``spec``, once
        its task runs with an address (or has ended)."""
        return await self._call(self._start_app, project, slot, version, image, env, from_version, spec, toy)

    def _start_app(
        self, project: str, slot: int, version: str, image: str, env: dict[str, str], from_version: str,
        spec: AppSpec | None, toy: bool,
    ) -> Instance:
        image_id = self.client.images.get(image).id or image  # by id: Swarm then does not try to pull
        self._on_every_node(image_id)
        kwargs = app_service_spec(project, slot, version, image_id, env, from_version, spec=spec, toy=toy)
        nodes = self.client.nodes.list()
        if len(nodes) > 1:  # never on a node seen down: Swarm still schedules there until its heartbeats time out
            names = node_names(nodes)
            down = sorted(self._down_nodes(nodes, names))
            if down:
                kwargs["task_template"]["Placement"] = {"Constraints": [f"node.id!={node_id}" for node_id in down]}
        created = self.client.api.create_service(**kwargs)
        service = self.client.services.get(created["ID"])
        return self._wait_task(project, service)

    def _wait_task(self, project: str, service: Service) -> Instance:
        """Poll until the service's task runs with an address, or has ended; return it."""
        network_id = self._network_id(project)
        deadline = time.monotonic() + TASK_START_TIMEOUT_S
        while True:
            task = latest_task(service.tasks())
            state = container_state(task)
            if state == "created" and (lost := self._node_down(task)):
                raise ReadinessError(f"{service.name}: its task was placed on node {lost}, which is down")
            if state == "exited" or (state == "running" and task_ip(task, network_id)):
                gw = self._gateway_ips()
                inst = to_instance(service.attrs, task, network_id, gw, where=self._placement(project, gw))
                if state == "exited" or inst.probe_ip or inst.probe_via:
                    return inst
            if time.monotonic() > deadline:
                status = (task or {}).get("Status", {})
                err = f", {status['Err']}" if status.get("Err") else ""
                raise EngineError(f"{service.name}: no task ran with an address the controller can probe within "
                                  f"{TASK_START_TIMEOUT_S:g} s (task state {status.get('State', 'none')}{err})")
            time.sleep(POLL_S)

    def _service(self, instance: Instance) -> Service | None:
        try:
            service: Service = self.client.services.get(instance.id)  # types-docker leaves get() bare
            return service
        except docker.errors.NotFound:
            return None

    async def refresh(self, project: str, instance: Instance) -> Instance | None:
        def get() -> Instance | None:
            service = self._service(instance)
            if service is None:
                return None
            gw = self._gateway_ips()
            return self._describe_service(service, self._network_id(project), gw, self._placement(project, gw))
        return await self._call(get)

    async def start_app_again(self, project: str, instance: Instance) -> Instance:
        """Swarm starts a service's task again itself (its restart policy): the service as it is now."""
        return await self.refresh(project, instance) or instance

    async def stop_app(self, instance: Instance, grace_s: float) -> int | None:
        """Scale to 0 (Swarm: SIGTERM, then SIGKILL after ``stop_grace_period``), read the task's
        exit code, remove the service. ``grace_s`` beyond the service's own grace is waited for too."""
        def stop() -> int | None:
            service = self._service(instance)
            if service is None:
                return None
            if self._node_down(latest_task(service.tasks())):  # nothing there to stop: the node took it
                self._remove_service(service)
                return None
            service.scale(0)
            deadline = time.monotonic() + max(grace_s, STOP_GRACE_S) + 10
            code: int | None = None
            while time.monotonic() < deadline:
                task = latest_task(service.tasks())
                if task is None or container_state(task) == "exited":
                    code = ((task or {}).get("Status", {}).get("ContainerStatus") or {}).get("ExitCode")
                    break
                time.sleep(POLL_S)
            self._remove_service(service)
            return code
        return await self._call(stop)

    async def signal_stop(self, instance: Instance) -> None:
        """Send the task's container its stop signal and return at once (``--detach-lag``)."""
        def signal() -> None:
            service = self._service(instance)
            if service is not None:
                task = latest_task(service.tasks())
                client = self._task_client(task)
                if client is not None:
                    self._send_stop_signal(task_container_id(task), client)
        await self._call(signal)

    async def kill_app(self, instance: Instance) -> None:
        """Remove the task's container at once (SIGKILL), then the service."""
        def kill() -> None:
            service = self._service(instance)
            if service is None:
                return
            task = latest_task(service.tasks())
            cid, client = task_container_id(task), self._task_client(task)
            if cid and client is not None:
                with suppress(docker.errors.NotFound):
                    client.containers.get(cid).remove(force=True)
            self._remove_service(service)
        await self._call(kill)

    @staticmethod
    def _remove_service(service: Service) -> None:
        with suppress(docker.errors.NotFound):
            service.remove()

    async def swap_code(self, project: str, instance: Instance, code_tar: bytes) -> Instance:
        raise UsageError("mode: in-place cannot run on Swarm (a service has no code volume to swap); "
                         "use --mode replace")

    async def health(self, instance: Instance) -> str | None:
        """The HEALTHCHECK status of the service's task container (``starting``, ``healthy``,
        ``unhealthy``), or None without one. Swarm itself calls such a task running only once
        it is healthy; the container is inspected on the node that runs it (a cluster worker's
        through its socket; a node of a swarm the sandbox did not make: None, unknown)."""
        def get() -> str | None:
            service = self._service(instance)
            task = latest_task(service.tasks()) if service is not None else None
            cid, client = task_container_id(task), self._task_client(task)
            if cid is None or client is None:
                return None
            try:
                health = (client.containers.get(cid).attrs.get("State") or {}).get("Health")
            except docker.errors.NotFound:
                return None
            return str(health.get("Status")) if health else None
        return await self._call(get)

    async def exit_info(self, instance: Instance) -> str:
        """The task's state, exit code and error, and the service's last log line."""
        def info() -> str:
            service = self._service(instance)
            if service is None:
                return "service is gone"
            task = latest_task(service.tasks()) or {}
            if lost := self._node_down(task):
                return f"its node {lost} is down (the task ran there)"
            status = task.get("Status", {})
            code = (status.get("ContainerStatus") or {}).get("ExitCode")
            text = f"task {status.get('State', 'none')}, exit code {code}"
            if status.get("Err"):
                text += f", {status['Err']}"
            with suppress(docker.errors.DockerException, StopIteration):
                lines = b"".join(service.logs(stdout=True, stderr=True, tail="5")).decode(errors="replace")
                last = lines.strip().splitlines()[-1:] if lines.strip() else []
                text += f": {last[0]}" if last else ""
            return text
        return await self._call(info)

    # -- one service with N replicas (Swarm's own rolling update) --------------------------------
    async def start_replicated(self, project: str, version: str, image: str, env: dict[str, str],
                               replicas: int, healthcheck: bool = False) -> str:
        """Create one app service with ``replicas`` tasks (not waited for), with the app's
        :func:`app_healthcheck` if asked; return its id."""
        def create() -> str:
            image_id = self.client.images.get(image).id or image
            self._on_every_node(image_id)
            spec = app_service_spec(project, 0, version, image_id, env, replicas=replicas,
                                    name=f"{project}-app")
            if healthcheck:
                spec["task_template"]["ContainerSpec"]["Healthcheck"] = app_healthcheck()
            return str(self.client.api.create_service(**spec)["ID"])
        return await self._call(create)

    async def serving(self, project: str, service_id: str) -> tuple[dict[str, str], int]:
        """Task id -> overlay ``ip:port`` of the service's tasks that run and are meant to, and
        how many of its tasks run at all (those Swarm is stopping included: the cost)."""
        def read() -> tuple[dict[str, str], int]:
            tasks = self.client.api.tasks(filters={"service": service_id})
            running = sum(1 for t in tasks if t.get("Status", {}).get("State") == "running")
            return serving_addresses(tasks, self._network_id(project)), running
        return await self._call(read)

    async def update_image(self, service_id: str, image: str, policy: UpdatePolicy) -> None:
        """``service update --image`` with ``policy`` (parallelism, delay, order, failure action, grace)."""
        def run() -> None:
            image_id = self.client.images.get(image).id or image
            self._on_every_node(image_id)
            self.client.services.get(service_id).update(
                image=image_id, update_config=update_config(policy), stop_grace_period=int(policy.stop_grace_s * NANO))
        await self._call(run)

    async def update_state(self, service_id: str) -> str:
        """Swarm's UpdateStatus.State of the service: updating, completed, paused, rollback_*, or ''."""
        def read() -> str:
            service = self.client.services.get(service_id)
            return str((service.attrs.get("UpdateStatus") or {}).get("State", ""))
        return await self._call(read)

    # -- teardown -----------------------------------------------------------------------------
    async def down(self, project: str) -> dict[str, int]:
        """Remove this project's services, then (as DockerBase does) its containers, volumes, network."""
        def remove_services() -> int:
            services = self.client.services.list(filters=L.project_filter(project))
            for s in services:
                self._remove_service(s)
            return len(services)
        count = await self._call(remove_services)
        removed = await self._call(self._down_retrying, project)
        return {"services": count, **removed}

    def _down_retrying(self, project: str) -> dict[str, int]:
        """DockerBase.down, retried while Swarm still detaches removed tasks from the overlay, then
        until the overlay is really gone (Swarm removes it from the node a moment after the call)."""
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        removed: dict[str, int] | None = None
        while True:
            try:
                part = self._down(project)
                removed = removed or part
            except docker.errors.APIError as exc:
                if time.monotonic() > deadline:
                    raise EngineError(f"docker: {short(exc)}") from exc
            if removed is not None and not self.client.networks.list(filters=L.project_filter(project)):
                return removed
            if time.monotonic() > deadline:
                raise EngineError(f"project {project}: its network is still there {DOWN_TIMEOUT_S:g} s after down")
            time.sleep(0.5)

    async def has_project(self, project: str) -> bool:
        def services() -> bool:
            return bool(self.client.services.list(filters=L.project_filter(project)))
        return await self._call(services) or await super().has_project(project)

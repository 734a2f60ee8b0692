"""A multi-node Swarm on one machine: worker nodes are Docker engines in containers (as kind does
for Kubernetes), joined to a swarm whose manager is the local engine.

``sandbox cluster up --nodes N`` makes N - 1 workers; with the manager, the swarm has N nodes:

- each worker is a container of the local engine running Debian's ``dockerd`` (the node image,
  ``rolling-sandbox/node:<hash12>``, built offline like the base image), with what an engine needs
  and nothing more: ``SYS_ADMIN``, ``NET_ADMIN`` and ``SYS_PTRACE``, no seccomp or AppArmor profile, the host's
  cgroup namespace and ``/sys/fs/cgroup`` (``--privileged`` is refused on this kind of machine),
  a volume of its own at ``/var/lib/docker`` (overlay2 needs a real filesystem under it), its
  containers under a cgroup parent of its own;
- the nodes and the manager meet on one bridge network of the cluster's; the manager listens for
  the swarm and advertises only there (a swarm the cluster initialised), so Swarm's ports and its
  overlay's VXLAN never leave this machine;
- each node's engine also listens on a socket in a folder of the host's
  (``/run/rolling-sandbox/cluster/<engine id>/<node>/docker.sock``), the only way in: the controller
  copies images there and reads a task's container (health, exit code) on the node that runs it;
- images reach the nodes by ``docker save`` on the manager and ``docker load`` on each node, not
  through a registry: a registry the nodes pull from would need TLS, or an ``insecure-registries``
  entry in every engine's configuration, the manager's included, and the sandbox changes no
  engine's configuration. Images keep their ids, so a service that names its image by id (as the
  Swarm engine does) runs on any node without a pull.

``sandbox cluster down`` removes the workers (each leaves the swarm first), their volumes, folders
and the network, removes them from the manager's node list, and, when ``cluster up`` initialised
the swarm, leaves it and removes the ``docker_gwbridge`` network it made: the engine's swarm state
is as before. Everything carries the labels of the project ``rolling-sandbox-cluster``.

All Docker SDK calls here block; the commands call them in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from sandbox.errors import EngineError, UsageError
from sandbox.fleet import labels as L
from sandbox.fleet.images import ensure_node_image

CLUSTER = "rolling-sandbox-cluster"  # the project label of everything `cluster up` creates
NETWORK = f"{CLUSTER}-net"
GWBRIDGE = "docker_gwbridge"
SOCKET_ROOT = Path("/run/rolling-sandbox/cluster")
NODE_SOCKET_DIR = "/run/rolling-sandbox-node"  # inside a node: where its second socket is
MIN_NODES, MAX_NODES = 2, 8
ENGINE_START_TIMEOUT_S = 90.0
JOIN_TIMEOUT_S = 60.0
POLL_S = 0.3
SWARM_PORT = 2377
# SYS_PTRACE: without it, `docker exec` in a node (a HEALTHCHECK: Swarm's own update waits on it) fails
# "error executing setns process": root there may not open the namespaces of a process of another user
NODE_CAPS = ("SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE")
NODE_SECURITY = ("seccomp=unconfined", "apparmor=unconfined")
KERNEL_NEEDS = {"vxlan": "Swarm's overlay network between nodes", "overlay": "each node's overlay2 storage"}


@dataclass(frozen=True)
class Node:
    """One node of the cluster, as ``cluster status`` shows it."""

    hostname: str
    role: str  # manager, worker
    state: str  # Swarm's: ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    address: str
    container: str = ""  # the worker's container on the manager's engine ("" for the manager)
    socket: str = ""  # the worker engine's socket on this machine
    tasks: int = 0  # running tasks

    def as_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "role": self.role, "state": self.state,
                "availability": self.availability, "address": self.address, "container": self.container,
                "tasks": self.tasks}


def worker_name(index: int) -> str:
    """The hostname (and Swarm node name) of worker ``index`` (1-based)."""
    return f"worker-{index}"


def container_name(hostname: str) -> str:
    return f"{CLUSTER}-{hostname}"


def volume_name(hostname: str) -> str:
    return f"{CLUSTER}-{hostname}-data"


def check_nodes(nodes: int) -> None:
    """UsageError unless ``nodes`` (the manager included) is within the bounds."""
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes {nodes}: a cluster has {MIN_NODES} to {MAX_NODES} nodes, the local engine "
                         f"(the manager) included")


def missing_kernel_support(modules: Path = Path("/sys/module"),
                           filesystems: Path = Path("/proc/filesystems")) -> str | None:
    """What the kernel lacks for a cluster (one line naming it and what needs it), or None."""
    try:
        known = filesystems.read_text()
    except OSError:
        known = ""
    for module, why in KERNEL_NEEDS.items():
        if (modules / module).exists() or (module == "overlay" and "\toverlay" in known):
            continue
        return f"the kernel has no {module} module loaded ({why} needs it; modprobe {module})"
    return None


def local_engine_problem(base_url: str, euid: int) -> str | None:
    """Why ``cluster up`` cannot use this engine from this process, or None: the nodes bind-mount
    this machine's folders, so the engine must be local (a unix socket), and the nodes' sockets are
    root's."""
    if not base_url.startswith("http+docker://"):
        return (f"the engine at {base_url} is not local: the nodes mount this machine's /sys/fs/cgroup and "
                f"sockets, so cluster up needs the engine on a unix socket here")
    if euid != 0:
        return "cluster up needs root (each node's engine socket on this machine is root's)"
    return None


def swarm_problem(info: Mapping[str, Any]) -> str | None:
    """Why this engine cannot manage a cluster (one line), or None: it may be in no swarm (cluster
    up initialises one) or a manager of one; a worker of another swarm cannot."""
    swarm = info.get("Swarm") or {}
    state = swarm.get("LocalNodeState", "inactive")
    if state == "inactive":
        return None
    if state == "active" and swarm.get("ControlAvailable"):
        return None
    if state == "active":
        return ("this engine is a worker of another swarm; cluster up makes the local engine the manager "
                "(docker swarm leave)")
    return f"this engine's swarm state is {state!r}; cluster up needs none (inactive) or a manager"


def node_run_kwargs(hostname: str, image: str, socket_dir: Path, cgroup_parent: str) -> dict[str, Any]:
    """``containers.run`` arguments of a worker node (pure)."""
    return {
        "image": image,
        "name": container_name(hostname),
        "hostname": hostname,
        # a node started again (it was stopped: a node lost, then back) finds its engine's pid files
        # from before, naming pids that may now be other processes: they go first
        "entrypoint": ["sh", "-c", "rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid; "
                                   'exec "$@"', "node"],
        "command": ["dockerd", "--host", "unix:///var/run/docker.sock",
                    "--host", f"unix://{NODE_SOCKET_DIR}/docker.sock",
                    "--storage-driver", "overlay2", "--cgroup-parent", cgroup_parent, "--log-level", "warn"],
        "detach": True,
        "init": True,
        "cap_add": list(NODE_CAPS),
        "security_opt": list(NODE_SECURITY),
        "cgroupns": "host",
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                    volume_name(hostname): {"bind": "/var/lib/docker", "mode": "rw"},
                    str(socket_dir): {"bind": NODE_SOCKET_DIR, "mode": "rw"}},
        "network": NETWORK,
        "labels": L.project_labels(CLUSTER, L.ROLE_NODE, **{L.LABEL_NODE: hostname,
                                                            L.LABEL_NODE_SOCKET: str(socket_dir / "docker.sock")}),
    }


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def node_client(socket: str, timeout: int = 60) -> docker.DockerClient:
    """A client of a node's engine, through its socket on this machine."""
    return docker.DockerClient(base_url=f"unix://{socket}", timeout=timeout)


class Cluster:
    """The cluster on one engine (the manager): up, down, status, images onto its nodes."""

    def __init__(self, client: docker.DockerClient, *, say: Callable[[str], None] = print) -> None:
        self.client = client
        self.say = say

    # -- reading ------------------------------------------------------------------------------
    def node_containers(self) -> list[Any]:
        return sorted(self.client.containers.list(all=True, filters=L.project_filter(CLUSTER, L.ROLE_NODE)),
                      key=lambda c: c.name)

    def _network(self) -> Any | None:
        found = self.client.networks.list(filters=L.project_filter(CLUSTER, L.ROLE_NETWORK))
        return found[0] if found else None

    def sockets(self, *, running: bool = False) -> dict[str, str]:
        """Worker hostname -> its engine's socket on this machine (``running``: only the workers
        whose container runs: a stopped one's engine is gone with it)."""
        return {c.labels.get(L.LABEL_NODE, ""): c.labels.get(L.LABEL_NODE_SOCKET, "")
                for c in self.node_containers() if not running or c.status == "running"}

    def stopped_workers(self) -> set[str]:
        """Hostnames of the workers whose container is not running (their engine is gone with it)."""
        return {c.labels.get(L.LABEL_NODE, "") for c in self.node_containers() if c.status != "running"}

    def status(self) -> list[Node]:
        """The swarm's nodes (the manager first), with the cluster's containers; [] without a swarm."""
        info = self.client.info()
        if (info.get("Swarm") or {}).get("LocalNodeState") != "active" or not info["Swarm"].get("ControlAvailable"):
            return [Node(c.labels.get(L.LABEL_NODE, c.name), "worker", "not joined", "-", "-", c.name)
                    for c in self.node_containers()]
        containers = {c.labels.get(L.LABEL_NODE, ""): c for c in self.node_containers()}
        tasks: dict[str, int] = {}
        for task in self.client.api.tasks(filters={"desired-state": "running"}):
            if task.get("Status", {}).get("State") == "running":
                tasks[task.get("NodeID", "")] = tasks.get(task.get("NodeID", ""), 0) + 1
        out: list[Node] = []
        for node in self.client.nodes.list():
            attrs = node.attrs
            hostname = attrs.get("Description", {}).get("Hostname", "")
            container = containers.get(hostname)
            out.append(Node(hostname, attrs.get("Spec", {}).get("Role", "?"), attrs.get("Status", {}).get("State", "?"),
                            attrs.get("Spec", {}).get("Availability", "?"), attrs.get("Status", {}).get("Addr", ""),
                            container.name if container is not None else "",
                            container.labels.get(L.LABEL_NODE_SOCKET, "") if container is not None else "",
                            tasks.get(str(node.id), 0)))
        return sorted(out, key=lambda n: (n.role != "manager", n.hostname))

    # -- up -----------------------------------------------------------------------------------
    def preflight(self, nodes: int) -> dict[str, Any]:
        """Every check ``up`` makes before it creates anything; UsageError (one line) when one fails.
        Returns ``docker info``."""
        check_nodes(nodes)
        problem = local_engine_problem(self.client.api.base_url, os.geteuid()) or missing_kernel_support()
        info: dict[str, Any] = self.client.info()
        problem = problem or swarm_problem(info)
        if problem:
            raise UsageError(f"cluster up: {problem}")
        if self.node_containers() or self._network() is not None:
            raise UsageError("cluster up: a cluster is up already on this engine (sandbox cluster status shows it, "
                             "sandbox cluster down removes it)")
        return info

    def up(self, nodes: int, images: Iterable[str]) -> list[Node]:
        """Start ``nodes - 1`` workers, join them to the swarm (initialised here when the engine is in
        none), copy ``images`` onto each. Bad input raises UsageError before anything is created; a
        failure after that removes what this call created and raises."""
        info = self.preflight(nodes)
        image = ensure_node_image(self.client, log=self.say)
        engine_id = str(info.get("ID", "engine")).replace(":", "")[:12] or "engine"
        started = time.monotonic()
        try:
            manager_addr = self._network_and_swarm(info)
            token = self.client.swarm.attrs["JoinTokens"]["Worker"]
            hostnames = [worker_name(i) for i in range(1, nodes)]
            for hostname in hostnames:
                self.client.volumes.create(volume_name(hostname), labels=L.project_labels(CLUSTER, L.ROLE_VOLUME))
                socket_dir = SOCKET_ROOT / engine_id / hostname
                socket_dir.mkdir(parents=True, exist_ok=True)
                try:
                    self.client.containers.run(**node_run_kwargs(hostname, image, socket_dir,
                                                                 f"/rolling-sandbox-{engine_id}-{hostname}"))
                except docker.errors.APIError as exc:
                    raise UsageError(f"cluster up: this engine cannot run an engine in a container: {_short(exc)}") \
                        from exc
            for hostname in hostnames:
                self._join(hostname, manager_addr, token)
            self.say(f"cluster: {nodes} nodes joined in {time.monotonic() - started:.1f} s")
            self.copy_images(images)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down(quiet=True)
            raise
        return self.status()

    def _network_and_swarm(self, info: Mapping[str, Any]) -> str:
        """Create the cluster's network, and the swarm when the engine is in none; the address the
        workers join (the manager's on the cluster's network for a swarm made here)."""
        had_gwbridge = bool(self.client.networks.list(names=[GWBRIDGE]))
        swarm = info.get("Swarm") or {}
        init = swarm.get("LocalNodeState") != "active"
        network = self.client.networks.create(
            NETWORK, driver="bridge",
            labels=L.project_labels(CLUSTER, L.ROLE_NETWORK, **{L.LABEL_SWARM_INIT: str(init).lower(),
                                                                 L.LABEL_GWBRIDGE_MADE: str(not had_gwbridge).lower()}))
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        if init:
            self.client.swarm.init(advertise_addr=gateway, listen_addr=f"{gateway}:{SWARM_PORT}")
            self.say(f"cluster: this engine is the swarm's manager, at {gateway}:{SWARM_PORT} on {NETWORK}")
            self.client.swarm.reload()
            return str(gateway)
        self.client.swarm.reload()
        return str(swarm.get("NodeAddr") or gateway)

    def _join(self, hostname: str, manager_addr: str, token: str) -> None:
        """Wait for the worker's engine, join it, wait until the manager sees it ready; raise
        EngineError naming the node and what its engine said otherwise."""
        socket = self.sockets().get(hostname, "")
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        node = None
        while node is None:
            container = self.client.containers.get(container_name(hostname))
            if container.status == "exited":
                raise UsageError(f"cluster up: node {hostname}'s engine exited: {self._last_log(container)}")
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException, OSError):
                if Path(socket).exists():
                    candidate = node_client(socket)
                    if candidate.ping():
                        node = candidate
                        break
            if time.monotonic() > deadline:
                raise EngineError(f"cluster up: node {hostname}'s engine did not answer within "
                                  f"{ENGINE_START_TIMEOUT_S:g} s: {self._last_log(container)}")
            time.sleep(POLL_S)
        try:  # by interface: a node started again may have another address there, and rejoins with it
            node.swarm.join(remote_addrs=[f"{manager_addr}:{SWARM_PORT}"], join_token=token,
                            listen_addr=f"0.0.0.0:{SWARM_PORT}", advertise_addr="eth0")
        except docker.errors.APIError as exc:
            raise EngineError(f"cluster up: node {hostname} could not join the swarm at {manager_addr}: "
                              f"{_short(exc)}") from exc
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            found = [n for n in self.client.nodes.list(filters={"name": hostname})
                     if n.attrs.get("Description", {}).get("Hostname") == hostname]
            if found and found[0].attrs.get("Status", {}).get("State") == "ready":
                spec = dict(found[0].attrs["Spec"])
                spec["Labels"] = {**(spec.get("Labels") or {}),
                                  **L.project_labels(CLUSTER, L.ROLE_NODE, **{L.LABEL_NODE: hostname})}
                found[0].update(spec)
                return
            if time.monotonic() > deadline:
                raise EngineError(f"cluster up: node {hostname} joined but the manager did not see it ready "
                                  f"within {JOIN_TIMEOUT_S:g} s")
            time.sleep(POLL_S)

    @staticmethod
    def _last_log(container: Any) -> str:
        with contextlib.suppress(docker.errors.DockerException):
            lines = [line for line in container.logs(tail=20).decode(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "level=error" in line or "level=fatal" in line or "failed" in line]
            return str((errors or lines or ["(no output)"])[-1][-300:])
        return "(no output)"

    # -- images -------------------------------------------------------------------------------
    def copy_images(self, refs: Iterable[str]) -> dict[str, list[str]]:
        """Make each image (by ref or id) present on every worker, by id: ``docker save`` here,
        ``docker load`` there. Returns hostname -> the images copied. Raises EngineError naming the
        node and the image when one cannot be copied."""
        copied: dict[str, list[str]] = {}
        wanted = list(dict.fromkeys(refs))
        for hostname, socket in self.sockets().items():
            try:
                node = node_client(socket, timeout=600)
            except docker.errors.DockerException as exc:
                raise EngineError(f"node {hostname}: its engine does not answer at {socket}: {_short(exc)}") from exc
            for ref in wanted:
                image = self.client.images.get(ref)
                with contextlib.suppress(docker.errors.ImageNotFound):
                    node.images.get(image.id or ref)
                    continue
                started = time.monotonic()
                try:
                    node.images.load(b"".join(image.save(named=True)))  # a few hundred MB at most
                    node.images.get(image.id or ref)
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    raise EngineError(f"image {ref} is not on node {hostname}, and copying it there failed: "
                                      f"{_short(exc)}") from exc
                copied.setdefault(hostname, []).append(ref)
                self.say(f"cluster: {ref} copied to {hostname} in {time.monotonic() - started:.1f} s")
        return copied

    # -- down ---------------------------------------------------------------------------------
    def down(self, *, quiet: bool = False) -> dict[str, int]:
        """Remove the workers, their volumes, folders and network, their entries in the manager's
        node list; leave the swarm when ``up`` initialised it. UsageError (touching nothing) while
        a swarm made here still runs services: their fleets come down first."""
        network = self._network()
        init = network is not None and network.attrs.get("Labels", {}).get(L.LABEL_SWARM_INIT) == "true"
        made_gwbridge = network is not None and network.attrs.get("Labels", {}).get(L.LABEL_GWBRIDGE_MADE) == "true"
        if init and not quiet:
            with contextlib.suppress(docker.errors.APIError):
                services = [s.name for s in self.client.services.list()]
                if services:
                    raise UsageError(f"cluster down: the cluster's swarm still runs {len(services)} service(s) "
                                     f"({', '.join(sorted(services)[:3])}); sandbox down --project P "
                                     "their fleets first")
        removed = {"nodes": 0, "volumes": 0, "networks": 0}
        hostnames: list[str] = []
        for container in self.node_containers():
            hostname = container.labels.get(L.LABEL_NODE, "")
            hostnames.append(hostname)
            socket = container.labels.get(L.LABEL_NODE_SOCKET, "")
            if container.status == "running" and socket:
                with contextlib.suppress(docker.errors.DockerException, requests.RequestException, OSError):
                    node_client(socket, timeout=20).swarm.leave(force=True)
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed["nodes"] += 1
            if socket:
                shutil.rmtree(Path(socket).parent, ignore_errors=True)
        for volume in self.client.volumes.list(filters=L.project_filter(CLUSTER)):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)
                removed["volumes"] += 1
        self._forget_nodes(hostnames if init else [])
        if init:
            with contextlib.suppress(docker.errors.APIError):
                self.client.swarm.leave(force=True)
            if made_gwbridge:
                for net in self.client.networks.list(names=[GWBRIDGE]):
                    with contextlib.suppress(docker.errors.APIError):
                        net.remove()
        if network is not None:
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                removed["networks"] += 1
        with contextlib.suppress(OSError):
            for folder in sorted(SOCKET_ROOT.glob("*"), reverse=True):
                folder.rmdir()  # only the empty ones
        return removed

    def _forget_nodes(self, hostnames: list[str]) -> None:
        """Remove the cluster's workers from the manager's node list (they left, or are gone): those
        labelled as the cluster's, and, in a swarm ``up`` made, ``hostnames`` (a worker that joined
        but was not labelled yet)."""
        with contextlib.suppress(docker.errors.APIError):
            for node in self.client.nodes.list():
                labels = node.attrs.get("Spec", {}).get("Labels") or {}
                hostname = node.attrs.get("Description", {}).get("Hostname", "")
                ours = labels.get(L.LABEL_PROJECT) == CLUSTER or hostname in hostnames
                if ours and node.attrs.get("Spec", {}).get("Role") == "worker":
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.api.remove_node(str(node.id), force=True)


# -- the command's entry points (async: the SDK runs in a worker thread) --------------------------
def _client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answers ({_short(exc)}); run the set-up command from the README") from exc
    return client


def _toy_images(client: docker.DockerClient, say: Callable[[str], None]) -> list[str]:
    from sandbox.fleet.images import ensure_images  # the toy's images: every node can run the default fleet
    images = ensure_images(client, log=say)
    return [images.app[v] for v in sorted(images.app)]


def machine_problem(euid: int | None = None) -> str | None:
    """What this machine lacks for a cluster, before any engine is asked: root, the kernel's modules."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "cluster up needs root (each node's engine socket on this machine is root's)"
    return missing_kernel_support()


async def up(nodes: int, *, say: Callable[[str], None] = print) -> list[Node]:
    """``sandbox cluster up --nodes N``: the nodes as ``status`` then shows them. Bad input and a
    machine that cannot run a cluster are UsageError (one line) before an engine is asked."""
    check_nodes(nodes)
    if problem := machine_problem():
        raise UsageError(f"cluster up: {problem}")

    def run() -> list[Node]:
        client = _client()
        cluster = Cluster(client, say=say)
        cluster.preflight(nodes)
        return cluster.up(nodes, _toy_images(client, say))
    return await asyncio.to_thread(run)


async def down(*, say: Callable[[str], None] = print) -> dict[str, int]:
    """``sandbox cluster down``: what was removed."""
    return await asyncio.to_thread(lambda: Cluster(_client(), say=say).down())


async def status() -> list[Node]:
    """``sandbox cluster status``: the swarm's nodes, the manager first."""
    return await asyncio.to_thread(lambda: Cluster(_client()).status())

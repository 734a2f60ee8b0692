"""Every Docker call of rolling-sandbox lives here.

The Docker SDK blocks, so every public method of :class:`Runtime` is a
coroutine that runs the SDK call in a worker thread (``asyncio.to_thread``).
Docker labels (``sandbox.fleet.labels``) are the only state: a fresh process finds
the fleet, the load balancer and the network by label. Errors from the SDK are
converted where they enter, to :class:`~sandbox.errors.EngineError`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from sandbox.errors import EngineError, GoneError, NotFoundError, PortInUseError
from sandbox.fleet import labels as L
from sandbox.fleet import tarball
from sandbox.fleet.versions import TOY_VERSIONS, AppSpec

log = logging.getLogger("sandbox.fleet.runtime")

APP_PORT = 8000
APP_USER = "10001:10001"
APP_CODE_DIR = "/srv/app"
LB_CONTAINER_PORT = 80
DOCKER_THREADS = 32  # concurrent Docker API calls (and the client's connection pool)
T = TypeVar("T")


@dataclass(frozen=True)
class Instance:
    """One app container, as Docker reports it now."""

    id: str
    name: str
    slot: int
    version: str  # the code it runs (after an in-place swap, the swapped-in version)
    state: str  # Docker's state: created, running, exited, ...
    ip: str | None
    created: str
    probe_ip: str | None = None  # where the controller reaches it, when not at ``ip`` (Swarm: see swarm.py)
    port: int = APP_PORT  # the port the app listens on (--app-port)

    @property
    def address(self) -> str | None:
        """``ip:port`` the load balancer uses, or None when it has no address."""
        return f"{self.ip}:{self.port}" if self.ip else None

    @property
    def probe_address(self) -> str | None:
        """``ip:port`` the controller's probes use: ``probe_ip`` when set, else ``address``."""
        return f"{self.probe_ip}:{self.port}" if self.probe_ip else self.address


REDIS_PORT = 6379


def network_name(project: str) -> str:
    return f"{project}-net"


def lb_name(project: str) -> str:
    return f"{project}-lb"


def app_name(project: str, slot: int) -> str:
    return f"{project}-app-{slot}-{secrets.token_hex(3)}"


class Runtime:
    """The Docker engine, seen through this project's labels."""

    engine = "docker"  # recorded on the load balancer (LABEL_ENGINE): later commands pick the same runtime
    network_driver: dict[str, Any] = {"driver": "bridge"}  # noqa: RUF012 - read-only class constant

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        # Docker calls block; asyncio's default pool has cpu+4 threads, which serialises starting
        # a fleet of 9 or 60 on a small machine. The engine does the work; threads only wait.
        self._pool = ThreadPoolExecutor(max_workers=DOCKER_THREADS, thread_name_prefix="docker")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def connect(cls) -> Runtime:
        """Connect to the engine from the environment (DOCKER_HOST or the default socket).

        Raises EngineError with one line when no engine answers.
        """
        try:
            client = docker.from_env(timeout=120, max_pool_size=DOCKER_THREADS)
            client.ping()
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"no Docker engine answers ({_short(exc)}); run the set-up command from the README"
            ) from exc
        return cls(client)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except docker.errors.NotFound as exc:
            raise GoneError(f"docker: {_short(exc)} (removed while the sandbox was using it?)") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {_short(exc)}") from exc
        except requests.exceptions.RequestException as exc:  # the engine went away mid-call
            raise EngineError(f"the Docker engine stopped answering: {_short(exc)}") from exc

    # -- discovery ----------------------------------------------------------------------------
    async def instances(self, project: str) -> list[Instance]:
        """This project's app containers, in slot order, whatever their state."""
        return await self._call(self._instances, project)

    async def app_states(self, project: str) -> dict[str, str]:
        """Name -> Docker state of this project's app containers: one listing, nothing read inside
        them (what the executor checks before every step)."""
        def states() -> dict[str, str]:
            # the low-level listing: `containers.list` would inspect every container once more
            found = self.client.api.containers(all=True, filters=L.project_filter(project, L.ROLE_APP))
            return {(c.get("Names") or ["/"])[0].lstrip("/"): c.get("State", "") for c in found}
        return await self._call(states)

    def _instances(self, project: str) -> list[Instance]:
        found = self.client.containers.list(all=True, filters=L.project_filter(project, L.ROLE_APP))
        if len(found) > 1:  # one VERSION read per container: do them side by side
            with ThreadPoolExecutor(max_workers=min(8, len(found))) as pool:
                out = list(pool.map(lambda c: self._describe(c, project), found))
        else:
            out = [self._describe(c, project) for c in found]
        return sorted(out, key=lambda i: (i.slot, i.created))

    def _describe(self, c: Container, project: str) -> Instance:
        net = c.attrs.get("NetworkSettings", {}).get("Networks", {}).get(network_name(project), {})
        ip = net.get("IPAddress") or None
        version = c.labels.get(L.LABEL_VERSION, "?")
        if version in TOY_VERSIONS and c.status in ("running", "exited", "created", "paused"):
            # in-place rollouts swap the code under a container (which may then have failed to
            # boot and exited): the VERSION file in its code volume is the truth, not the label
            # (only the toy app has one: a version named by the user is the label)
            try:
                bits, _ = c.get_archive(f"{APP_CODE_DIR}/VERSION")
                version = tarball.first_file(bits).decode().strip() or version
            except docker.errors.DockerException:
                pass
        return Instance(
            id=c.id or "",
            name=c.name or "",
            slot=int(c.labels.get(L.LABEL_SLOT, "0")),
            version=version,
            state=c.status,
            ip=ip,
            created=c.attrs.get("Created", ""),
            port=int(c.labels.get(L.LABEL_APP_PORT, APP_PORT)),
        )

    async def lb(self, project: str) -> Container | None:
        """The project's load balancer container, or None."""
        return await self._call(self._lb, project)

    def _lb(self, project: str) -> Container | None:
        found = self.client.containers.list(all=True, filters=L.project_filter(project, L.ROLE_LB))
        return found[0] if found else None

    async def admin_ip(self, container: Container, project: str) -> str | None:
        """Where the controller reaches ``container`` (the LB's admin listener): its address in the
        project network, or None."""
        nets = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        return nets.get(network_name(project), {}).get("IPAddress") or None

    async def lb_port(self, project: str) -> int | None:
        lb = await self.lb(project)
        return int(lb.labels[L.LABEL_PORT]) if lb and L.LABEL_PORT in lb.labels else None

    # -- network ------------------------------------------------------------------------------
    async def ensure_network(self, project: str) -> str:
        """Create the project's network (``network_driver``) if missing; return its name."""
        return await self._call(self._ensure_network, project)

    def _ensure_network(self, project: str) -> str:
        name = network_name(project)
        existing = self.client.networks.list(filters=L.project_filter(project, L.ROLE_NETWORK))
        if existing:
            return existing[0].name or name
        try:
            self.client.networks.get(name)
        except docker.errors.NotFound:
            pass
        else:
            raise EngineError(f"network {name} exists but does not belong to project {project}")
        self.client.networks.create(
            name, labels=L.project_labels(project, L.ROLE_NETWORK), **self.network_driver
        )
        return name

    # -- app containers -----------------------------------------------------------------------
    async def start_app(
        self, project: str, slot: int, version: str, image: str, env: dict[str, str], from_version: str = "",
        *, spec: AppSpec | None = None, toy: bool = True,
    ) -> Instance:
        """Create and start one app container in ``slot``; return it with its address.

        ``spec`` is the app's contract (port, stop signal, command, memory, read-only); ``toy``
        containers get the toy app's code volume and user, your own images keep their USER.
        """
        return await self._call(self._start_app, project, slot, version, image, env, from_version,
                                spec or AppSpec(), toy)

    def _start_app(
        self, project: str, slot: int, version: str, image: str, env: dict[str, str], from_version: str,
        spec: AppSpec, toy: bool,
    ) -> Instance:
        name = app_name(project, slot)
        extra = {L.LABEL_SLOT: str(slot), L.LABEL_VERSION: version, L.LABEL_APP_PORT: str(spec.port)}
        if from_version:
            extra[L.LABEL_FROM] = from_version
        container_labels = L.project_labels(project, L.ROLE_APP, **extra)
        volume_labels = L.project_labels(project, L.ROLE_VOLUME, **{L.LABEL_SLOT: str(slot)})
        options: dict[str, Any] = {}
        if toy:
            options.update(mounts=[Mount(APP_CODE_DIR, None, type="volume", labels=volume_labels)], user=APP_USER)
        if spec.stop_signal:
            options["stop_signal"] = spec.stop_signal
        if spec.command:
            options["command"] = list(spec.command)
        container = self.client.containers.create(  # never `run`: it pulls an image that is not here
            image,
            name=name,
            hostname=name,
            detach=True,
            labels=container_labels,
            environment=env,
            network=network_name(project),
            read_only=spec.read_only,
            tmpfs={"/tmp": "size=16m"},
            cap_drop=["ALL"],  # no published port, no capabilities, no new privileges: always
            security_opt=["no-new-privileges"],
            mem_limit=spec.memory,
            pids_limit=128,
            **options,
        )
        container.start()
        container.reload()
        return self._describe(container, project)

    async def health(self, instance: Instance) -> str | None:
        """Docker's health status of the container (``starting``, ``healthy``, ``unhealthy``), or None
        when its image has no HEALTHCHECK."""
        def get() -> str | None:
            c = self.client.containers.get(instance.id)
            health = (c.attrs.get("State") or {}).get("Health")
            return str(health.get("Status")) if health else None
        return await self._call(get)

    async def refresh(self, project: str, instance: Instance) -> Instance | None:
        """The instance as Docker sees it now, or None when it is gone."""
        def get() -> Instance | None:
            try:
                return self._describe(self.client.containers.get(instance.id), project)
            except docker.errors.NotFound:
                return None
        return await self._call(get)

    async def stop_app(self, instance: Instance, grace_s: float) -> int | None:
        """SIGTERM, wait up to ``grace_s``, SIGKILL, then remove with its volume; return the exit code."""
        def stop() -> int | None:
            try:
                c = self.client.containers.get(instance.id)
            except docker.errors.NotFound:
                return None
            c.stop(timeout=max(1, round(grace_s)))
            code = c.wait(timeout=30).get("StatusCode")
            c.remove(v=True, force=True)
            return code
        return await self._call(stop)

    async def kill_app(self, instance: Instance) -> None:
        """SIGKILL and remove at once (the naive strategy), volume included."""
        def kill() -> None:
            with suppress(docker.errors.NotFound):
                self.client.containers.get(instance.id).remove(v=True, force=True)
        await self._call(kill)

    async def swap_code(self, project: str, instance: Instance, code_tar: bytes) -> Instance:
        """Copy new code into the container's code volume and reload the app (SIGHUP), or start
        the container again if it had exited. Returns the container as it is now (a restarted
        container may have a new address)."""
        def swap() -> Instance:
            c = self.client.containers.get(instance.id)
            if not c.put_archive(APP_CODE_DIR, code_tar):
                raise EngineError(f"{instance.name}: could not copy the new code in")
            c.reload()
            if c.status == "running":
                c.kill(signal="SIGHUP")  # the supervisor restarts the app from the new code
            else:
                c.start()  # it had exited (a version that failed to boot): start it on the new code
                c.reload()
            return self._describe(c, project)
        return await self._call(swap)

    async def exit_info(self, instance: Instance) -> str:
        """A one-line account of why a container is not running: state, exit code, last log line."""
        def info() -> str:
            try:
                c = self.client.containers.get(instance.id)
            except docker.errors.NotFound:
                return "container is gone"
            state = c.attrs.get("State", {})
            lines = c.logs(tail=5).decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            return f"state {c.status}, exit code {state.get('ExitCode')}" + (f": {last}" if last else "")
        return await self._call(info)

    # -- load balancer ------------------------------------------------------------------------
    async def start_lb(self, project: str, port: int, image: str,
                       extra_labels: dict[str, str] | None = None) -> Container:
        """Start the NGINX container, published on 127.0.0.1:``port`` only; ``extra_labels`` (keyed)
        record what the fleet was started with (its versions map)."""
        def start() -> Container:
            try:
                return self.client.containers.run(
                    image,
                    name=lb_name(project),
                    hostname=lb_name(project),
                    detach=True,
                    labels=L.project_labels(project, L.ROLE_LB, **{L.LABEL_PORT: str(port), L.LABEL_ENGINE: self.engine,
                                                                   L.LABEL_ADMIN_TOKEN: secrets.token_hex(16),
                                                                   **(extra_labels or {})}),
                    network=network_name(project),
                    ports={f"{LB_CONTAINER_PORT}/tcp": ("127.0.0.1", port)},
                    cap_drop=["ALL"],
                    cap_add=["CHOWN", "DAC_OVERRIDE", "SETGID", "SETUID", "NET_BIND_SERVICE", "KILL"],
                    security_opt=["no-new-privileges"],
                    mem_limit="256m",
                    pids_limit=256,
                    restart_policy={"Name": "on-failure"},  # crashed: the engine starts it again, controller or not
                )
            except docker.errors.APIError as exc:
                if "address already in use" in str(exc) or "port is already allocated" in str(exc):
                    self._remove_by_name(lb_name(project))
                    raise PortInUseError(f"port: 127.0.0.1:{port} is already in use") from exc
                raise
        return await self._call(start)

    async def start_redis(self, project: str, image: str) -> str:
        """Start the project's session store (redis-server of the base image, nothing persisted);
        return its ``host:port`` on the project network."""
        name = f"{project}-redis"
        def start() -> None:
            self.client.containers.run(
                image, ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                        "--save", "", "--appendonly", "no", "--dir", "/tmp"],
                name=name, hostname=name, detach=True, labels=L.project_labels(project, L.ROLE_REDIS),
                network=network_name(project), read_only=True, tmpfs={"/tmp": "size=64m"}, user="redis",
                cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit="128m", pids_limit=64,
            )
        await self._call(start)
        return f"{name}:{REDIS_PORT}"

    async def start_again(self, container: Container) -> Container:
        """Start a stopped container of the project (the load balancer after `docker stop`), as it was."""
        def start() -> Container:
            container.start()
            container.reload()
            return container
        return await self._call(start)

    def _remove_by_name(self, name: str) -> None:
        with suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True, v=True)

    async def exec(self, container: Container, cmd: list[str]) -> tuple[int, str]:
        """Run ``cmd`` in ``container``; return (exit code, combined output)."""
        def run() -> tuple[int, str]:
            result = container.exec_run(cmd, stdout=True, stderr=True)
            return int(result.exit_code or 0), (result.output or b"").decode(errors="replace")
        return await self._call(run)

    async def put_file(self, container: Container, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (its directory must exist) in ``container``."""
        directory, _, filename = path.rpartition("/")
        def put() -> None:
            if not container.put_archive(directory or "/", tarball.pack({filename: data})):
                raise EngineError(f"could not write {path} in {container.name}")
        await self._call(put)

    async def read_file(self, container: Container, path: str) -> bytes:
        """The content of ``path`` in ``container``; raises EngineError when it is missing."""
        def read() -> bytes:
            try:
                bits, _ = container.get_archive(path)
            except docker.errors.NotFound as exc:
                raise EngineError(f"{path} not found in {container.name}") from exc
            return tarball.first_file(bits)
        return await self._call(read)

    # -- teardown -----------------------------------------------------------------------------
    async def down(self, project: str) -> dict[str, int]:
        """Remove this project's containers, volumes and network, and nothing else."""
        return await self._call(self._down, project)

    def _down(self, project: str) -> dict[str, int]:
        removed = {"containers": 0, "volumes": 0, "networks": 0}
        for c in self.client.containers.list(all=True, filters=L.project_filter(project)):
            c.remove(force=True, v=True)
            removed["containers"] += 1
        for v in self.client.volumes.list(filters=L.project_filter(project)):
            try:
                v.remove(force=True)
                removed["volumes"] += 1
            except docker.errors.NotFound:
                pass
        for n in self.client.networks.list(filters=L.project_filter(project)):
            n.remove()
            removed["networks"] += 1
        return removed

    async def has_project(self, project: str) -> bool:
        def has() -> bool:
            return bool(
                self.client.containers.list(all=True, filters=L.project_filter(project))
                or self.client.networks.list(filters=L.project_filter(project))
            )
        return await self._call(has)

    async def require_fleet(self, project: str) -> tuple[Container, list[Instance]]:
        """The load balancer and instances; NotFoundError when the project has no fleet."""
        lb = await self.lb(project)
        if lb is None:
            raise NotFoundError(f"project {project!r} has no fleet; start one with `sandbox up`")
        return lb, await self.instances(project)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""What the Docker engine and the Swarm engine share: the client, its thread pool, the images,
the project's network, the load balancer and session-store containers, exec and files, teardown.

The Docker SDK blocks, so every public method is a coroutine that runs the SDK call in a
worker thread. Docker labels (``sandbox.fleet.labels``) and the record on the project's state
volume are the state: a fresh process finds the fleet, the load balancer and the network by
label. Errors from the SDK are converted where they enter, to :class:`~sandbox.errors.EngineError`.
How the app servers run (containers or services) is each engine's own:
:mod:`sandbox.fleet.runtime`, :mod:`sandbox.fleet.swarm`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar, cast

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from sandbox.errors import EngineError, EngineUnreachable, GoneError, NotFoundError, PortInUseError, hint
from sandbox.fleet import labels as L
from sandbox.fleet import tarball, versions
from sandbox.fleet.engine import STATE_DIR, Instance, LbHandle
from sandbox.fleet.images import ImageSet, ensure_db_image, ensure_images, prune_images
from sandbox.ports import free_port

log = logging.getLogger("sandbox.fleet.docker")

APP_USER = "10001:10001"  # the toy app's user (your own images keep their USER)
LB_CONTAINER_PORT = 80
# NGINX as www-data (the image's USER), master and workers, with no capability and a read-only
# root: it writes its pid and temporary files to tmpfs, and the config the controller installs
# and the access log it reads to volumes (Docker's archive calls cannot reach into a tmpfs).
LB_VOLUMES = ("/etc/nginx", "/var/log/nginx")
LB_TMPFS_OWNER = "uid=33,gid=33"  # www-data in Debian's image: a tmpfs is root's unless told
LB_HARDENING: dict[str, Any] = {
    "read_only": True,
    "tmpfs": {"/run": f"size=1m,{LB_TMPFS_OWNER}", "/var/lib/nginx": f"size=64m,{LB_TMPFS_OWNER}",
              "/tmp": f"size=16m,{LB_TMPFS_OWNER}"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},  # port 80 without NET_BIND_SERVICE
}
REDIS_PORT = 6379
POSTGRES_PORT = 5432
POSTGRES_USER = "app"
POSTGRES_DB = "postgres"
POSTGRES_HOME = "/var/lib/postgresql"  # the postgres user's home in Debian's package: the data volume's mount
# initdb on an empty volume (the password from the environment, never on a command line), every
# client on the project network with a password (scram), then the server in the foreground as PID 1
POSTGRES_SCRIPT = r"""set -eu
bin=$(echo /usr/lib/postgresql/*/bin)
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  "$bin/initdb" -D "$data" -U app --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
"""
DOCKER_THREADS = 32  # concurrent Docker API calls (and the client's connection pool)
T = TypeVar("T")


def network_name(project: str) -> str:
    return f"{project}-net"


def lb_name(project: str) -> str:
    return f"{project}-lb"


def state_volume_name(project: str) -> str:
    return f"{project}-state"


def postgres_name(project: str) -> str:
    return f"{project}-postgres"


def app_name(project: str, slot: int) -> str:
    return f"{project}-app-{slot}-{secrets.token_hex(3)}"


def handle(container: Container) -> LbHandle:
    """The engine-neutral snapshot of a container."""
    state = container.attrs.get("State") or {}
    code = state.get("ExitCode") if container.status != "running" else None
    return LbHandle(id=container.id or "", name=container.name or "", state=container.status,
                    labels=dict(container.labels), exit_code=code if isinstance(code, int) else None,
                    finished_at=_finished_at(str(state.get("FinishedAt") or "")))


def _finished_at(text: str) -> float | None:
    """Docker's ``FinishedAt`` (RFC 3339, nanoseconds) as unix time; None when it never finished."""
    if not text or text.startswith("0001"):
        return None
    stamp, _, fraction = text.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")
    except ValueError:
        return None


class DockerBase(ABC):
    """A Docker client seen through this project's labels; each engine adds its app servers."""

    engine: ClassVar[str]  # recorded on the load balancer (LABEL_ENGINE): later commands pick the same engine
    network_driver: ClassVar[dict[str, Any]]

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        # Docker calls block; asyncio's default pool has cpu+4 threads, which serialises starting
        # a fleet of 9 or 60 on a small machine. The engine does the work; threads only wait.
        self._pool = ThreadPoolExecutor(max_workers=DOCKER_THREADS, thread_name_prefix="docker")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def connect(cls) -> Self:
        """Connect to the engine from the environment (DOCKER_HOST or the default socket).

        Raises EngineError with one line when no engine answers.
        """
        try:
            client = docker.from_env(timeout=120, max_pool_size=DOCKER_THREADS)
            client.ping()
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"no Docker engine answers ({short(exc)}); run the set-up command from the README"
            ) from exc
        return cls(client)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except docker.errors.NotFound as exc:
            raise GoneError(f"docker: {short(exc)} (removed while the sandbox was using it?)") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"docker: {short(exc)}") from exc
        except requests.exceptions.RequestException as exc:  # the engine went away mid-call
            raise EngineUnreachable(f"the Docker engine stopped answering: {short(exc)}") from exc

    def _send_stop_signal(self, container_id: str | None, client: docker.DockerClient | None = None) -> str | None:
        """Send a container (of ``client``'s engine, this one's by default) its stop signal (its
        configured one, SIGTERM by default) and return it; None when it is gone or no longer running."""
        if not container_id:
            return None
        try:
            c = (client or self.client).containers.get(container_id)
            signal = str(c.attrs.get("Config", {}).get("StopSignal") or "SIGTERM")
            c.kill(signal=signal)
            return signal
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: it is not running (it already exited)
                raise
            return None

    # -- images (built by the engine that runs them) ------------------------------------------
    async def ensure_images(self, *, force: bool = False, say: Callable[[str], None] = log.info) -> ImageSet:
        """Build the images of the set that are missing (all of them with ``force``)."""
        return await asyncio.to_thread(ensure_images, self.client, log=say, force=force)

    async def ensure_db_image(self, *, say: Callable[[str], None] = log.info, force: bool = False) -> str:
        """The PostgreSQL image's ref, built first when missing (again with ``force``)."""
        return await self._call(ensure_db_image, self.client, log=say, force=force)

    async def prune_images(self) -> list[str]:
        """Remove older rolling-sandbox images no container uses; the tags removed."""
        return await asyncio.to_thread(prune_images, self.client)

    async def resolve_versions(self, project: str, images: Mapping[str, str], builds: Mapping[str, str],
                               say: Callable[[str], None] = log.info) -> dict[str, str]:
        """Check each ``--image`` exists locally, then build each ``--build`` directory; ``{name: ref}``."""
        return await asyncio.to_thread(versions.resolve, self.client, project, images, builds, say)

    # -- discovery ----------------------------------------------------------------------------
    async def lb(self, project: str) -> LbHandle | None:
        """The project's load balancer container, or None."""
        return await self._call(self._lb, project)

    def _lb(self, project: str) -> LbHandle | None:
        found = self.client.containers.list(all=True, filters=L.project_filter(project, L.ROLE_LB))
        return handle(found[0]) if found else None

    async def stopped_services(self, project: str) -> list[LbHandle]:
        """The project's session store and database containers that are not running (an engine
        restart stops them: they have no restart policy), in name order."""
        def stopped() -> list[LbHandle]:
            found = [c for role in (L.ROLE_REDIS, L.ROLE_POSTGRES)
                     for c in self.client.containers.list(all=True, filters=L.project_filter(project, role))]
            return sorted((handle(c) for c in found if c.status != "running"), key=lambda h: h.name)
        return await self._call(stopped)

    async def admin_ip(self, lb: LbHandle, project: str) -> str | None:
        """Where the controller reaches the LB's admin listener: its address in the project
        network, or None."""
        def ip() -> str | None:
            nets = self.client.containers.get(lb.id).attrs.get("NetworkSettings", {}).get("Networks", {})
            return nets.get(network_name(project), {}).get("IPAddress") or None
        return await self._call(ip)

    async def lb_port(self, project: str) -> int | None:
        lb = await self.lb(project)
        return int(lb.labels[L.LABEL_PORT]) if lb and L.LABEL_PORT in lb.labels else None

    async def require_fleet(self, project: str) -> tuple[LbHandle, list[Instance]]:
        """The load balancer and instances; NotFoundError when the project has no fleet."""
        lb = await self.lb(project)
        if lb is None:
            if await self._call(self.client.volumes.list, filters=L.project_filter(project, L.ROLE_STATE)):
                raise NotFoundError(f"project {project!r}: its load balancer container is gone; "
                                    f"{hint('roll', project)} or {hint('rollback', project)} creates it again")
            raise NotFoundError(f"project {project!r} has no fleet; start one with {hint('up', project)}")
        return lb, await self.instances(project)

    @abstractmethod
    async def instances(self, project: str) -> list[Instance]:
        """This project's app servers, in (slot, created) order, whatever their state."""

    async def has_project(self, project: str) -> bool:
        def has() -> bool:
            return bool(
                self.client.containers.list(all=True, filters=L.project_filter(project))
                or self.client.networks.list(filters=L.project_filter(project))
            )
        return await self._call(has)

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

    # -- load balancer and session store ------------------------------------------------------
    async def start_lb(self, project: str, port: int, image: str,
                       extra_labels: dict[str, str] | None = None) -> LbHandle:
        """Start the NGINX container, published on 127.0.0.1:``port`` only; ``extra_labels`` (keyed)
        record what the fleet was started with (its versions map). A new state volume
        (:data:`~sandbox.fleet.engine.STATE_DIR`) carries the same labels, so :meth:`recreate_lb`
        can start it again after its container was removed."""
        recorded = L.project_labels(project, L.ROLE_STATE, **{L.LABEL_PORT: str(port), L.LABEL_ENGINE: self.engine,
                                                              **(extra_labels or {})})

        def start() -> LbHandle:
            with suppress(docker.errors.NotFound):  # a stale one (containers removed by hand, no `down`)
                self.client.volumes.get(state_volume_name(project)).remove(force=True)
            self.client.volumes.create(state_volume_name(project), labels=recorded)
            return self._run_lb(project, port, image, recorded)
        return await self._call(start)

    async def recreate_lb(self, project: str, image: str) -> LbHandle | None:
        """Start the load balancer again after its container was removed, from the labels on the
        project's state volume (mounted again: the record on it is kept); None without one."""
        def start() -> LbHandle | None:
            found = self.client.volumes.list(filters=L.project_filter(project, L.ROLE_STATE))
            if not found:
                return None
            recorded = dict(found[0].attrs.get("Labels") or {})
            return self._run_lb(project, int(recorded[L.LABEL_PORT]), image, recorded)
        return await self._call(start)

    def _run_lb(self, project: str, port: int, image: str, recorded: Mapping[str, str]) -> LbHandle:
        """Run the NGINX container with the state volume's labels, a new admin token and the volumes."""
        labels = {**recorded, L.LABEL_ROLE: L.ROLE_LB, L.LABEL_ADMIN_TOKEN: secrets.token_hex(16)}
        try:
            return handle(self.client.containers.run(
                image,
                name=lb_name(project),
                hostname=lb_name(project),
                detach=True,
                labels=labels,
                network=network_name(project),
                ports={f"{LB_CONTAINER_PORT}/tcp": ("127.0.0.1", port)},
                **LB_HARDENING,
                mounts=[*(Mount(path, None, type="volume", labels=L.project_labels(project, L.ROLE_VOLUME))
                          for path in LB_VOLUMES),
                        Mount(STATE_DIR, state_volume_name(project), type="volume")],
                mem_limit="256m",
                pids_limit=256,
                restart_policy={"Name": "on-failure"},  # crashed: the engine starts it again, controller or not
            ))
        except docker.errors.APIError as exc:
            if "address already in use" in str(exc) or "port is already allocated" in str(exc):
                self._remove_by_name(lb_name(project))
                raise PortInUseError(f"port: 127.0.0.1:{port} is already in use") from exc
            raise

    async def start_redis(self, project: str, image: str, password: str) -> str:
        """Start the project's session store (redis-server of the base image, nothing persisted),
        which answers only clients that AUTH with ``password``; return its ``host:port`` on the
        project network."""
        name = f"{project}-redis"
        def start() -> None:
            self.client.containers.run(
                image, ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                        "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", "/tmp"],
                name=name, hostname=name, detach=True, labels=L.project_labels(project, L.ROLE_REDIS),
                network=network_name(project), read_only=True, tmpfs={"/tmp": "size=64m"}, user="redis",
                cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit="128m", pids_limit=64,
            )
        await self._call(start)
        return f"{name}:{REDIS_PORT}"

    async def start_postgres(self, project: str, image: str, password: str) -> str:
        """Start the project's PostgreSQL server (Debian's, from ``image``) on the project network,
        its port also published on 127.0.0.1 only (a free port, recorded in the container's port
        label: the host's hooks reach it, nothing beyond the host), its data on a project volume
        that ``down`` removes, clients admitted with ``password``; return its ``DATABASE_URL`` (the
        server may still be starting: see :meth:`postgres_ready`)."""
        name = postgres_name(project)
        def start() -> None:
            for attempt in range(3):  # another process may take the free port before Docker binds it
                port = free_port()
                try:
                    self.client.containers.run(
                        image, ["sh", "-c", POSTGRES_SCRIPT], name=name, hostname=name, detach=True,
                        labels=L.project_labels(project, L.ROLE_POSTGRES, **{L.LABEL_PORT: str(port)}),
                        environment={"POSTGRES_PASSWORD": password}, network=network_name(project),
                        ports={f"{POSTGRES_PORT}/tcp": ("127.0.0.1", port)}, user="postgres",
                        tmpfs={"/tmp": "size=64m"},
                        mounts=[Mount(POSTGRES_HOME, f"{project}-postgres-data", type="volume",
                                      labels=L.project_labels(project, L.ROLE_VOLUME))],
                        cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit="512m", pids_limit=256,
                    )
                    return
                except docker.errors.APIError as exc:
                    taken = "address already in use" in str(exc) or "port is already allocated" in str(exc)
                    if not taken or attempt == 2:
                        raise
                    self._remove_by_name(name)
        await self._call(start)
        return f"postgresql://{POSTGRES_USER}:{password}@{name}:{POSTGRES_PORT}/{POSTGRES_DB}"

    async def postgres_host_port(self, project: str) -> int | None:
        """The port on 127.0.0.1 the project's PostgreSQL server publishes (its port label); None
        when the project has no such container, or one started before servers published it."""
        def port() -> int | None:
            found = self.client.containers.list(all=True, filters=L.project_filter(project, L.ROLE_POSTGRES))
            text = found[0].labels.get(L.LABEL_PORT) if found else None
            return int(text) if text and text.isdigit() else None
        return await self._call(port)

    async def postgres_ready(self, project: str) -> tuple[bool, str]:
        """Whether the project's PostgreSQL server accepts connections (``pg_isready``), with what it said;
        raises NotFoundError when the project has no such container."""
        def probe() -> tuple[bool, str]:
            try:
                container = self.client.containers.get(postgres_name(project))
            except docker.errors.NotFound as exc:
                raise NotFoundError(f"project {project!r} has no PostgreSQL server") from exc
            if container.status != "running":
                container.reload()
                if container.status != "running":
                    return False, f"{container.name} is {container.status}"
            result = container.exec_run(["sh", "-c", f"$(echo /usr/lib/postgresql/*/bin)/pg_isready -q -h 127.0.0.1 "
                                         f"-p {POSTGRES_PORT}"], user="postgres")
            output = cast(bytes | None, result.output)
            return result.exit_code == 0, (output or b"").decode(errors="replace").strip()
        return await self._call(probe)

    async def run_once(self, project: str, image: str, command: str, env: Mapping[str, str],
                       timeout_s: float, *, toy: bool = True) -> tuple[int, str]:
        """Run ``command`` (through ``sh -c``) once in a new container of ``image`` on the project network,
        with ``env``; wait at most ``timeout_s``, remove the container; (exit code, output). A command
        still running at the limit is killed and its exit code is 124. ``toy``: as the toy app's user;
        your own images keep their USER."""
        def run() -> tuple[int, str]:
            container = self.client.containers.create(
                image, ["sh", "-c", command], entrypoint=[], detach=True, environment=dict(env),
                labels=L.project_labels(project, L.ROLE_MIGRATE), network=network_name(project),
                user=APP_USER if toy else None, tmpfs={"/tmp": "size=16m"}, cap_drop=["ALL"],
                security_opt=["no-new-privileges"], mem_limit="256m", pids_limit=128)
            try:
                container.start()
                try:
                    code = int(container.wait(timeout=timeout_s).get("StatusCode", 1))
                except requests.RequestException:
                    with suppress(docker.errors.APIError):
                        container.kill()
                    code = 124
                logs: bytes = container.logs(stdout=True, stderr=True)
                return code, logs.decode(errors="replace")
            finally:
                with suppress(docker.errors.APIError):
                    container.remove(force=True, v=True)
        return await self._call(run)

    async def start_again(self, lb: LbHandle) -> LbHandle:
        """Start a stopped container of the project (the load balancer after `docker stop`, the session
        store after an engine restart), as it was."""
        def start() -> LbHandle:
            container = self.client.containers.get(lb.id)
            container.start()
            container.reload()
            return handle(container)
        return await self._call(start)

    def _remove_by_name(self, name: str) -> None:
        with suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True, v=True)

    async def exec(self, lb: LbHandle, cmd: list[str]) -> tuple[int, str]:
        """Run ``cmd`` in ``lb``; return (exit code, combined output)."""
        def run() -> tuple[int, str]:
            result = self.client.containers.get(lb.id).exec_run(cmd, stdout=True, stderr=True)
            output = cast(bytes | None, result.output)  # bytes: neither stream nor socket was asked for
            return int(result.exit_code or 0), (output or b"").decode(errors="replace")
        return await self._call(run)

    async def put_file(self, lb: LbHandle, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (its directory must exist) in ``lb``."""
        directory, _, filename = path.rpartition("/")
        def put() -> None:
            if not self.client.containers.get(lb.id).put_archive(directory or "/", tarball.pack({filename: data})):
                raise EngineError(f"could not write {path} in {lb.name}")
        await self._call(put)

    async def read_file(self, lb: LbHandle, path: str) -> bytes:
        """The content of ``path`` in ``lb``; raises EngineError when it is missing."""
        def read() -> bytes:
            container = self.client.containers.get(lb.id)
            try:
                bits, _ = container.get_archive(path)
            except docker.errors.NotFound as exc:
                raise EngineError(f"{path} not found in {lb.name}") from exc
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


def short(exc: BaseException) -> str:
    """The first line of an SDK error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

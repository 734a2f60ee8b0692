"""The engine seam: what the controller asks of whatever runs the containers.

:class:`Engine` is a ``typing.Protocol``; :class:`~sandbox.fleet.runtime.DockerEngine` (plain
containers) and :class:`~sandbox.fleet.swarm.SwarmEngine` (Swarm services) implement it, the
test fakes too. Everything that crosses it is engine-neutral: an app server is an
:class:`Instance`, the load balancer (and the session store) an :class:`LbHandle`; no SDK
object leaves ``sandbox/fleet/``. The README's developer section maps each method to
Kubernetes and Nomad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: this module stays free of the Docker SDK (results/ reads Instance)
    from sandbox.fleet.images import ImageSet
    from sandbox.fleet.versions import AppSpec

APP_PORT = 8000
STATE_DIR = "/var/lib/rolling-sandbox"  # where the load balancer mounts the project's state volume


@dataclass(frozen=True)
class Instance:
    """One app server, as the engine reports it now."""

    id: str
    name: str
    slot: int
    version: str  # the code it runs (after an in-place swap, the swapped-in version)
    state: str  # in Docker's words: created, running, exited, ...
    ip: str | None
    created: str
    probe_ip: str | None = None  # where the controller reaches it, when not at ``ip`` (Swarm: see swarm.py)
    port: int = APP_PORT  # the port the app listens on (--app-port)
    # a relay that reaches ``address`` for the controller (``host:port/probe/``: a Swarm task on
    # another node, probed through the load balancer's admin listener), when no ``probe_ip`` does
    probe_via: str | None = None
    node: str = ""  # the Swarm node that runs it (its hostname); "" on one engine

    @property
    def address(self) -> str | None:
        """``ip:port`` the load balancer uses, or None when it has no address."""
        return f"{self.ip}:{self.port}" if self.ip else None

    @property
    def probe_address(self) -> str | None:
        """Where the controller's probes go: ``probe_ip:port`` when set, else through ``probe_via``
        (``host:port/probe/ip:port``, an HTTP relay), else ``address``."""
        if self.probe_ip:
            return f"{self.probe_ip}:{self.port}"
        if self.probe_via and self.address:
            return f"{self.probe_via}{self.address}"
        return self.address


@dataclass(frozen=True)
class LbHandle:
    """The project's load balancer container as the engine saw it: a snapshot, not a live object."""

    id: str
    name: str
    state: str  # running, exited, ...
    labels: Mapping[str, str] = field(default_factory=dict)
    exit_code: int | None = None  # once it exited
    finished_at: float | None = None  # when it exited (unix time), if it has


class Engine(Protocol):
    """Runs a project's app servers, its load balancer and its session store, found by labels."""

    @property
    def engine(self) -> str:
        """Its name (``--engine``), recorded on the load balancer so later commands pick it again."""
        ...

    # -- images -------------------------------------------------------------------------------
    async def ensure_images(self, *, force: bool = False, say: Callable[[str], None] = ...) -> ImageSet:
        """Build (or fetch) the images that are missing; all of them with ``force``."""
        ...

    async def prune_images(self) -> list[str]:
        """Remove this project's older images no container uses; the tags removed."""
        ...

    async def resolve_versions(self, project: str, images: Mapping[str, str], builds: Mapping[str, str],
                               say: Callable[[str], None] = ...) -> dict[str, str]:
        """Check each ``--image`` exists and build each ``--build`` directory; ``{name: ref}``."""
        ...

    # -- discovery ----------------------------------------------------------------------------
    async def instances(self, project: str) -> list[Instance]:
        """The project's app servers in (slot, created) order, whatever their state."""
        ...

    async def app_states(self, project: str) -> dict[str, str]:
        """Name -> state of the project's app servers, from one cheap listing."""
        ...

    async def refresh(self, project: str, instance: Instance) -> Instance | None:
        """``instance`` with its state and address as they are now, or None when it is gone."""
        ...

    async def has_project(self, project: str) -> bool:
        """Whether anything of the project exists."""
        ...

    async def lb(self, project: str) -> LbHandle | None:
        """The project's load balancer, or None."""
        ...

    async def lb_port(self, project: str) -> int | None:
        """The host port the load balancer is published on, from its label."""
        ...

    async def require_fleet(self, project: str) -> tuple[LbHandle, list[Instance]]:
        """The load balancer and the instances; NotFoundError when the project has no fleet."""
        ...

    # -- app servers --------------------------------------------------------------------------
    async def ensure_network(self, project: str) -> str:
        """Create the project's network if missing; its name."""
        ...

    async def start_app(self, project: str, slot: int, version: str, image: str, env: dict[str, str],
                        from_version: str = "", *, spec: AppSpec | None = None, toy: bool = True) -> Instance:
        """Start one app server in ``slot``; return it (with its address once it runs)."""
        ...

    async def health(self, instance: Instance) -> str | None:
        """The image's own health status (starting, healthy, unhealthy), or None without one."""
        ...

    async def stop_app(self, instance: Instance, grace_s: float) -> int | None:
        """Stop gracefully (SIGTERM, ``grace_s``, SIGKILL) and remove; the exit code."""
        ...

    async def signal_stop(self, instance: Instance) -> None:
        """Send the stop signal and return at once, the server left as it is (``stop_app`` follows)."""
        ...

    async def kill_app(self, instance: Instance) -> None:
        """Kill and remove at once."""
        ...

    async def swap_code(self, project: str, instance: Instance, code_tar: bytes) -> Instance:
        """Put new code under a running server and reload it (in-place mode)."""
        ...

    async def exit_info(self, instance: Instance) -> str:
        """One line on why a server is not running: state, exit code, last log line."""
        ...

    async def start_app_again(self, project: str, instance: Instance) -> Instance:
        """Start a stopped app server again, as it was (an engine restart stopped it); return it as it
        runs now (its address may be new)."""
        ...

    # -- load balancer and session store ------------------------------------------------------
    async def start_lb(self, project: str, port: int, image: str,
                       extra_labels: dict[str, str] | None = None) -> LbHandle:
        """Start the load balancer, published on 127.0.0.1:``port`` only."""
        ...

    async def start_again(self, lb: LbHandle) -> LbHandle:
        """Start a stopped load balancer (or session store, or database) again, as it was."""
        ...

    async def stopped_services(self, project: str) -> list[LbHandle]:
        """The project's session store and database that are not running (an engine restart stops them)."""
        ...

    async def recreate_lb(self, project: str, image: str) -> LbHandle | None:
        """Start the load balancer again after its container was removed: on the port and with the
        labels ``start_lb`` recorded on the project's state volume (mounted at ``STATE_DIR``, and
        again in the new one); None when the project has no state volume."""
        ...

    async def start_redis(self, project: str, image: str, password: str) -> str:
        """Start the session store, answering only clients that AUTH with ``password``; its ``host:port``
        on the project network."""
        ...

    async def ensure_db_image(self, *, say: Callable[[str], None] = ..., force: bool = False) -> str:
        """The PostgreSQL image's ref, built first when missing (again with ``force``)."""
        ...

    async def start_postgres(self, project: str, image: str, password: str) -> str:
        """Start the project's PostgreSQL server on the project network (its port also published on
        127.0.0.1 for the host's hooks), its data on a project volume; its ``DATABASE_URL``."""
        ...

    async def postgres_host_port(self, project: str) -> int | None:
        """The port on 127.0.0.1 the project's PostgreSQL server publishes, or None."""
        ...

    async def postgres_ready(self, project: str) -> tuple[bool, str]:
        """Whether the project's PostgreSQL server accepts connections, and what the probe said."""
        ...

    async def run_once(self, project: str, image: str, command: str, env: Mapping[str, str],
                       timeout_s: float, *, toy: bool = True) -> tuple[int, str]:
        """Run ``command`` once in a new container of ``image`` on the project network; (exit code, output)."""
        ...

    async def admin_ip(self, lb: LbHandle, project: str) -> str | None:
        """Where the controller reaches the load balancer's admin listener, or None."""
        ...

    async def exec(self, lb: LbHandle, cmd: list[str]) -> tuple[int, str]:
        """Run ``cmd`` in the load balancer; (exit code, combined output)."""
        ...

    async def put_file(self, lb: LbHandle, path: str, data: bytes) -> None:
        """Write ``path`` in the load balancer."""
        ...

    async def read_file(self, lb: LbHandle, path: str) -> bytes:
        """Read ``path`` in the load balancer; EngineError when it is missing."""
        ...

    # -- teardown -----------------------------------------------------------------------------
    async def down(self, project: str) -> dict[str, int]:
        """Remove everything of the project and nothing else; counts of what was removed."""
        ...

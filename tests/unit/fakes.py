"""In-memory stand-ins for Docker, NGINX, the app servers' HTTP probes and Locust.

``FakeRuntime`` implements :class:`~sandbox.fleet.engine.Engine` and ``FakeBalancer``
:class:`~sandbox.fleet.loadbalancer.LoadBalancer` (``tests/unit/test_protocols.py`` has a type
checker hold them to it). They record every call in ``log`` (one short string each, in order)
and can be told to fail:

* ``FakeRuntime(boot_fail=True)``-style knobs: a container whose environment
  has ``APP_BOOT_FAIL=1`` exits at once (as the real toy app does);
* ``FakeProbe.unready``: versions whose servers run but never pass /healthz;
* ``runtime.vanish(name)``: a container removed behind the executor's back;
* ``FakeBalancer.reject``: a predicate over (upstreams, changes) that makes
  ``apply`` raise BalancerError, as ``nginx -t`` would;
* ``runtime.before[method]``: a callback run before a call (to interrupt, say).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.errors import BalancerError, EngineError, GoneError, NotFoundError, UsageError, hint
from sandbox.fleet.engine import STATE_DIR, Instance, LbHandle
from sandbox.fleet.images import ImageSet
from sandbox.fleet.loadbalancer import LbRow, LbState, Upstream
from sandbox.fleet.versions import AppSpec
from sandbox.results.records import RequestRow

IMAGES = ImageSet(base="base:test", app={"v1": "app:v1", "v2": "app:v2"}, lb="lb:test")


class FakeRuntime:
    """Docker for one or more projects, as a dict of containers."""

    engine = "fake"

    def __init__(self, project: str = "p", port: int = 18080) -> None:
        self.project = project
        self.port = port
        self.containers: dict[str, Instance] = {}
        self.env: dict[str, dict[str, str]] = {}  # container id -> its environment
        self.lbs: dict[str, LbHandle] = {}
        self.files: dict[tuple[str, str], bytes] = {}  # (LB name, path) -> content (put_file, read_file)
        self.state_volumes: dict[str, dict[str, str]] = {}  # project -> the labels start_lb recorded
        self.lb_image_files: dict[str, bytes] = {}  # path -> content: a new LB container's files (its image's)
        self.log: list[str] = []
        self.run_once_calls: list[tuple[str, str, dict[str, str]]] = []  # (image, command, env) of run_once
        self.before: dict[str, Callable[..., None]] = {}
        self.latency_s = 0.001  # the engine takes a moment: a signal sent during a call lands during it
        self._ips = 0
        self.app_images: dict[str, str] = dict(IMAGES.app)  # version -> the image its servers must run
        self.specs: list[tuple[AppSpec | None, bool]] = []  # (spec, toy) of each start_app
        self.healths: dict[str, str] = {}  # version -> Docker health status (absent: no HEALTHCHECK)
        self.graces: dict[str, float] = {}  # name -> the grace its stop_app was given
        self.services: dict[str, LbHandle] = {}  # name -> the session store or database (start_again, stopped_services)

    # -- set-up helpers for tests -------------------------------------------------------------
    def up(self, size: int, version: str = "v1") -> list[Instance]:
        """A fleet of ``size`` running containers a1..aN and a load balancer, outside the log."""
        self.lbs[self.project] = LbHandle(f"{self.project}-lb", f"{self.project}-lb", "running",
                                          labels={"port": str(self.port)})
        return [self._add(f"a{slot}", slot, version, {}) for slot in range(1, size + 1)]

    def vanish(self, name: str) -> None:
        """The container is removed behind our back (docker rm -f, an OOM kill)."""
        self.containers.pop(name, None)

    def by_slot(self) -> dict[int, list[Instance]]:
        out: dict[int, list[Instance]] = {}
        for inst in sorted(self.containers.values(), key=lambda i: i.name):
            out.setdefault(inst.slot, []).append(inst)
        return out

    def at(self, address: str) -> Instance | None:
        return next((i for i in self.containers.values() if i.address == address), None)

    def _add(self, name: str, slot: int, version: str, env: dict[str, str]) -> Instance:
        self._ips += 1
        state = "exited" if env.get("APP_BOOT_FAIL") == "1" else "running"
        inst = Instance(id=name, name=name, slot=slot, version=version, state=state,
                        ip=f"10.0.0.{self._ips}", created=str(self._ips))
        self.containers[name] = inst
        self.env[name] = dict(env)
        return inst

    def _record(self, method: str, *args: Any, quiet: bool = False) -> None:
        if not quiet:
            self.log.append(" ".join([method, *map(str, args)]).strip())
        hook = self.before.get(method)
        if hook is not None:
            hook(*args)

    # -- the Engine interface -----------------------------------------------------------------
    async def ensure_images(self, *, force: bool = False, say: Callable[[str], None] = print) -> ImageSet:
        return IMAGES

    async def prune_images(self) -> list[str]:
        return []

    async def resolve_versions(self, project: str, images: Mapping[str, str], builds: Mapping[str, str],
                               say: Callable[[str], None] = print) -> dict[str, str]:
        for name, ref in images.items():  # as versions.resolve: a missing image is bad input, never pulled
            if ref not in self.app_images.values():
                raise UsageError(f"image: {name}={ref}: no such local image (build or load it first)")
        if builds:
            raise EngineError(f"the fake engine builds nothing: {', '.join(builds)}")
        return dict(images)

    async def ensure_network(self, project: str) -> str:
        self._record("network", project)
        return f"{project}-net"

    async def start_lb(self, project: str, port: int, image: str,
                       extra_labels: dict[str, str] | None = None) -> LbHandle:
        self._record("start_lb", project, port)
        self.state_volumes[project] = {"port": str(port), **(extra_labels or {})}
        lb = LbHandle(f"{project}-lb", f"{project}-lb", "running", labels=self.state_volumes[project])
        self.lbs[project] = lb
        return lb

    async def recreate_lb(self, project: str, image: str) -> LbHandle | None:
        """As Docker: a new container, whose files are the image's but for the state volume's."""
        self._record("recreate_lb", project)
        if project not in self.state_volumes:
            return None
        name = f"{project}-lb"
        self.files = {k: v for k, v in self.files.items() if k[0] != name or k[1].startswith(f"{STATE_DIR}/")}
        self.files.update({(name, path): data for path, data in self.lb_image_files.items()})
        self.lbs[project] = LbHandle(f"{name}-2", name, "running", labels=self.state_volumes[project])
        return self.lbs[project]

    async def start_redis(self, project: str, image: str, password: str) -> str:
        self._record("start_redis", project)
        return f"{project}-redis:6379"

    async def ensure_db_image(self, *, say: Callable[[str], None] = print, force: bool = False) -> str:
        return "rolling-sandbox/postgres:test"

    async def start_postgres(self, project: str, image: str, password: str) -> str:
        self._record("start_postgres", project)
        return f"postgresql://app:{password}@{project}-postgres:5432/postgres"

    async def postgres_ready(self, project: str) -> tuple[bool, str]:
        return True, ""

    postgres_port: int | None = None  # the port start_postgres published on 127.0.0.1

    async def postgres_host_port(self, project: str) -> int | None:
        return self.postgres_port

    migrate_result: tuple[int, str] = (0, "")

    async def run_once(self, project: str, image: str, command: str, env: Mapping[str, str],
                       timeout_s: float, *, toy: bool = True) -> tuple[int, str]:
        self._record("run_once", project, command)
        self.run_once_calls.append((image, command, dict(env)))
        return self.migrate_result

    async def admin_ip(self, lb: LbHandle, project: str) -> str | None:
        return "10.0.0.254"

    async def exec(self, lb: LbHandle, cmd: list[str]) -> tuple[int, str]:
        self._record("exec", lb.name, *cmd)
        return 0, ""

    async def put_file(self, lb: LbHandle, path: str, data: bytes) -> None:
        self.files[(lb.name, path)] = data

    async def read_file(self, lb: LbHandle, path: str) -> bytes:
        if (lb.name, path) not in self.files:
            raise EngineError(f"{path} not found in {lb.name}")
        return self.files[(lb.name, path)]

    async def lb(self, project: str) -> LbHandle | None:
        return self.lbs.get(project)

    async def start_again(self, lb: LbHandle) -> LbHandle:
        self.log.append(f"start_again {lb.name}")
        if lb.name in self.services:
            self.services[lb.name] = replace(lb, state="running")
            return self.services[lb.name]
        project = next(p for p, found in self.lbs.items() if found.id == lb.id)
        self.lbs[project] = replace(lb, state="running")
        return self.lbs[project]

    async def stopped_services(self, project: str) -> list[LbHandle]:
        return sorted((h for h in self.services.values() if h.state != "running"), key=lambda h: h.name)

    async def start_app_again(self, project: str, instance: Instance) -> Instance:
        self._record("start_again", instance.name)
        await asyncio.sleep(self.latency_s)
        if instance.id not in self.containers:
            raise GoneError(f"docker: no such container {instance.name}")
        self._ips += 1  # a container started again may get another address
        started = replace(self.containers[instance.id], state="running", ip=f"10.0.0.{self._ips}")
        self.containers[instance.id] = started
        return started

    async def lb_port(self, project: str) -> int | None:
        lb = self.lbs.get(project)
        return int(lb.labels["port"]) if lb else None

    async def require_fleet(self, project: str) -> tuple[LbHandle, list[Instance]]:
        lb = self.lbs.get(project)
        if lb is None and project in self.state_volumes:
            raise NotFoundError(f"project {project!r}: its load balancer container is gone; "
                                f"{hint('roll', project)} or {hint('rollback', project)} creates it again")
        if lb is None:
            raise NotFoundError(f"project {project!r} has no fleet; start one with {hint('up', project)}")
        return lb, await self.instances(project)

    async def has_project(self, project: str) -> bool:
        return project in self.lbs or project in self.state_volumes

    async def instances(self, project: str) -> list[Instance]:
        return sorted(self.containers.values(), key=lambda i: (i.slot, i.created))

    async def app_states(self, project: str) -> dict[str, str]:
        return {i.name: i.state for i in self.containers.values()}

    async def start_app(self, project: str, slot: int, version: str, image: str, env: dict[str, str],
                        from_version: str = "", *, spec: AppSpec | None = None, toy: bool = True) -> Instance:
        self.specs.append((spec, toy))
        self._record("start", slot, version)
        await asyncio.sleep(self.latency_s)
        if image != self.app_images.get(version):
            raise EngineError(f"wrong image {image} for {version}")
        name = f"n{slot}"
        while name in self.containers or any(line.endswith(f" {name}") for line in self.log):
            name += "'"
        return self._add(name, slot, version, env)

    async def refresh(self, project: str, instance: Instance) -> Instance | None:
        self._record("refresh", instance, quiet=True)
        return self.containers.get(instance.id)

    async def signal_stop(self, instance: Instance) -> None:
        self._record("term", instance.name)
        await asyncio.sleep(self.latency_s)

    async def stop_app(self, instance: Instance, grace_s: float) -> int | None:
        self._record("stop", instance.name)
        self.graces[instance.name] = grace_s
        await asyncio.sleep(self.latency_s)
        return 0 if self.containers.pop(instance.id, None) else None

    async def kill_app(self, instance: Instance) -> None:
        self._record("kill", instance.name)
        await asyncio.sleep(self.latency_s)
        self.containers.pop(instance.id, None)

    async def swap_code(self, project: str, instance: Instance, code_tar: bytes) -> Instance:
        self._record("swap", instance.name)
        await asyncio.sleep(self.latency_s)
        current = self.containers.get(instance.id)
        if current is None:
            raise EngineError(f"{instance.name}: container is gone")
        version = "v2" if b"v2" in code_tar else "v1"
        swapped = replace(current, version=version, state="running")
        self.containers[instance.id] = swapped
        return swapped

    async def health(self, instance: Instance) -> str | None:
        self.log.append(f"health {instance.name}")
        return self.healths.get(instance.version)

    async def exit_info(self, instance: Instance) -> str:
        inst = self.containers.get(instance.id)
        return "container is gone" if inst is None else f"state {inst.state}, exit code 1"

    async def down(self, project: str) -> dict[str, int]:
        self._record("down", project)
        removed = len(self.containers) + (1 if self.lbs.pop(project, None) else 0)
        self.state_volumes.pop(project, None)
        self.containers.clear()
        return {"containers": removed, "volumes": 0, "networks": 1}


class FakeProbe:
    """/healthz and /metrics of the fake fleet: a running container is ready on its version
    unless that version is in ``unready``; nothing is ever in flight."""

    def __init__(self, runtime: FakeRuntime, unready: frozenset[str] = frozenset()) -> None:
        self.runtime = runtime
        self.unready = unready
        self.requests = 0
        self.paths: list[str] = []  # each readiness check: the HTTP path asked, or "tcp"

    async def ready(self, address: str, version: str | None = None, path: str = "/healthz") -> bool:
        self.paths.append(path)
        inst = self.runtime.at(address)
        return (inst is not None and inst.state == "running" and inst.version not in self.unready
                and (version is None or inst.version == version))

    async def accepts(self, address: str) -> bool:
        self.paths.append("tcp")
        inst = self.runtime.at(address)
        return inst is not None and inst.state == "running" and inst.version not in self.unready

    async def metrics(self, address: str) -> dict[str, float] | None:
        inst = self.runtime.at(address)
        if inst is None or inst.state != "running":
            return None
        return {"app_requests_in_flight": 0.0, "app_requests_total": float(self.requests)}

    def last_failure(self, address: str) -> str | None:
        inst = self.runtime.at(address)
        return None if inst is not None and inst.version not in self.unready else f"{address}: not ready"

    def factory(self) -> Callable[[], contextlib.AbstractAsyncContextManager[FakeProbe]]:
        """What the executor's ``probe=`` takes."""
        @contextlib.asynccontextmanager
        async def open_probe() -> AsyncIterator[FakeProbe]:
            yield self
        return open_probe


class FakeBalancer:
    """NGINX as its state: ``apply`` records the new attached set and the changes it was given."""

    def __init__(self, runtime: FakeRuntime, project: str = "p", port: int = 18080, *,
                 state: LbState | None = None) -> None:
        self.runtime = runtime
        self.project = project
        self.port = port
        self.state = state or LbState()
        self.applied: list[LbState] = []
        self.lost = False
        self.nginx_rows: list[LbRow] = []
        self.reject: Callable[[list[Upstream], dict[str, Any]], str | None] = lambda upstreams, changes: None
        self.counts: dict[str, int] = {}  # address -> requests in flight, as the dynamic LB reports them
        self.long_lived_counts: dict[str, int] = {}  # address -> open long-lived connections (dynamic LB)

    @property
    def dynamic(self) -> bool:
        return self.state.lb_apply == "dynamic"

    async def in_flight(self) -> dict[str, int]:
        return dict(self.counts)

    async def long_lived(self) -> dict[str, int]:
        return dict(self.long_lived_counts)

    def forget_container(self) -> None:
        self.runtime.log.append("lb forget")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def attach_all(self) -> None:
        """Attach every running container (as ``up`` leaves the fleet), outside the log."""
        self.state.upstreams = [Upstream(i.name, i.address or "", i.version)
                                for i in self.runtime.containers.values() if i.state == "running"]
        self.state.size = len(self.state.upstreams)

    async def load(self) -> LbState:
        return self.state

    async def apply(self, upstreams: list[Upstream], **changes: Any) -> LbState:
        before = {u.name for u in self.state.upstreams}
        after = {u.name for u in upstreams}
        line = "lb" + "".join(f" +{n}" for n in sorted(after - before)) + "".join(
            f" -{n}" for n in sorted(before - after))
        if "rollout" in changes:
            line += f" rollout={changes['rollout'] and changes['rollout'].get('status')}"
        self.runtime.log.append(line)
        reason = self.reject(upstreams, changes)
        if reason:
            raise BalancerError(f"nginx -t rejected the new config: {reason}")
        self.state = replace(self.state, generation=self.state.generation + 1,
                             upstreams=sorted(upstreams, key=lambda u: u.name), **changes)
        self.applied.append(self.state)
        return self.state

    async def repair_lost_set(self, instances: list[Instance], size: int) -> list[Upstream]:
        upstreams = [Upstream(i.name, i.address or "", i.version) for i in instances if i.state == "running"]
        await self.apply(upstreams, size=size)
        self.lost = False
        return upstreams

    async def access_log(self) -> list[LbRow]:
        return list(self.nginx_rows)


class FakeLoad:
    """Locust as a list of rows: ``feed()`` is asked for the rows written since the last call."""

    def __init__(self, url: str, settings: Any, rows_path: Path,
                 feed: Callable[[], list[RequestRow]] | None = None) -> None:
        self.url = url
        self.settings = settings
        self.rows_path = rows_path
        self.feed = feed or (lambda: [])
        self.rows: list[RequestRow] = []
        self.started = self.stopped = 0
        self.dies = False  # set it and the next liveness check finds Locust gone
        self.stopping = False
        self.stop_s = 0.0  # how long stop() takes; meanwhile Locust's processes are exiting (not alive)
        self.end: Any = None  # how it ended (a LoadEnd), as LoadRun.end says after stop()

    def alive(self) -> bool:
        return not self.dies and not self.stopping

    async def start(self) -> None:
        self.started += 1

    async def stop(self, grace_s: float = 10) -> None:
        self.stopped += 1
        self.stopping = True
        await asyncio.sleep(self.stop_s)

    def new_rows(self) -> list[RequestRow]:
        new = self.feed()
        self.rows.extend(new)
        return new

    def all_rows(self) -> list[RequestRow]:
        return list(self.rows)


def row(t: float, status: int = 200, version: str = "v1", user: str = "u1", rid: str = "") -> RequestRow:
    """One request row as the load generator writes it."""
    failed = status == 0 or status >= 500
    return {"t": t, "t_end": t + 0.01, "user": user, "rid": rid or f"r{t}", "method": "GET", "name": "/",
            "status": status, "version": version if status else None, "instance": None, "session": None,
            "latency_ms": 10.0, "error": "boom" if failed else None}

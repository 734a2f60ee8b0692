"""The Docker engine: every app server is a plain container.

:class:`DockerEngine` implements :class:`~sandbox.fleet.engine.Engine` with what it shares with
Swarm (:class:`~sandbox.fleet.docker_base.DockerBase`: client, images, network, load balancer,
teardown) and its own app containers: a code volume each (what an in-place swap replaces), no
published port, no capabilities.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, ClassVar

import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from sandbox.errors import EngineError
from sandbox.fleet import labels as L
from sandbox.fleet import tarball
from sandbox.fleet.docker_base import APP_USER, DockerBase, app_name, network_name
from sandbox.fleet.engine import APP_PORT, Instance
from sandbox.fleet.versions import TOY_VERSIONS, AppSpec

APP_CODE_DIR = "/srv/app"


class DockerEngine(DockerBase):
    """The app servers as plain Docker containers."""

    engine = "docker"
    network_driver: ClassVar[dict[str, Any]] = {"driver": "bridge"}

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

    def _describe(self, c: Container, project: str, version: str | None = None) -> Instance:
        """The container as an Instance; ``version`` when the caller knows it (no read inside the container)."""
        net = c.attrs.get("NetworkSettings", {}).get("Networks", {}).get(network_name(project), {})
        ip = net.get("IPAddress") or None
        if version is None:
            version = self._code_version(c)
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

    def _code_version(self, c: Container) -> str:
        """The version a container runs: its label, or for the toy app the VERSION file in its code volume.

        Reading the file is an archive export, the dearest inspection the engine does (bench/BOOT_COST.md):
        only for containers whose version nobody here knows yet.
        """
        version: str = c.labels.get(L.LABEL_VERSION, "?")
        if version in TOY_VERSIONS and c.status in ("running", "exited", "created", "paused"):
            # in-place rollouts swap the code under a container (which may then have failed to
            # boot and exited): the VERSION file in its code volume is the truth, not the label
            # (only the toy app has one: a version named by the user is the label)
            try:
                bits, _ = c.get_archive(f"{APP_CODE_DIR}/VERSION")
                version = tarball.first_file(bits).decode().strip() or version
            except docker.errors.DockerException:
                pass
        return version

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
        return self._describe(container, project, version)  # a fresh code volume holds the image's version

    async def health(self, instance: Instance) -> str | None:
        """Docker's health status of the container (``starting``, ``healthy``, ``unhealthy``), or None
        when its image has no HEALTHCHECK."""
        def get() -> str | None:
            c = self.client.containers.get(instance.id)
            health = (c.attrs.get("State") or {}).get("Health")
            return str(health.get("Status")) if health else None
        return await self._call(get)

    async def refresh(self, project: str, instance: Instance) -> Instance | None:
        """The instance as Docker sees it now (state, address; its version as given), or None when it is gone."""
        def get() -> Instance | None:
            try:
                return self._describe(self.client.containers.get(instance.id), project, instance.version)
            except docker.errors.NotFound:
                return None
        return await self._call(get)

    async def start_app_again(self, project: str, instance: Instance) -> Instance:
        """Start a stopped app container again, as it was; it as it runs now (a new address, maybe).
        Raises GoneError when it was removed."""
        def start() -> Instance:
            container = self.client.containers.get(instance.id)
            container.start()
            container.reload()
            return self._describe(container, project, instance.version)
        return await self._call(start)

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

    async def signal_stop(self, instance: Instance) -> None:
        """Send the stop signal and return at once (``--detach-lag``); ``stop_app`` waits for it."""
        await self._call(self._send_stop_signal, instance.id)

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

    # -- what `sandbox doctor` reads and does to one server ---------------------------------------
    async def signal_app(self, instance: Instance) -> str | None:
        """``signal_stop`` that says which signal it sent (SIGTERM unless the image or ``--stop-signal``
        says otherwise), or None when the container no longer runs."""
        return await self._call(self._send_stop_signal, instance.id)

    async def wait_exit(self, instance: Instance, timeout_s: float) -> int | None:
        """The exit code once the container has exited, or None when it still runs after ``timeout_s``."""
        def wait() -> int | None:
            try:
                return int(self.client.containers.get(instance.id).wait(timeout=timeout_s).get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):  # timed out: still running
                return None
        return await self._call(wait)

    async def pid1_command(self, instance: Instance) -> str:
        """PID 1's command line in the container, as ``docker top`` shows it (else its entrypoint
        and arguments, as the engine recorded them)."""
        def read() -> str:
            c = self.client.containers.get(instance.id)
            top = c.top(ps_args="-o pid,args")
            rows = sorted((int(p[0]), p[1]) for p in top.get("Processes") or [] if p and str(p[0]).isdigit())
            if rows:
                return str(rows[0][1])
            return " ".join([str(c.attrs.get("Path", "")), *map(str, c.attrs.get("Args") or [])]).strip()
        return await self._call(read)

    async def memory_bytes(self, instance: Instance) -> int | None:
        """The container's memory in use now (page cache left out), from the engine's stats."""
        def read() -> int | None:
            stats = self.client.containers.get(instance.id).stats(stream=False)
            mem = (stats.get("memory_stats") if isinstance(stats, dict) else None) or {}
            if "usage" not in mem:
                return None
            cache = (mem.get("stats") or {}).get("inactive_file", 0)
            return int(mem["usage"]) - int(cache)
        return await self._call(read)

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

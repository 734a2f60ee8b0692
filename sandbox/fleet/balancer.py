"""All NGINX handling: render ``lb/nginx.conf.j2``, check it, swap it in, reload.

Applying a set of servers is: render the template (jinja2) with exactly the
attached servers, copy it into the load balancer container's staging
directory, ``nginx -t`` it there (a config NGINX rejects is never loaded), move
it over the live one with an atomic rename, ``nginx -s reload`` (graceful: old
workers finish what they hold), then wait until the new generation answers on
``/__sandbox/generation``.

The rendered file carries its own state as one JSON comment line (attached
servers, the rollout in progress), so a fresh process knows what the load
balancer serves by reading the file back: no state file on the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import aiohttp
import jinja2

from sandbox.errors import BalancerError
from sandbox.fleet import sources
from sandbox.fleet.runtime import Runtime

log = logging.getLogger("sandbox.fleet.balancer")

TEMPLATE_DIR = sources.folder("lb")
TEMPLATE_NAME = "nginx.conf.j2"
LIVE_CONF = "/etc/nginx/nginx.conf"
STAGING_CONF = "/etc/nginx/staging/nginx.conf"
ACCESS_LOG = "/var/log/nginx/access.json"
STATE_MARK = "# rolling-sandbox-state: "


@dataclass(frozen=True)
class Upstream:
    """One attached server."""

    name: str
    address: str  # ip:port
    version: str


@dataclass
class LbState:
    """What the live config says: the attached servers and the rollout in progress, if any."""

    generation: int = 0
    size: int = 0  # the fleet's declared size (number of slots)
    upstreams: list[Upstream] = field(default_factory=list)
    rollout: dict[str, Any] | None = None  # {"from": "v1", "to": "v2", "strategy": ...}
    sticky: bool = False
    client_keepalive_s: int = 0
    retry: bool = False  # proxy_next_upstream on (NGINX's default) or off
    app_env: dict[str, str] = field(default_factory=dict)  # `up --env`: every server of this fleet gets it

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LbState:
        data = json.loads(text)
        data["upstreams"] = [Upstream(**u) for u in data.get("upstreams", [])]
        return cls(**data)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render(project: str, state: LbState, *, worker_processes: str = "auto", connect_timeout_s: int = 1) -> str:
    """The NGINX config for ``state`` (pure: no I/O besides reading the template)."""
    return _env.get_template(TEMPLATE_NAME).render(
        project=project,
        generation=state.generation,
        state_json=state.to_json(),
        servers=state.upstreams,
        sticky=state.sticky,
        retry=state.retry,
        client_keepalive_s=state.client_keepalive_s,
        worker_processes=worker_processes,
        connect_timeout_s=connect_timeout_s,
    )


def parse_state(config_text: str) -> LbState:
    """The state embedded in a rendered config; an empty state for a config we did not render."""
    for line in config_text.splitlines():
        if line.startswith(STATE_MARK):
            try:
                return LbState.from_json(line[len(STATE_MARK):])
            except (ValueError, TypeError) as exc:
                raise BalancerError(f"the load balancer's config has an unreadable state line: {exc}") from exc
    return LbState()


class Balancer:
    """The project's NGINX container, driven through the runtime."""

    def __init__(self, runtime: Runtime, project: str, port: int) -> None:
        self.runtime = runtime
        self.project = project
        self.port = port
        self._lock = asyncio.Lock()
        self.state = LbState()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _container(self) -> Any:
        lb = await self.runtime.lb(self.project)
        if lb is None:
            raise BalancerError(f"project {self.project!r} has no load balancer container")
        return lb

    async def load(self) -> LbState:
        """Read the live config's state back from the container."""
        lb = await self._container()
        text = (await self.runtime.read_file(lb, LIVE_CONF)).decode(errors="replace")
        self.state = parse_state(text)
        return self.state

    async def apply(self, upstreams: list[Upstream], **changes: Any) -> LbState:
        """Make ``upstreams`` exactly the attached set; ``changes`` set other LbState fields
        (``rollout``, ``sticky``, ``size``, ...), every field not named keeps its value.

        Raises BalancerError, leaving the live config untouched, when NGINX rejects the config.
        The operation is shielded from cancellation: a Ctrl-C never leaves it half done.
        """
        return await asyncio.shield(self._apply(upstreams, changes))

    async def _apply(self, upstreams: list[Upstream], changes: dict[str, Any]) -> LbState:
        async with self._lock:
            lb = await self._container()
            new = replace(self.state, generation=self.state.generation + 1,
                          upstreams=sorted(upstreams, key=lambda u: u.name), **changes)
            text = render(self.project, new)
            await self.runtime.put_file(lb, STAGING_CONF, text.encode())
            # one exec: check, then an atomic rename over the live file, then a graceful reload;
            # the exit code says which part failed (a rejected config is never installed)
            script = (f"nginx -t -c {STAGING_CONF} 2>&1 || exit 10; "
                      f"mv -f {STAGING_CONF} {LIVE_CONF} || exit 11; nginx -s reload 2>&1 || exit 12")
            code, out = await self.runtime.exec(lb, ["sh", "-c", script])
            if code == 10:
                raise BalancerError(f"nginx -t rejected the new config: {_last_line(out)}")
            if code == 11:
                raise BalancerError(f"could not install the new config: {_last_line(out)}")
            if code != 0:
                raise BalancerError(f"nginx reload failed: {_last_line(out)}")
            self.state = new
            await self._wait_generation(new.generation)
            log.debug("balancer generation %d: %s", new.generation, [u.name for u in new.upstreams])
            return new

    async def _wait_generation(self, generation: int, timeout_s: float = 10.0) -> None:
        """Wait until new requests are answered by workers of ``generation``."""
        deadline = time.monotonic() + timeout_s
        url = f"{self.url}/__sandbox/generation"
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(url) as resp:
                        last = (await resp.text()).strip()
                        if resp.status == 200 and last == str(generation):
                            return
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.05)
        raise BalancerError(
            f"the load balancer did not pick up config generation {generation} within {timeout_s:.0f} s "
            f"(last answer: {last})"
        )

    async def access_log(self) -> list[dict[str, Any]]:
        """The JSON access log rows written so far (unparseable lines are skipped)."""
        lb = await self._container()
        raw = (await self.runtime.read_file(lb, ACCESS_LOG)).decode(errors="replace")
        rows = []
        for line in raw.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def _last_line(text: str) -> str:
    """The most telling line of NGINX's output: its [emerg] line if any, else the last."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in lines:
        if "[emerg]" in line:
            return line.split("[emerg]", 1)[1].strip()
    return lines[-1] if lines else "(no output)"


def compose_config(size: int = 3) -> str:
    """The config compose/docker-compose.yml mounts: ``size`` servers by their compose names.

    ``compose/nginx.conf`` is this function's output (a unit test keeps them equal);
    regenerate it with ``python -c 'from sandbox.fleet.balancer import compose_config; print(compose_config(), end="")'
    > compose/nginx.conf``.
    """
    upstreams = [Upstream(name=f"app{i}", address=f"app{i}:8000", version="v1") for i in range(1, size + 1)]
    return render("compose", LbState(generation=1, size=size, upstreams=upstreams))

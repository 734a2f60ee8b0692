"""All NGINX handling: render ``lb/nginx.conf.j2``, check it, swap it in, reload, or change the
attached set without a reload (``--lb-apply dynamic``, the default).

**reload** (the classic way). Applying a set of servers is: render the template (jinja2) with exactly the
attached servers, copy it into the load balancer container's staging
directory, ``nginx -t`` it there (a config NGINX rejects is never loaded), move
it over the live one with an atomic rename, ``nginx -s reload`` (graceful: old
workers finish what they hold), then wait until the new generation answers on
``/__sandbox/generation``.

The rendered file carries its own state as one JSON comment line (attached
servers, the rollout in progress), so a fresh process knows what the load
balancer serves by reading the file back: no state file on the host.

**dynamic**. The rendered config (``lb/dynamic.conf.j2`` included) holds a Lua balancer that
picks a server per request from a shared dictionary, and an admin listener on port
``ADMIN_PORT`` of the container, published nowhere: the controller reaches it on the
container's address in the project network with the token of the container's label, and it
accepts that one source address only (:mod:`sandbox.fleet.access`). The
config (its state line: the settings that shape it) is installed and reloaded as above only
when its text changes (at ``up``); a change of the attached set or of the rollout record is one
``PUT /servers`` (see :func:`admin_body`), with no reload, so no idle client connection is
closed. ``GET /servers`` gives the state back to a fresh process, ``GET /inflight`` the requests
the LB has in flight per server (:meth:`NginxBalancer.in_flight`), an app-independent drain signal.
Every ``PUT`` names the generation the controller last saw (compare-and-set): the LB answers 409
to any other, so a stale writer never overwrites a newer state silently.
A canary's weight is its own admin field, ``PUT /canary`` (:func:`canary_body`: the weight in
hundredths of a percent, sticky or not, the canary version's addresses), sent before the set
whenever ``LbState.canary`` is or was set; the Lua balancer splits the attached list by it
(``canary_split``) before it picks a server.

**The record**. What the fleet needs besides its attached set (size, app environment, settings,
the last rollout record) is also written, whenever it changes, to ``RECORD_FILE`` on the
project's state volume (mounted in the LB, kept when its container is restarted or removed): a
restarted LB (empty shared memory) or a recreated one (the image's placeholder config) is given
that state again, and the attached set from Docker's labels (:meth:`NginxBalancer.repair_lost_set`).

:class:`NginxBalancer` implements :class:`~sandbox.fleet.loadbalancer.LoadBalancer` in both modes
(the mode is part of its state: ``apply(lb_apply=...)``); it reaches its container through the
:class:`~sandbox.fleet.engine.Engine` (exec, files, admin address), so it runs on any engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jinja2

from sandbox.errors import BalancerConflict, BalancerError, EngineError, hint
from sandbox.fleet import access, nginx_log, sources
from sandbox.fleet import labels as L
from sandbox.fleet.engine import STATE_DIR, Engine, Instance, LbHandle
from sandbox.fleet.loadbalancer import LbRow, LbState, Upstream
from sandbox.fleet.versions import TOY_VERSIONS

log = logging.getLogger("sandbox.fleet.balancer")

TEMPLATE_DIR = sources.folder("lb")
TEMPLATE_NAME = "nginx.conf.j2"
LIVE_CONF = "/etc/nginx/nginx.conf"
STAGING_CONF = "/etc/nginx/staging/nginx.conf"
ACCESS_LOG = "/var/log/nginx/access.json"
STATE_MARK = "# rolling-sandbox-state: "
STATE_MORE = "# rolling-sandbox-state+ "  # continuation lines: NGINX reads a config line in 4 KiB
STATE_CHUNK = 2048  # characters of state JSON per line (well under NGINX's 4 KiB buffer)
CONFIG_ID_MARK = "# rolling-sandbox-config-id: "
RECORD_FILE = f"{STATE_DIR}/fleet.json"  # the controller's record of the fleet (see the module's docstring)
ADMIN_PORT = 8081
NGINX_PID = "/run/nginx.pid"  # lb/nginx.conf.j2's pid directive
EXPECT_HEADER = "X-Sandbox-Expect-Generation"  # PUT /servers: the generation the writer last saw
ADMIN_TIMEOUT_S = 5.0
APPLY_MODES = ("reload", "dynamic")


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


TEMPLATE_ENV = "SANDBOX_LB_TEMPLATE"
"""Test-only: a template file to render instead of lb/nginx.conf.j2 (its includes still resolve in lb/)."""


def _template() -> jinja2.Template:
    override = os.environ.get(TEMPLATE_ENV)
    if override:
        return _env.from_string(Path(override).read_text())
    return _env.get_template(TEMPLATE_NAME)


CONFIG_FIELDS = ("lb_apply", "sticky", "retry", "client_keepalive_s", "read_timeout_s", "upstream_keepalive_s")


DEFAULT_READ_TIMEOUT_S = 30  # NGINX's proxy_read_timeout when the client waits less


def lb_read_timeout_s(client_timeout_s: float) -> int:
    """NGINX's ``proxy_read_timeout`` for a load whose client waits ``client_timeout_s``: 30 s, or a
    whole second longer than the client when it waits longer, so NGINX never cuts an answer the client
    still waits for (the client gives up first)."""
    return max(DEFAULT_READ_TIMEOUT_S, math.ceil(client_timeout_s) + 1)


def record_of(state: LbState) -> LbState:
    """What the record keeps of ``state``: everything but the attached set (Docker's labels say
    which servers run) and its generation (the live LB's own count)."""
    return replace(state, upstreams=[], generation=0)


def config_state(state: LbState) -> LbState:
    """The part of ``state`` a dynamic config is rendered from: the settings that shape NGINX's
    config (CONFIG_FIELDS), nothing that changes during a rollout (so a rollout never reloads)."""
    return LbState(**{name: getattr(state, name) for name in CONFIG_FIELDS})


def render(project: str, state: LbState, *, admin_token: str = "", admin_from: str = "",
           worker_processes: str = "auto", connect_timeout_s: int = 1) -> str:
    """The NGINX config for ``state`` (pure: no I/O besides reading the template).

    Dynamic mode renders :func:`config_state` only, with the admin listener's token, the one
    address it accepts (``admin_from``, the controller's; none without it) and an id of the
    text itself that ``GET /config`` answers (how the controller sees a reload land).
    """
    dynamic = state.lb_apply == "dynamic"
    if dynamic and not admin_token:
        raise BalancerError("dynamic mode needs the admin token of the load balancer container")
    if admin_from:
        try:
            ipaddress.ip_address(admin_from)
        except ValueError as exc:
            raise BalancerError(f"the admin listener's allowed address {admin_from!r} is no IP address") from exc
    shown = config_state(state) if dynamic else state

    def text(config_id: str) -> str:
        return _template().render(
            project=project,
            generation=shown.generation,
            state_block=state_lines(shown.to_json()),
            servers=shown.upstreams,
            routes=version_routes(shown.upstreams),
            sticky=shown.sticky,
            retry=shown.retry,
            client_keepalive_s=shown.client_keepalive_s,
            read_timeout_s=shown.read_timeout_s,
            upstream_keepalive_s=shown.upstream_keepalive_s,
            worker_processes=worker_processes,
            connect_timeout_s=connect_timeout_s,
            dynamic=dynamic,
            admin_port=ADMIN_PORT,
            admin_token=admin_token,
            admin_from=admin_from,
            config_id=config_id,
        )
    return text(hashlib.sha256(text("").encode()).hexdigest()[:16]) if dynamic else text("")


def version_routes(upstreams: Sequence[Upstream]) -> list[dict[str, Any]]:
    """Reload mode's upstream per version, for header routing: ``{"version", "key", "upstream",
    "servers"}`` in the order the versions first appear (``key``: the version as a ``map`` key). With
    two versions or more each has an upstream of its own, named by its rank (``app_version_1``),
    never by the version's own spelling; with one, it is ``app``, every attached server. A server
    whose version is not known ("", as swarm-native's tasks) is in ``app`` only: no request names it."""
    by_version: dict[str, list[Upstream]] = {}
    for upstream in upstreams:
        if upstream.version:
            by_version.setdefault(upstream.version, []).append(upstream)
    return [{"version": version, "key": _map_key(version), "servers": servers,
             "upstream": f"app_version_{rank}" if len(by_version) > 1 else "app"}
            for rank, (version, servers) in enumerate(by_version.items(), 1)]


_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})  # a map's own parameters


def _map_key(version: str) -> str:
    """``version`` as a key of an NGINX ``map``: a name the map reads as one of its own parameters
    is written with a backslash first (versions are letters, digits, dots, dashes, underscores)."""
    return f"\\{version}" if version in _MAP_WORDS else version


def config_id(config_text: str) -> str | None:
    """The id a dynamic config answers on ``GET /config`` (None for a reload-mode config)."""
    for line in config_text.splitlines():
        if line.startswith(CONFIG_ID_MARK):
            return line[len(CONFIG_ID_MARK):].strip()
    return None


def admin_body(state: LbState) -> str:
    """The ``PUT /servers`` body for ``state``: the generation, the state as one JSON line (what
    ``GET /servers`` gives back), then one attached server per line, ``ip:port version`` (the
    version is what header routing matches)."""
    return "\n".join([str(state.generation), state.to_json(),
                      *(f"{u.address} {u.version}" for u in state.upstreams)]) + "\n"


def canary_body(new: LbState, old: LbState) -> str:
    """The ``PUT /canary`` body for ``new``: its weight in hundredths of a percent and stickiness, then
    the addresses of its canary version's servers in ``new`` and ``old`` (sent before the attached
    set changes, so a server being attached already counts as the canary's); empty: no canary."""
    canary = new.canary
    if canary is None:
        return ""
    version = str(canary["version"])
    weight = round(float(canary["weight"]) * 100)
    addresses = sorted({u.address for state in (new, old) for u in state.upstreams if u.version == version})
    return "\n".join([f"{max(0, min(10000, weight))} {1 if canary.get('sticky') else 0}", *addresses]) + "\n"


def parse_admin_body(text: str) -> LbState | None:
    """The state a ``GET /servers`` answer holds; None when nothing was ever PUT.

    Raises BalancerError when it is unreadable or its address lines disagree with its state.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        state = LbState.from_json(lines[1])
        generation = int(lines[0])
    except (IndexError, ValueError, TypeError) as exc:
        raise BalancerError(f"the load balancer's admin listener has an unreadable state: {exc}") from exc
    attached = sorted(line.split()[0] for line in lines[2:])  # "ip:port version", or "ip:port" from before
    if attached != sorted(u.address for u in state.upstreams) or generation != state.generation:
        raise BalancerError("the load balancer's attached set disagrees with its state line")
    return state


def parse_in_flight(text: str) -> dict[str, int]:
    """``GET /inflight`` (``ip:port count`` per line) as ``{address: count}``; bad lines skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        address, _, count = line.strip().partition(" ")
        try:
            out[address] = max(0, int(count))
        except ValueError:
            continue
    return out


def state_lines(state_json: str) -> str:
    """The state as comment lines: one STATE_MARK line, then STATE_MORE lines, each holding at
    most STATE_CHUNK characters (a single line over 4 KiB, about 48 servers, breaks NGINX)."""
    chunks = [state_json[i:i + STATE_CHUNK] for i in range(0, len(state_json), STATE_CHUNK)] or [""]
    return "\n".join([STATE_MARK + chunks[0], *(STATE_MORE + c for c in chunks[1:])])


def parse_state(config_text: str) -> LbState:
    """The state embedded in a rendered config; an empty state for a config we did not render."""
    lines = config_text.splitlines()
    for n, line in enumerate(lines):
        if line.startswith(STATE_MARK):
            text = line[len(STATE_MARK):]
            for more in itertools.takewhile(lambda ln: ln.startswith(STATE_MORE), lines[n + 1:]):
                text += more[len(STATE_MORE):]
            try:
                return LbState.from_json(text)
            except (ValueError, TypeError) as exc:
                raise BalancerError(f"the load balancer's config has an unreadable state line: {exc}") from exc
    return LbState()


class NginxBalancer:
    """The project's NGINX container, driven through the engine."""

    def __init__(self, runtime: Engine, project: str, port: int) -> None:
        self.runtime = runtime
        self.project = project
        self.port = port
        self._lock = asyncio.Lock()
        self.state = LbState()
        self._installed: str | None = None  # the live config's text, once read or installed
        self._admin: tuple[str, str] | None = None  # (admin url, token), once resolved
        # the LB holds no set: dynamic mode, NGINX restarted (its shared memory is empty, so it
        # serves nothing); or its container was recreated; the caller re-pushes it (repair_lost_set)
        self.lost = False
        self._seen = 0  # the generation the admin listener held when last read or written
        self._recorded: LbState | None = None  # the record as last read or written

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dynamic(self) -> bool:
        return self.state.lb_apply == "dynamic"

    async def _container(self) -> LbHandle:
        lb = await self.runtime.lb(self.project)
        if lb is None:
            raise BalancerError(f"project {self.project!r} has no load balancer container")
        return lb

    async def load(self) -> LbState:
        """Read the live state back from the container: the config's state line, and in dynamic
        mode the attached set and rollout record from the admin listener. When the LB lost them
        (restarted, or recreated with the image's placeholder config), the fleet's facts come
        from the record and ``lost`` is set."""
        lb = await self._container()
        text = (await self.runtime.read_file(lb, LIVE_CONF)).decode(errors="replace")
        self._installed = text
        state = parse_state(text)
        self._recorded = await self._read_record(lb)
        if state.lb_apply == "dynamic":
            live = parse_admin_body(await self._admin_call("GET", "servers", container=lb))
            self._seen = live.generation if live is not None else 0
            self.lost = live is None
            found = live if live is not None else self._recorded
            if found is not None:  # the config's own settings win: they are what NGINX runs
                state = replace(found, **{name: getattr(state, name) for name in CONFIG_FIELDS})
        elif STATE_MARK not in text and self._recorded is not None:  # recreated: nothing rendered yet
            state, self.lost = self._recorded, True
        self.state = state
        return state

    async def _read_record(self, lb: LbHandle) -> LbState | None:
        """The record on the state volume; None when none was written (or the LB has no volume)."""
        try:
            text = (await self.runtime.read_file(lb, RECORD_FILE)).decode(errors="replace")
        except EngineError:
            return None
        try:
            return LbState.from_json(text)
        except (ValueError, TypeError) as exc:
            raise BalancerError(f"the fleet's record {RECORD_FILE} is unreadable: {exc}") from exc

    async def _write_record(self, state: LbState) -> None:
        """Write the record of ``state`` when it differs from the one on the volume."""
        record = record_of(state)
        if record == self._recorded:
            return
        try:
            await self.runtime.put_file(await self._container(), RECORD_FILE, record.to_json().encode())
        except EngineError as exc:
            raise BalancerError(f"could not write the fleet's record {RECORD_FILE} (made by an older version? "
                                f"{hint('down', self.project)}, then `up`): {exc}") from exc
        self._recorded = record

    async def apply(self, upstreams: list[Upstream], **changes: Any) -> LbState:
        """Make ``upstreams`` exactly the attached set; ``changes`` set other LbState fields
        (``rollout``, ``sticky``, ``size``, ``lb_apply``, ...), every field not named keeps its value.

        Raises BalancerError, leaving the live config and set untouched, when NGINX rejects the
        config or the admin listener the set. Shielded from cancellation: a Ctrl-C never leaves
        it half done.
        """
        return await asyncio.shield(self._apply(upstreams, changes))

    async def repair_lost_set(self, instances: list[Instance], size: int) -> list[Upstream]:
        """After :meth:`load` found the set lost: attach, per slot, the oldest running container of
        ``instances`` (the one that served before; Docker's labels are the truth), in one PUT."""
        chosen: dict[int, Instance] = {}
        for inst in instances:  # in (slot, created) order
            if inst.state == "running" and inst.address and inst.slot not in chosen:
                chosen[inst.slot] = inst
        upstreams = [Upstream(name=i.name, address=i.address or "", version=i.version) for i in chosen.values()]
        await self.apply(upstreams, size=size)
        self.lost = False
        log.warning("the load balancer had no attached set (restarted?): re-attached %d servers", len(upstreams))
        return upstreams

    async def _apply(self, upstreams: list[Upstream], changes: dict[str, Any]) -> LbState:
        async with self._lock:
            new = replace(self.state, generation=self.state.generation + 1,
                          upstreams=sorted(upstreams, key=lambda u: u.name), **changes)
            if new.lb_apply not in APPLY_MODES:
                raise BalancerError(f"lb_apply: {new.lb_apply!r} must be one of {', '.join(APPLY_MODES)}")
            if new.lb_apply == "dynamic":
                new = await self._apply_dynamic(new)
            else:
                await self._install(render(self.project, new))
                await self._wait_generation(new.generation)
            self.state = new
            await self._write_record(new)
            log.debug("balancer generation %d (%s): %s", new.generation, new.lb_apply,
                      [u.name for u in new.upstreams])
            return new

    async def _apply_dynamic(self, new: LbState) -> LbState:
        """Install the config only if its text changed, then PUT the set: no reload otherwise.
        Returns the state as it landed (its generation moves on past the live one after a conflict
        that was safe to retry)."""
        lb = None
        if self._admin is None:
            lb = await self._container()
        url, token = await self._admin_target(lb)
        text = render(self.project, new, admin_token=token,
                      admin_from=access.controller_address(urlsplit(url).hostname or ""))
        if text != self._installed:
            await self._install(text)
            await self._wait_config(config_id(text) or "")
        if new.canary is not None or self.state.canary is not None:
            await self._admin_call("PUT", "canary", body=canary_body(new, self.state))
        try:
            await self._put(new)
        except BalancerConflict:
            new = await self._after_conflict(new)
            await self._put(new)
        return new

    async def _put(self, new: LbState) -> None:
        await self._admin_call("PUT", "servers", body=admin_body(new), expect=self._seen)
        self._seen = new.generation

    async def _after_conflict(self, new: LbState) -> LbState:
        """``new`` to PUT again after a 409, when that overwrites nothing: the LB holds no set
        (restarted), or exactly the state this controller last knew. Raises BalancerConflict, with
        both generations, when another writer changed it."""
        expected = self._seen
        live = parse_admin_body(await self._admin_call("GET", "servers"))
        if live is None:
            self._seen = 0
            return new
        if replace(live, generation=0) == replace(self.state, generation=0):
            self._seen = live.generation
            return replace(new, generation=max(new.generation, live.generation + 1))
        raise BalancerConflict(
            f"the load balancer's state changed under this controller: it is at generation {live.generation}, "
            f"this controller expected {expected} (another controller or process wrote it; nothing was "
            f"overwritten); {hint('status', self.project)} shows it")

    async def _install(self, text: str) -> None:
        """Check ``text`` with ``nginx -t``, rename it over the live config, reload gracefully."""
        lb = await self._container()
        await self.runtime.put_file(lb, STAGING_CONF, text.encode())
        # one exec: check, then an atomic rename over the live file, then a graceful reload (once
        # NGINX has written its pid: a container started a moment ago may not have yet, and `nginx -s
        # reload` then fails 'invalid PID number ""', seen while a compare started its fourth fleet);
        # the exit code says which part failed (a rejected config is never installed)
        script = (f"nginx -t -c {STAGING_CONF} 2>&1 || exit 10; "
                  f"mv -f {STAGING_CONF} {LIVE_CONF} || exit 11; "
                  f"i=0; while [ ! -s {NGINX_PID} ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
                  "nginx -s reload 2>&1 || exit 12")
        code, out = await self.runtime.exec(lb, ["sh", "-c", script])
        if code == 10:
            raise BalancerError(f"nginx -t rejected the new config: {_last_line(out)}")
        if code == 11:
            raise BalancerError(f"could not install the new config: {_last_line(out)}")
        if code != 0:
            raise BalancerError(f"nginx reload failed: {_last_line(out)}")
        self._installed = text

    async def in_flight(self) -> dict[str, int]:
        """Requests the LB has in flight now per server address (dynamic mode only; the
        addresses of servers that are idle and detached may be missing: they count 0)."""
        if not self.dynamic:
            raise BalancerError("in-flight counts need --lb-apply dynamic")
        return parse_in_flight(await self._admin_call("GET", "inflight"))

    async def long_lived(self) -> dict[str, int]:
        """Open WebSockets and event streams the LB holds now per server address (dynamic mode
        only; counted apart from :meth:`in_flight`, in the same ``ip:port count`` lines)."""
        if not self.dynamic:
            raise BalancerError("long-lived counts need --lb-apply dynamic")
        return parse_in_flight(await self._admin_call("GET", "longlived"))

    def forget_container(self) -> None:
        """Look the admin address up again on the next call (the container was started again)."""
        self._admin = None

    async def _admin_target(self, container: LbHandle | None = None) -> tuple[str, str]:
        """(admin url, token) of this project's LB, resolved once."""
        if self._admin is None:
            lb = container if container is not None else await self._container()
            ip = await self.runtime.admin_ip(lb, self.project)
            token = lb.labels.get(L.LABEL_ADMIN_TOKEN, "")
            if not ip or not token:
                raise BalancerError(f"the load balancer of {self.project!r} has no admin address or token "
                                    f"(made by an older version? {hint('down', self.project)}, then `up`)")
            self._admin = (f"http://{ip}:{ADMIN_PORT}", token)
        return self._admin

    async def _admin_call(self, method: str, what: str, *, body: str | None = None, expect: int | None = None,
                          container: LbHandle | None = None) -> str:
        """One request to the admin listener (``expect``: the generation a change is made on);
        BalancerConflict on a 409, BalancerError on no answer or another refusal."""
        url, token = await self._admin_target(container)
        headers = {"X-Sandbox-Token": token, **({EXPECT_HEADER: str(expect)} if expect is not None else {})}
        try:
            status, text = await self._http(method, f"{url}/{what}", body, headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BalancerError(f"the load balancer's admin listener did not answer {method} /{what}: "
                                f"{type(exc).__name__}") from exc
        if status == 409:
            raise BalancerConflict(f"the load balancer refused {method} /{what}: {text.strip()[:200]}")
        if status != 200:
            raise BalancerError(f"the load balancer refused {method} /{what} ({status}): {text.strip()[:200]}")
        return text

    async def _http(self, method: str, url: str, body: str | None, headers: dict[str, str]) -> tuple[int, str]:
        """One HTTP request: (status, text). The one place the admin listener is spoken to."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)) as session, \
                session.request(method, url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def _wait_config(self, wanted: str, timeout_s: float = 10.0) -> None:
        """Wait until the admin listener answers with the config id ``wanted`` (a reload landed)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = (await self._admin_call("GET", "config")).strip()
                if last == wanted:
                    return
            except BalancerError as exc:
                last = str(exc)
            await asyncio.sleep(0.05)
        raise BalancerError(f"the load balancer did not pick up config {wanted} within {timeout_s:.0f} s "
                            f"(last answer: {last})")

    async def _wait_generation(self, generation: int, timeout_s: float = 10.0) -> None:
        """Wait until new requests are answered by workers of ``generation`` (reload mode)."""
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

    async def access_log(self) -> list[LbRow]:
        """The JSON access log's rows written so far (unparseable lines are skipped)."""
        lb = await self._container()
        return nginx_log.parse((await self.runtime.read_file(lb, ACCESS_LOG)).decode(errors="replace"))


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
    upstreams = [Upstream(name=f"app{i}", address=f"app{i}:8000", version=TOY_VERSIONS[0]) for i in range(1, size + 1)]
    return render("compose", LbState(generation=1, size=size, upstreams=upstreams))

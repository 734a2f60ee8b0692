"""The toy-shop HTTP service shared by both app versions.

Runs inside the app containers on Debian bookworm's python3 with aiohttp 3.8.4
(and on the host's newer aiohttp in the unit tests), so it sticks to the
standard library and the aiohttp APIs both have. What differs between v1 and v2
lives in the version module (``/srv/app/app.py``): ``VERSION`` and
``item(item_id, breaking) -> dict``.

Run as ``python3 -m appserver.server`` (normally by ``appserver.supervisor``).
Settings come from the environment (see :class:`Settings`). On SIGTERM the
service reports ``stopping`` on /healthz, closes its listener after
``APP_STOP_DELAY`` seconds, waits for in-flight requests (at most
``APP_SHUTDOWN_GRACE`` seconds) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import os
import random
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from aiohttp import web

from .supervisor import exit_now  # the one way both processes leave (standard library only)

log = logging.getLogger("appserver")

SERVICE = "toy-shop"
SESSION_COOKIE = "sid"
CONNECT_TIMEOUT_S = 2.0  # to the shared session store
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_current_sid: contextvars.ContextVar[str] = contextvars.ContextVar("sid")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class VersionModule(Protocol):
    """What a version module (``app_v1/app.py``, ``app_v2/app.py``) provides."""

    VERSION: str

    def item(self, item_id: int, breaking: bool) -> dict[str, Any]: ...


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """``env[name]`` as a float in [low, high], or ``default``; raises ValueError naming it."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={raw!r} is outside {low:g}..{high:g}")
    return value


@dataclass(frozen=True)
class Settings:
    """Behaviour knobs of one server process (all from ``APP_*`` environment variables)."""

    host: str = "0.0.0.0"
    port: int = 8000
    latency_ms: float = 0.0
    startup_delay: float = 0.0
    boot_fail: bool = False
    error_ratio: float = 0.0
    breaking: bool = False
    version_header: bool = True  # APP_VERSION_HEADER=0: send no X-App-Version (like most real apps)
    stop_delay: float = 0.5
    shutdown_grace: float = 15.0
    keepalive_timeout: float = 75.0
    app_dir: str = "/srv/app"
    redis: str = ""  # APP_REDIS=host:port: carts live in that Redis (shared by every server), else in memory
    redis_password: str = ""  # APP_REDIS_PASSWORD: sent with AUTH on every new connection to that Redis

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``env``; raises ValueError (naming the variable) on a bad value."""
        return cls(
            port=int(_number(env, "APP_PORT", 8000, 1, 65535)),
            latency_ms=_number(env, "APP_LATENCY_MS", 0.0, 0, 600_000),
            startup_delay=_number(env, "APP_STARTUP_DELAY", 0.0, 0, 3600),
            boot_fail=_flag(env, "APP_BOOT_FAIL"),
            error_ratio=_number(env, "APP_ERROR_RATIO", 0.0, 0, 1),
            breaking=_flag(env, "APP_BREAKING"),
            version_header=env.get("APP_VERSION_HEADER", "1").strip().lower() not in ("0", "false", "no", "off"),
            stop_delay=_number(env, "APP_STOP_DELAY", 0.5, 0, 3600),
            shutdown_grace=_number(env, "APP_SHUTDOWN_GRACE", 15.0, 0, 3600),
            app_dir=env.get("APP_DIR", "/srv/app"),
            redis=env.get("APP_REDIS", "").strip(),
            redis_password=env.get("APP_REDIS_PASSWORD", ""),
        )


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


class MemorySessions:
    """Carts in this process: a user whose server goes away starts again with an empty one."""

    def __init__(self) -> None:
        self.carts: dict[str, list[int]] = {}

    async def exists(self, sid: str) -> bool:
        return sid in self.carts

    async def create(self, sid: str) -> None:
        self.carts[sid] = []

    async def items(self, sid: str) -> list[int]:
        return list(self.carts.get(sid, []))

    async def add(self, sid: str, item: int) -> None:
        self.carts.setdefault(sid, []).append(item)


class RedisSessions:
    """Carts in a Redis every server shares (RESP over one asyncio connection: bookworm's
    python3 has no Redis client). A session is the key ``s:<sid>``, its cart the list ``c:<sid>``."""

    def __init__(self, address: str, password: str = "") -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or address, int(port or 6379)
        self.password = password
        self._lock = asyncio.Lock()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _call(self, *args: str) -> Any:
        async with self._lock:
            fresh = self._conn is None
            if self._conn is None:
                self._conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
            reader, writer = self._conn
            try:
                if fresh and self.password:  # the store answers nothing else before AUTH
                    await _send(reader, writer, "AUTH", self.password)
                return await _send(reader, writer, *args)
            except BaseException:  # failed or cancelled half-way: a reply may be pending, start afresh
                self._conn = None
                writer.close()
                raise

    async def ping(self, timeout: float) -> bool:
        """True when the store answers PING within ``timeout`` seconds (readiness)."""
        try:
            reply: object = await asyncio.wait_for(self._call("PING"), timeout)
            return reply == "PONG"
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            await self._conn[1].wait_closed()
            self._conn = None

    async def exists(self, sid: str) -> bool:
        return bool(await self._call("EXISTS", f"s:{sid}"))

    async def create(self, sid: str) -> None:
        await self._call("SET", f"s:{sid}", "1")

    async def items(self, sid: str) -> list[int]:
        return [int(x) for x in await self._call("LRANGE", f"c:{sid}", "0", "-1")]

    async def add(self, sid: str, item: int) -> None:
        await self._call("RPUSH", f"c:{sid}", str(item))


async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *args: str) -> Any:
    """One command over RESP, and its reply."""
    parts = [f"*{len(args)}\r\n"] + [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
    writer.write("".join(parts).encode())
    await writer.drain()
    return await _read_resp(reader)


async def _read_resp(reader: asyncio.StreamReader) -> Any:
    """One RESP reply: +simple, -error (raised), :integer, $bulk, *array."""
    line = (await reader.readuntil(b"\r\n"))[:-2].decode()
    kind, rest = line[:1], line[1:]
    if kind == "+":
        return rest
    if kind == "-":
        raise OSError(f"redis: {rest}")
    if kind == ":":
        return int(rest)
    if kind == "$":
        return None if int(rest) < 0 else (await reader.readexactly(int(rest) + 2))[:-2].decode()
    if kind == "*":
        return [await _read_resp(reader) for _ in range(max(0, int(rest)))]
    raise OSError(f"redis: unexpected reply {line!r}")


class Shop:
    """State and handlers of one server process: sessions, counters, readiness."""

    def __init__(
        self,
        settings: Settings,
        version: VersionModule | ModuleType,
        *,
        instance: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.version: str = version.VERSION
        self._item = version.item
        self.instance = instance or f"{socket.gethostname()}/{secrets.token_hex(3)}"
        self.store: MemorySessions | RedisSessions = (
            RedisSessions(settings.redis, settings.redis_password) if settings.redis else MemorySessions())
        self.requests_total = 0
        self.in_flight = 0
        self.responses: dict[int, int] = {}
        self.stopping = False
        self._started = time.monotonic()
        self._rng = rng or random.Random()

    # -- lifecycle ---------------------------------------------------------

    @property
    def state(self) -> str:
        """``starting`` (startup delay), ``ready`` or ``stopping``."""
        if self.stopping:
            return "stopping"
        if time.monotonic() - self._started < self.settings.startup_delay:
            return "starting"
        return "ready"

    def begin_stop(self) -> None:
        """From now on /healthz says ``stopping`` and responses close their connection."""
        self.stopping = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no counted request is in flight, at most ``timeout`` s; True if idle."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight == 0

    def make_app(self) -> web.Application:
        """The aiohttp application serving this shop."""
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._stamp)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/items/{item_id}", self._get_item)
        app.router.add_get("/api/cart", self._get_cart)
        app.router.add_post("/api/cart", self._add_to_cart)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    # -- cross-cutting -----------------------------------------------------

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.settings.version_header:
            response.headers["X-App-Version"] = self.version
        response.headers["X-Instance"] = self.instance
        request_id = request.headers.get("X-Request-ID")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        if self.stopping:  # headers are already prepared here: say it and mean it
            response.headers["Connection"] = "close"
            response.force_close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        api = path.startswith("/api/")
        if not (api or path == "/"):
            return await self._answer(request, handler)
        self.requests_total += 1
        self.in_flight += 1
        status = 500
        try:
            sid = request.cookies.get(SESSION_COOKIE, "")
            fresh = not (_SID_RE.match(sid) and await self.store.exists(sid))
            if fresh:
                sid = sid if _SID_RE.match(sid) else secrets.token_hex(16)
                await self.store.create(sid)
            _current_sid.set(sid)
            if api and self.settings.latency_ms:
                await asyncio.sleep(self.settings.latency_ms / 1000)
            if api and self._rng.random() < self.settings.error_ratio:
                response: web.StreamResponse = _json_error(500, "injected failure")
            else:
                response = await self._answer(request, handler)
            response.headers["X-Session-State"] = "new" if fresh else "resumed"
            if fresh:
                response.set_cookie(SESSION_COOKIE, sid, path="/", httponly=True)
            status = response.status
            return response
        finally:
            self.in_flight -= 1
            self.responses[status] = self.responses.get(status, 0) + 1

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run ``handler``; HTTP errors become JSON answers, anything else a logged 500."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            return _json_error(exc.status, exc.reason, **allow)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _json_error(500, "internal error")

    # -- handlers ----------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.json_response({"service": SERVICE, "version": self.version})

    async def _get_item(self, request: web.Request) -> web.Response:
        raw = request.match_info["item_id"]
        if not raw.isdigit():
            return _json_error(404, "no such item")
        return web.json_response(self._item(int(raw), self.settings.breaking))

    async def _cart(self) -> web.Response:
        items = await self.store.items(_current_sid.get())
        return web.json_response({"items": items, "count": len(items)})

    async def _get_cart(self, request: web.Request) -> web.Response:
        return await self._cart()

    async def _add_to_cart(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _json_error(400, "body must be JSON")
        item = body.get("item") if isinstance(body, dict) else None
        if not isinstance(item, int) or isinstance(item, bool):
            return _json_error(400, 'body must be {"item": <int>}')
        await self.store.add(_current_sid.get(), item)
        return await self._cart()

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self.state
        if state == "ready" and isinstance(self.store, RedisSessions) and not await self.store.ping(1.0):
            # not ready without its shared session store: every request would answer 500
            return web.json_response({"status": "no-session-store"}, status=503)
        if state == "ready":
            return web.json_response({"status": state, "version": self.version})
        return web.json_response({"status": state}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = [
            "# HELP app_requests_total Requests to / and /api/* received by this process.",
            "# TYPE app_requests_total counter",
            f"app_requests_total {self.requests_total}",
            "# HELP app_requests_in_flight Requests to / and /api/* being answered now.",
            "# TYPE app_requests_in_flight gauge",
            f"app_requests_in_flight {self.in_flight}",
            "# HELP app_ready 1 when /healthz answers ready.",
            "# TYPE app_ready gauge",
            f"app_ready {int(self.state == 'ready')}",
            "# HELP app_info The version this process serves.",
            "# TYPE app_info gauge",
            f'app_info{{version="{self.version}"}} 1',
            "# HELP app_responses_total Answers to / and /api/* by status code.",
            "# TYPE app_responses_total counter",
        ]
        for code, count in sorted(self.responses.items()):
            lines.append(f'app_responses_total{{code="{code}"}} {count}')
        body = ("\n".join(lines) + "\n").encode()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})


def load_version_module(path: str | Path) -> ModuleType:
    """Import the version module at ``path``; raises ImportError/OSError if it cannot."""
    spec = importlib.util.spec_from_file_location("app", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a version module from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def serve(settings: Settings, version: VersionModule | ModuleType) -> Shop:
    """Serve until SIGTERM/SIGINT, then drain and return the shop; raises OSError on bind."""
    shop = Shop(settings, version)
    runner = web.AppRunner(
        shop.make_app(), access_log=None, keepalive_timeout=settings.keepalive_timeout
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = await loop.create_server(
        runner.server, settings.host, settings.port, reuse_address=True, backlog=1024
    )
    log.info(
        "started %s %s on port %d (pid %d, startup delay %gs)",
        shop.version,
        shop.instance,
        settings.port,
        os.getpid(),
        settings.startup_delay,
    )
    await stop.wait()
    shop.begin_stop()
    log.info("stopping %s %s: %d in flight", shop.version, shop.instance, shop.in_flight)
    await asyncio.sleep(settings.stop_delay)
    listener.close()
    drained = await shop.wait_idle(settings.shutdown_grace)
    await runner.server.shutdown(1.0)
    await runner.cleanup()
    log.info(
        "stopped %s %s: %d requests, drained=%s",
        shop.version,
        shop.instance,
        shop.requests_total,
        drained,
    )
    return shop


def main() -> int:
    """Entry point of ``python3 -m appserver.server``; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s appserver: %(message)s"
    )
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        log.error("bad setting: %s", exc)
        return 2
    if settings.boot_fail:
        log.error("APP_BOOT_FAIL is set: failing at boot (exit 3)")
        return 3
    version = load_version_module(Path(settings.app_dir) / "app.py")
    asyncio.run(serve(settings, version))
    return 0


if __name__ == "__main__":
    exit_now(main())

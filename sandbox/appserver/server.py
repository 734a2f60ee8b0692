"""The toy-shop HTTP service shared by both app versions.

Runs inside the app containers on Debian bookworm's python3 with aiohttp 3.8.4
(and on the host's newer aiohttp in the unit tests), so it sticks to the
standard library and the aiohttp APIs both have. What differs between v1 and v2
lives in the version module (``/srv/app/app.py``): ``VERSION`` and
``item(item_id, breaking) -> dict``.

Run as ``python3 -m appserver.server`` (normally by ``appserver.supervisor``).
Settings come from the environment (see :class:`Settings`). On SIGTERM the
service reports ``stopping`` on /healthz, ends its long-lived streams (WebSocket
close 1001, a last SSE event with ``retry:``), closes its listener after
``APP_STOP_DELAY`` seconds, waits for in-flight requests (at most
``APP_SHUTDOWN_GRACE`` seconds) and exits 0.

Switches that reproduce what real rollouts get wrong:

- ``APP_STOP_MODE``: ``graceful`` (the above), ``exit-now`` (SIGTERM ends the
  process at once, exit 143: in-flight requests cut, listener gone) or
  ``ignore`` (SIGTERM is logged and ignored: the engine kills it at the stop timeout).
- ``APP_READY_EARLY_S=S``: /healthz passes as usual, but ``/`` and ``/api/*``
  answer 503 for the first S seconds (readiness that passes too early).
- ``APP_KEEPALIVE_TIMEOUT=S``: idle keep-alive connections are closed after S
  seconds (default 75); shorter than the proxy's upstream keep-alive, it makes the race.
- ``APP_LONG_LIVED_CUT=1``: on a graceful stop, WebSocket and SSE connections are
  aborted (no close frame, no end of stream) instead of closed.
- ``APP_RECONNECT_MS=N``: the reconnect hint a graceful stop gives clients (default 1000): the
  SSE ``retry:`` field, and ``retry=N`` in the WebSocket close frame's reason.

Long requests: ``GET /api/slow?ms=N`` answers after N ms (other paths stay fast).
Long-lived connections: ``GET /events`` (SSE, one ``tick`` event a second) and
``GET /ws`` (WebSocket: echoes text, sends a ``tick`` a second).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
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
from typing import Any, Literal, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from .orders import Orders, SchemaMismatch, schema_of
from .supervisor import exit_now, flag  # the one way both processes leave (standard library only)

log = logging.getLogger("appserver")

SERVICE = "toy-shop"
SESSION_COOKIE = "sid"
CONNECT_TIMEOUT_S = 2.0  # to the shared session store
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TICK_S = 1.0  # between two events of a long-lived connection
RECONNECT_MS = 1000  # the default reconnect hint a graceful stop gives clients (APP_RECONNECT_MS)
MAX_SLOW_MS = 600_000  # the longest /api/slow?ms= accepted
SIGTERM_EXIT = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended
StopMode = Literal["graceful", "exit-now", "ignore"]
STOP_MODES: tuple[StopMode, ...] = ("graceful", "exit-now", "ignore")
_SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_current_sid: contextvars.ContextVar[str] = contextvars.ContextVar("sid")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class VersionModule(Protocol):
    """What a version module (``app_v1/app.py``, ``app_v2/app.py``) provides."""

    VERSION: str

    def item(self, item_id: int, breaking: bool) -> dict[str, Any]: ...


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


def _stop_mode(env: Mapping[str, str]) -> StopMode:
    """``APP_STOP_MODE`` (default graceful); raises ValueError naming it."""
    raw = env.get("APP_STOP_MODE", "").strip() or "graceful"
    if raw not in STOP_MODES:
        raise ValueError(f"APP_STOP_MODE={raw!r} is not one of {', '.join(STOP_MODES)}")
    return raw


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
    stop_mode: StopMode = "graceful"  # APP_STOP_MODE: what SIGTERM does (see the module docstring)
    ready_early_s: float = 0.0  # APP_READY_EARLY_S: / and /api/* answer 503 this long after start
    long_lived_cut: bool = False  # APP_LONG_LIVED_CUT=1: a stop aborts WebSocket/SSE connections
    reconnect_ms: int = RECONNECT_MS  # APP_RECONNECT_MS: the SSE ``retry:`` and WebSocket ``retry=`` of a stop
    app_dir: str = "/srv/app"
    redis: str = ""  # APP_REDIS=host:port: carts live in that Redis (shared by every server), else in memory
    redis_password: str = ""  # APP_REDIS_PASSWORD: sent with AUTH on every new connection to that Redis
    database_url: str = ""  # DATABASE_URL: orders are written to that PostgreSQL (see appserver.orders)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``env``; raises ValueError (naming the variable) on a bad value."""
        return cls(
            port=int(_number(env, "APP_PORT", 8000, 1, 65535)),
            latency_ms=_number(env, "APP_LATENCY_MS", 0.0, 0, 600_000),
            startup_delay=_number(env, "APP_STARTUP_DELAY", 0.0, 0, 3600),
            boot_fail=flag(env, "APP_BOOT_FAIL"),
            error_ratio=_number(env, "APP_ERROR_RATIO", 0.0, 0, 1),
            breaking=flag(env, "APP_BREAKING"),
            version_header=env.get("APP_VERSION_HEADER", "1").strip().lower() not in ("0", "false", "no", "off"),
            stop_delay=_number(env, "APP_STOP_DELAY", 0.5, 0, 3600),
            shutdown_grace=_number(env, "APP_SHUTDOWN_GRACE", 15.0, 0, 3600),
            keepalive_timeout=_number(env, "APP_KEEPALIVE_TIMEOUT", 75.0, 0, 3600),
            stop_mode=_stop_mode(env),
            ready_early_s=_number(env, "APP_READY_EARLY_S", 0.0, 0, 3600),
            long_lived_cut=flag(env, "APP_LONG_LIVED_CUT"),
            reconnect_ms=int(_number(env, "APP_RECONNECT_MS", RECONNECT_MS, 0, 3_600_000)),
            app_dir=env.get("APP_DIR", "/srv/app"),
            redis=env.get("APP_REDIS", "").strip(),
            redis_password=env.get("APP_REDIS_PASSWORD", ""),
            database_url=env.get("DATABASE_URL", "").strip(),
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
        self._opening: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self.last_error = ""  # why the last ping failed

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
        try:
            if self.password:  # the store answers nothing else before AUTH
                await asyncio.wait_for(_send(reader, writer, "AUTH", self.password), CONNECT_TIMEOUT_S)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The open, authenticated connection. Opening it is shielded from the caller: a request
        that gives up (a readiness probe's 1 s budget on a busy machine) leaves it opening for the
        next one, instead of throwing the half-made connection away and starting over each time."""
        if self._conn is not None:
            return self._conn
        opening = self._opening
        if opening is not None and opening.done():  # finished after its caller gave up
            self._opening = None
            if not opening.cancelled() and opening.exception() is None:  # (a failure: retrieved, tried afresh)
                self._conn = opening.result()
                return self._conn
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        self._conn = await asyncio.shield(self._opening)
        self._opening = None
        return self._conn

    async def _call(self, *args: str) -> Any:
        async with self._lock:
            reader, writer = await self._connection()
            try:
                return await _send(reader, writer, *args)
            except BaseException:  # failed or cancelled half-way: a reply may be pending, start afresh
                self._conn = None
                writer.close()
                raise

    async def ping(self, timeout: float) -> bool:
        """True when the store answers PING within ``timeout`` seconds (readiness); else
        ``last_error`` says what went wrong."""
        try:
            reply: object = await asyncio.wait_for(self._call("PING"), timeout)
        except TimeoutError:
            self.last_error = f"no answer from {self.host}:{self.port} within {timeout:g} s"
            return False
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.last_error = f"{self.host}:{self.port}: {type(exc).__name__}: {exc}"
            return False
        self.last_error = "" if reply == "PONG" else f"{self.host}:{self.port} answered {reply!r} to PING"
        return not self.last_error

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
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
        self.orders = Orders(settings.database_url, schema_of(version, settings.breaking)) \
            if settings.database_url else None
        self.requests_total = 0
        self.in_flight = 0
        self.long_lived = 0  # WebSocket and SSE connections open now
        self.responses: dict[int, int] = {}
        self.stopping = False
        self._stop = asyncio.Event()  # set with ``stopping``: long-lived handlers end on it
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
        """From now on /healthz says ``stopping``, responses close their connection and
        long-lived connections end (closed properly, or cut with ``APP_LONG_LIVED_CUT``)."""
        self.stopping = True
        self._stop.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no counted request and no long-lived connection is left, at most
        ``timeout`` s; True if idle."""
        deadline = time.monotonic() + timeout
        while (self.in_flight or self.long_lived) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self.in_flight or self.long_lived)

    async def _stopped_within(self, timeout: float) -> bool:
        """True once the stop began, False if ``timeout`` s pass first."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def make_app(self) -> web.Application:
        """The aiohttp application serving this shop."""
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._stamp)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/items/{item_id}", self._get_item)
        app.router.add_get("/api/cart", self._get_cart)
        app.router.add_post("/api/cart", self._add_to_cart)
        app.router.add_get("/api/slow", self._slow)
        app.router.add_get("/events", self._events)
        app.router.add_get("/ws", self._websocket)
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
            if time.monotonic() - self._started < self.settings.ready_early_s:
                response: web.StreamResponse = _json_error(503, "warming up (APP_READY_EARLY_S)")
            elif api and self._rng.random() < self.settings.error_ratio:
                response = _json_error(500, "injected failure")
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

    async def _cart(self, order: int | None = None) -> web.Response:
        sid = _current_sid.get()
        items = await self.store.items(sid)
        if self.orders is None:
            return web.json_response({"items": items, "count": len(items)})
        expected = {"X-Schema-Expected": self.orders.schema.name}
        try:
            if order is not None:
                await self.orders.add(sid, order)
            latest = await self.orders.latest(sid)
        except SchemaMismatch as exc:  # the database changed under this version: an answer, not a crash
            return web.json_response({"error": "schema mismatch", "schema_expected": self.orders.schema.name,
                                      "detail": str(exc)}, status=409, headers=expected)
        return web.json_response({"items": items, "count": len(items), "orders": latest,
                                  "schema_expected": self.orders.schema.name}, headers=expected)

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
        return await self._cart(order=item)

    async def _slow(self, request: web.Request) -> web.Response:
        raw = request.query.get("ms", "0")
        if not raw.isdigit() or int(raw) > MAX_SLOW_MS:
            return _json_error(400, f"ms must be a whole number of milliseconds up to {MAX_SLOW_MS}")
        await asyncio.sleep(int(raw) / 1000)
        return web.json_response({"slept_ms": int(raw), "version": self.version})

    def _tick(self, n: int) -> str:
        return json.dumps({"tick": n, "version": self.version, "instance": self.instance})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """SSE: a ``tick`` event a second until the stop; then a ``bye`` event with ``retry:``
        and the end of the stream (or, with ``APP_LONG_LIVED_CUT``, the connection aborted)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.long_lived += 1
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                await response.write(f"id: {n}\nevent: tick\ndata: {self._tick(n)}\n\n".encode())
                if await self._stopped_within(TICK_S):
                    break
            if self.settings.long_lived_cut:
                _cut(request)
            else:
                await response.write(f"event: bye\nretry: {self.settings.reconnect_ms}\ndata: stopping\n\n".encode())
                await response.write_eof()
        except ConnectionError:  # the client went away
            pass
        finally:
            self.long_lived -= 1
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        """WebSocket: echoes text messages, sends a ``tick`` a second; on a stop, closes with
        1001 (going away) and the reason ``retry=N`` (the reconnect hint in ms), or, with
        ``APP_LONG_LIVED_CUT``, aborts the connection."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.long_lived += 1
        ticker = asyncio.ensure_future(self._ws_ticks(request, ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            if self._stop.is_set():
                await ticker  # it closes the connection (or cuts it): let it finish
        finally:
            ticker.cancel()  # the client left first (a no-op once the ticker is done)
            self.long_lived -= 1
        return ws

    async def _ws_ticks(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        n = 0
        try:
            while not await self._stopped_within(TICK_S):
                if ws.closed:
                    return
                n += 1
                await ws.send_str(self._tick(n))
            if self.settings.long_lived_cut:
                _cut(request)
            else:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=f"retry={self.settings.reconnect_ms}".encode())
        except ConnectionError:  # the client went away
            pass

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self.state
        if state == "ready" and isinstance(self.store, RedisSessions) and not await self.store.ping(0.8):
            # not ready without its shared session store: every request would answer 500 (0.8 s:
            # within the controller's 1 s probe budget, so that its error can say why)
            return web.json_response({"status": "no-session-store", "error": self.store.last_error}, status=503)
        if state == "ready" and self.orders is not None and not await self.orders.ping(0.8):
            return web.json_response({"status": "no-database"}, status=503)
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
            "# HELP app_long_lived_open WebSocket and SSE connections open now.",
            "# TYPE app_long_lived_open gauge",
            f"app_long_lived_open {self.long_lived}",
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


def _cut(request: web.Request) -> None:
    """Abort ``request``'s connection: no close frame, no end of stream (the peer sees a reset)."""
    if request.transport is not None:
        request.transport.abort()


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
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, {
        "graceful": stop.set,
        "exit-now": lambda: _exit_at_once(shop),
        "ignore": lambda: log.warning("SIGTERM ignored (APP_STOP_MODE=ignore): %d in flight", shop.in_flight),
    }[settings.stop_mode])
    listener = await loop.create_server(
        runner.server, settings.host, settings.port, reuse_address=True, backlog=1024
    )
    log.info(
        "started %s %s on port %d (pid %d, startup delay %gs, stop mode %s)",
        shop.version,
        shop.instance,
        settings.port,
        os.getpid(),
        settings.startup_delay,
        settings.stop_mode,
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


def _exit_at_once(shop: Shop) -> None:
    """APP_STOP_MODE=exit-now: leave now, as a process with no SIGTERM handler would (exit 143);
    the kernel closes the listener and every connection, answered or not."""
    log.warning("exiting at once on SIGTERM (APP_STOP_MODE=exit-now): %d in flight, %d long-lived cut",
                shop.in_flight, shop.long_lived)
    exit_now(SIGTERM_EXIT)


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

"""The live page: an aiohttp server in the controller's process, on 127.0.0.1 only.

``GET /`` is one page (HTML, CSS and a small script of our own, served from
``sandbox/ui/static``; nothing is fetched from elsewhere), ``GET /events`` pushes the
:class:`~sandbox.ui.state.RolloutState` as server-sent events (at least twice a second),
``GET /api/state`` returns the same JSON, ``GET /files/{key}`` a file of the finished
report. Read-only: nothing here changes the fleet. A request whose ``Host`` is not
``127.0.0.1:<port>`` or ``localhost:<port>`` gets 421 (:func:`host_allowed`): a page on another
site that rebinds its name to 127.0.0.1 cannot read the dashboard through the browser.

:class:`LiveView` bundles what one command shows: the terminal progress and, with
``--dashboard``, this page, both reading the same state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.errors import PortInUseError, UsageError
from sandbox.results.model import Report
from sandbox.ui.progress import Progress, make_progress
from sandbox.ui.state import RolloutState

log = logging.getLogger("sandbox.ui.dashboard")

STATIC = Path(__file__).parent / "static"
PUSH_INTERVAL_S = 0.25  # a changed state goes out within this
HEARTBEAT_S = 0.4  # and goes out anyway after this (so at least every 0.5 s, on the 0.25 s ticks)
FINAL_LINGER_S = 3.0  # at close, how long to wait for each page to receive the final state
DEFAULT_PORT = 8089
LOCAL_NAMES = ("127.0.0.1", "localhost")


def host_allowed(host: str | None, port: int) -> bool:
    """Whether a request's ``Host`` header names this dashboard: ``127.0.0.1`` or ``localhost``
    with its port (without one only on port 80, as browsers send it). A DNS-rebinding page sends
    its own name, so it is refused."""
    wanted = {f"{name}:{port}" for name in LOCAL_NAMES} | (set(LOCAL_NAMES) if port == 80 else set())
    return (host or "").strip().lower() in wanted


def check_port(port: int) -> int:
    """``port`` when it is a port the dashboard can serve on; UsageError (exit 2) naming the flag otherwise."""
    if not 1 <= port <= 65535:
        raise UsageError(f"dashboard-port: {port} is not a port (1-65535)")
    return port


class Dashboard:
    """Serves ``state`` on http://127.0.0.1:``port``/ until :meth:`close`."""

    def __init__(self, state: RolloutState, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        self.state, self.port, self.host = state, port, host
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._clients: dict[int, int] = {}  # id(response) -> seq last sent to it
        self._cache: tuple[int, bytes] = (-1, b"")
        self.pushes = 0  # events sent, for measuring the update rate

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._only_local_host])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_get("/events", self._events)
        app.router.add_get("/files/{key}", self._file)
        return app

    async def start(self) -> None:
        """Bind and serve; PortInUseError (exit 2) when the port is taken."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise PortInUseError(f"dashboard-port: {self.host}:{self.port} is already in use"
                                 "; pick another with --dashboard-port") from exc
        log.info("dashboard on %s", self.url)

    async def close(self, linger_s: float = FINAL_LINGER_S) -> None:
        """Let every open page receive the latest state (at most ``linger_s``), then stop."""
        deadline = time.monotonic() + linger_s
        while self._clients and min(self._clients.values()) < self.state.seq and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------------------------
    @web.middleware
    async def _only_local_host(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self.port):
            return web.Response(status=421, text=f"this is the dashboard of 127.0.0.1:{self.port} only\n")
        return await handler(request)

    def _body(self) -> bytes:
        seq, body = self._cache
        if seq != self.state.seq:
            body = json.dumps(self.state.snapshot(), default=str).encode()
            self._cache = (self.state.seq, body)
        return body

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in {"page.js", "page.css"}:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.Response(body=self._body(), content_type="application/json")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        files = (self.state.result or {}).get("files") or {}
        path = files.get(request.match_info["key"])
        if not path or not Path(path).is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        key = id(response)
        self._clients[key] = -1
        last_sent = 0.0
        try:
            while not self._closing.is_set():
                now = time.monotonic()
                if self._clients[key] != self.state.seq or now - last_sent >= HEARTBEAT_S:
                    seq = self.state.seq
                    await response.write(b"data: " + self._body() + b"\n\n")
                    self._clients[key], last_sent = seq, now
                    self.pushes += 1
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL_S)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._clients.pop(key, None)
        return response


class LiveView:
    """What one command shows: the terminal progress and, with ``--dashboard``, the page."""

    def __init__(self, state: RolloutState, dashboard: Dashboard | None, *, narrate: bool = False,
                 say: Callable[[str], None] = log.info, hold: bool = True) -> None:
        self.state, self.dashboard, self.narrate, self.say = state, dashboard, narrate, say
        self.hold = hold  # on a terminal, keep serving the final page until Enter

    @classmethod
    async def open(cls, *, dashboard: bool, port: int | None, narrate: bool = False,
                   say: Callable[[str], None] = log.info) -> LiveView:
        """Bind the dashboard's port first (PortInUseError when taken) and print its URL."""
        state = RolloutState()
        board = Dashboard(state, DEFAULT_PORT if port is None else check_port(port)) if dashboard else None
        if board is not None:
            await board.start()
            say(f"dashboard: {board.url} (read-only; Ctrl-C stops the run, not just the page)")
        return cls(state, board, narrate=narrate, say=say)

    def progress(self, settings: Any, *, sized: bool = True) -> Progress:
        """A progress for one run of ``settings``; ``sized``: the fleet will have ``settings.size``
        slots (up, demo, compare), else its slots are learnt from the fleet (roll).
        For compare, the previous run becomes a panel."""
        if self.state.result is not None:
            self.state.add_panel()
        self.state.configure(strategy=settings.strategy, batch=settings.batch, mode=settings.mode,
                             to_version=settings.to_version, size=settings.size if sized else 0,
                             title=settings.project)
        return make_progress(state=self.state, narrate=self.narrate)

    async def close(self, *, report: Report | None = None,
                    table: Sequence[Mapping[str, Any]] | None = None) -> None:
        """The command ended: show its report (or compare's table); on a terminal, keep serving the
        final page (its links to the report's files work while it is served) until Enter; then stop."""
        if report is not None:
            self.state.finish(report)
        if table is not None:
            self.state.add_panel()
            self.state.set_table(table)
        if self.dashboard is None:
            return
        if self.hold and sys.stdin.isatty():
            self.say(f"dashboard: the final page stays at {self.dashboard.url} until you press Enter (or Ctrl-C)")
            await wait_for_enter()
        await self.dashboard.close()


async def wait_for_enter() -> None:
    """Until a line arrives on the terminal or Ctrl-C (which here ends the wait, not the command)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_line() -> None:
        sys.stdin.readline()
        done.set()

    loop.add_reader(sys.stdin.fileno(), on_line)
    loop.add_signal_handler(signal.SIGINT, done.set)
    try:
        await done.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        loop.remove_signal_handler(signal.SIGINT)

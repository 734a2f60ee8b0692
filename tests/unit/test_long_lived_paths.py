"""--ws-path / --sse-path: where the default long-lived users connect on your own app, checked once
through the load balancer before the rollout (a path that does not upgrade: one line, exit 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from sandbox.config import Settings
from sandbox.errors import UsageError
from sandbox.fleet.probes import long_lived_problem
from sandbox.load.run import LoadRun, LoadSettings
from tests.unit.test_cli import run
from tests.unit.test_rehearsal import World


# -- the flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "needle"), [
    (["roll", "--ws-path", "ws"], "--ws-path: 'ws' must start with / and have no spaces"),
    (["roll", "--sse-path", "/a b"], "--sse-path: '/a b' must start with / and have no spaces"),
    (["compare", "--ws-path", ""], "--ws-path: '' must start with /"),
])
def test_a_bad_path_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_the_paths_reach_the_long_lived_users(tmp_path: Path) -> None:
    default = LoadRun("http://x", LoadSettings(users=1, ws_users=1), tmp_path / "a").environment()
    assert (default["ROLLING_SANDBOX_WS_PATH"], default["ROLLING_SANDBOX_SSE_PATH"]) == ("/ws", "/events")
    env = LoadRun("http://x", LoadSettings(users=1, ws_users=1, sse_users=1, ws_path="/live/socket",
                                           sse_path="/feed?x=1"), tmp_path / "b").environment()
    assert (env["ROLLING_SANDBOX_WS_PATH"], env["ROLLING_SANDBOX_SSE_PATH"]) == ("/live/socket", "/feed?x=1")


# -- the check against a real HTTP server -------------------------------------------------------------
async def _socket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close()
    return ws


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: 1\n\n")
    return resp


async def _page(request: web.Request) -> web.StreamResponse:
    return web.Response(text="hello")


@pytest_asyncio.fixture
async def app_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/socket", _socket)
    app.router.add_get("/feed", _stream)
    app.router.add_get("/page", _page)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


@pytest.mark.asyncio
async def test_paths_that_upgrade_and_stream_pass(app_url: str) -> None:
    assert await long_lived_problem(app_url, ws_path="/socket", sse_path="/feed") is None
    assert await long_lived_problem(app_url) is None  # nothing asked, nothing tried


@pytest.mark.parametrize(("kw", "line"), [
    ({"ws_path": "/page"}, "--ws-path /page: {url}/page answered 200 to a WebSocket upgrade, not 101"),
    ({"ws_path": "/nowhere"}, "--ws-path /nowhere: {url}/nowhere answered 404 to a WebSocket upgrade, not 101"),
    ({"sse_path": "/page"}, "--sse-path /page: {url}/page answered 200 text/plain; charset=utf-8, "
                            "not 200 text/event-stream"),
    ({"sse_path": "/socket"}, "--sse-path /socket: {url}/socket answered 400"),
    ({"ws_path": "/socket", "sse_path": "/nowhere"}, "--sse-path /nowhere: {url}/nowhere answered 404"),
])
@pytest.mark.asyncio
async def test_a_path_that_does_not_upgrade_or_stream_is_named_in_one_line(app_url: str, kw: dict[str, str],
                                                                            line: str) -> None:
    problem = await long_lived_problem(app_url, **kw)
    assert problem is not None and problem.startswith(line.format(url=app_url)), problem
    assert "\n" not in problem


@pytest.mark.asyncio
async def test_nothing_listening_is_named_too(unused_tcp_port: int) -> None:
    problem = await long_lived_problem(f"http://127.0.0.1:{unused_tcp_port}", ws_path="/ws", timeout_s=2)
    assert problem is not None and problem.startswith("--ws-path /ws: no WebSocket at "), problem


# -- the rehearsal asks before anything changes ----------------------------------------------------------
def _settings(**kw: Any) -> Settings:
    return Settings(project="p", size=3, settle_s=0, ready_timeout=0.05, drain_timeout=1, warmup_s=0.01,
                    cooldown_s=0.01, **kw)


@pytest.mark.asyncio
async def test_a_refused_path_stops_the_roll_before_any_change() -> None:
    world = World(3)
    asked: list[tuple[str, dict[str, Any]]] = []

    async def refuse(url: str, **kw: Any) -> str | None:
        asked.append((url, kw))
        return "--ws-path /nope: http://lb/nope answered 404 to a WebSocket upgrade, not 101"
    world.deps = replace(world.deps, long_lived_check=refuse)
    before = list(world.runtime.log)
    with pytest.raises(UsageError, match=r"^--ws-path /nope: .* not 101$"):
        await world.rehearse(_settings(ws_users=2, ws_path="/nope"))
    assert asked == [(world.balancer.url, {"ws_path": "/nope", "sse_path": None})]
    assert world.runtime.log == before and world.loads == [] and world.balancer.applied == []


@pytest.mark.asyncio
async def test_only_the_kinds_that_run_are_checked_and_none_without_long_lived_users() -> None:
    asked: list[dict[str, Any]] = []

    async def accept(url: str, **kw: Any) -> str | None:
        asked.append(kw)
        return None
    world = World(3)
    world.deps = replace(world.deps, long_lived_check=accept)
    result = await world.rehearse(_settings(sse_users=1, sse_path="/feed"))
    assert result.rehearsed and asked == [{"ws_path": None, "sse_path": "/feed"}]
    world = World(3)
    world.deps = replace(world.deps, long_lived_check=accept)
    await world.rehearse(_settings())
    assert len(asked) == 1

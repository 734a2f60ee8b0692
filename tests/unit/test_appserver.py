"""The app harness's HTTP service, run in-process against both version modules."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from sandbox.appserver.server import RedisSessions, Settings, Shop
from sandbox.appserver.supervisor import child_env, exit_code
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]

MakeClient = Callable[..., Awaitable[tuple[TestClient, Shop]]]


def load_version(version: str) -> ModuleType:
    """The version module app_<version>/app.py, imported by path."""
    path = REPO / f"app_{version}" / "app.py"
    spec = importlib.util.spec_from_file_location(f"toy_app_{version}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Factory: a TestClient on a fresh Shop for (version, settings)."""
    clients: list[TestClient] = []

    async def make(version: str = "v1", **settings: object) -> tuple[TestClient, Shop]:
        shop = Shop(Settings(**settings), load_version(version), instance="test-host/abc123")
        client = TestClient(TestServer(shop.make_app()))
        await client.start_server()
        clients.append(client)
        return client, shop

    yield make
    for client in clients:
        await client.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.asyncio
async def test_headers_on_every_response(make_client: MakeClient) -> None:
    client, _ = await make_client("v1")
    for path in ("/", "/api/items/1", "/healthz", "/metrics", "/nope", "/api/items/x"):
        resp = await client.get(path, headers={"X-Request-ID": "req-42"})
        assert resp.headers["X-App-Version"] == "v1", path
        assert resp.headers["X-Instance"] == "test-host/abc123", path
        assert resp.headers["X-Request-ID"] == "req-42", path
    resp = await client.get("/")
    assert "X-Request-ID" not in resp.headers
    assert await resp.json() == {"service": "toy-shop", "version": "v1"}


@pytest.mark.asyncio
async def test_boot_nonce_differs_per_process_start() -> None:
    settings = Settings()
    a, b = Shop(settings, load_version("v1")), Shop(settings, load_version("v1"))
    assert a.instance != b.instance
    host, nonce = a.instance.rsplit("/", 1)
    assert host and len(nonce) == 6 and int(nonce, 16) >= 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("version", "breaking", "expected"),
    [
        ("v1", False, {"id": 7, "name": "item-7", "price": 107}),
        ("v1", True, {"id": 7, "name": "item-7", "price": 107}),
        ("v2", False, {"id": 7, "name": "item-7", "price": 107, "currency": "EUR"}),
        ("v2", True, {"id": 7, "title": "item-7", "price": 107, "currency": "EUR"}),
    ],
)
async def test_items_per_version(
    make_client: MakeClient, version: str, breaking: bool, expected: dict[str, object]
) -> None:
    client, _ = await make_client(version, breaking=breaking)
    resp = await client.get("/api/items/7")
    assert resp.status == 200
    assert resp.headers["X-App-Version"] == version
    assert await resp.json() == expected


@pytest.mark.asyncio
async def test_non_integer_item_is_json_404(make_client: MakeClient) -> None:
    client, _ = await make_client()
    resp = await client.get("/api/items/abc")
    assert resp.status == 404
    assert (await resp.json())["status"] == 404


@pytest.mark.asyncio
async def test_session_new_then_resumed_and_client_sid_reused(make_client: MakeClient) -> None:
    client, shop = await make_client()
    first = await client.get("/")
    assert first.headers["X-Session-State"] == "new"
    sid = first.cookies["sid"].value
    second = await client.get("/api/items/1")  # the client's cookie jar sends sid back
    assert second.headers["X-Session-State"] == "resumed"
    assert "sid" not in second.cookies
    # an unknown sid (e.g. a session from a replaced server) starts anew under the same id
    client.session.cookie_jar.clear()
    third = await client.get("/", headers={"Cookie": "sid=from-old-server"})
    assert third.headers["X-Session-State"] == "new"
    assert third.cookies["sid"].value == "from-old-server"
    assert set(shop.store.carts) == {sid, "from-old-server"}
    # health and metrics neither create nor need sessions
    client.session.cookie_jar.clear()
    health = await client.get("/healthz")
    assert "X-Session-State" not in health.headers
    assert len(shop.store.carts) == 2


@pytest.mark.asyncio
async def test_cart(make_client: MakeClient) -> None:
    client, _ = await make_client("v2")
    assert await (await client.get("/api/cart")).json() == {"items": [], "count": 0}
    await client.post("/api/cart", json={"item": 3})
    resp = await client.post("/api/cart", json={"item": 5})
    assert await resp.json() == {"items": [3, 5], "count": 2}
    assert await (await client.get("/api/cart")).json() == {"items": [3, 5], "count": 2}
    bad = await client.post("/api/cart", json={"item": "x"})
    assert bad.status == 400
    bad = await client.post("/api/cart", data=b"not json")
    assert bad.status == 400


@pytest.mark.asyncio
async def test_healthz_starting_then_ready_then_stopping(make_client: MakeClient) -> None:
    client, shop = await make_client("v2", startup_delay=0.3)
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "starting"}
    assert metric(await (await client.get("/metrics")).text(), "app_ready") == 0
    await asyncio.sleep(0.35)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "version": "v2"}
    assert metric(await (await client.get("/metrics")).text(), "app_ready") == 1
    shop.begin_stop()
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "stopping"}
    assert resp.headers.get("Connection", "").lower() == "close"


@pytest.mark.asyncio
async def test_metrics_count_only_root_and_api(make_client: MakeClient) -> None:
    client, _ = await make_client()
    for path in ("/", "/api/items/1", "/api/items/nope", "/healthz", "/healthz", "/metrics"):
        await client.get(path)
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert metric(text, "app_requests_total") == 3
    assert metric(text, "app_requests_in_flight") == 0
    assert 'app_info{version="v1"} 1' in text
    assert 'app_responses_total{code="200"} 2' in text
    assert 'app_responses_total{code="404"} 1' in text
    again = await (await client.get("/metrics")).text()
    assert metric(again, "app_requests_total") == 3


@pytest.mark.asyncio
async def test_in_flight_gauge_and_drain(make_client: MakeClient) -> None:
    client, shop = await make_client(latency_ms=300)
    slow = asyncio.create_task(client.get("/api/items/1"))
    deadline = time.monotonic() + 2
    seen = 0.0
    while time.monotonic() < deadline and not seen:
        seen = metric(await (await client.get("/metrics")).text(), "app_requests_in_flight")
        await asyncio.sleep(0.02)
    assert seen == 1
    assert not await shop.wait_idle(0.01)
    assert await shop.wait_idle(2)
    resp = await slow
    assert resp.status == 200
    assert metric(await (await client.get("/metrics")).text(), "app_requests_in_flight") == 0


@pytest.mark.asyncio
async def test_error_ratio_one_gives_500s_for_api_only(make_client: MakeClient) -> None:
    client, _ = await make_client(error_ratio=1.0)
    for _ in range(5):
        resp = await client.get("/api/items/1")
        assert resp.status == 500
        assert resp.headers["X-App-Version"] == "v1"
    assert (await client.get("/")).status == 200
    assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'app_responses_total{code="500"} 5' in text


def test_settings_from_env() -> None:
    env = {
        "APP_PORT": "8100",
        "APP_LATENCY_MS": "25",
        "APP_STARTUP_DELAY": "2",
        "APP_BOOT_FAIL": "1",
        "APP_ERROR_RATIO": "0.25",
        "APP_BREAKING": "1",
        "APP_STOP_DELAY": "0",
        "APP_SHUTDOWN_GRACE": "3",
    }
    s = Settings.from_env(env)
    assert (s.port, s.latency_ms, s.startup_delay, s.error_ratio) == (8100, 25, 2, 0.25)
    assert s.boot_fail and s.breaking and s.stop_delay == 0 and s.shutdown_grace == 3
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="APP_ERROR_RATIO"):
        Settings.from_env({"APP_ERROR_RATIO": "2"})
    with pytest.raises(ValueError, match="APP_LATENCY_MS"):
        Settings.from_env({"APP_LATENCY_MS": "fast"})


def test_fault_switches_from_env() -> None:
    s = Settings.from_env({"APP_STOP_MODE": "exit-now", "APP_READY_EARLY_S": "4", "APP_KEEPALIVE_TIMEOUT": "0.5",
                           "APP_LONG_LIVED_CUT": "1"})
    assert (s.stop_mode, s.ready_early_s, s.keepalive_timeout, s.long_lived_cut) == ("exit-now", 4, 0.5, True)
    assert Settings.from_env({"APP_STOP_MODE": "ignore"}).stop_mode == "ignore"
    assert (Settings().stop_mode, Settings().keepalive_timeout, Settings().long_lived_cut) == ("graceful", 75, False)
    for name, bad in (("APP_STOP_MODE", "never"), ("APP_READY_EARLY_S", "-1"), ("APP_KEEPALIVE_TIMEOUT", "soon")):
        with pytest.raises(ValueError, match=f"^{name}=") as caught:
            Settings.from_env({name: bad})
        assert "\n" not in str(caught.value)


@pytest.mark.asyncio
async def test_ready_early_answers_503_on_real_routes_while_health_passes(make_client: MakeClient) -> None:
    client, shop = await make_client(ready_early_s=3600)
    assert (await client.get("/healthz")).status == 200
    for path in ("/", "/api/items/1", "/api/cart"):
        resp = await client.get(path)
        assert resp.status == 503, path
        assert "APP_READY_EARLY_S" in (await resp.json())["error"]
    assert shop.responses == {503: 3}
    client, _ = await make_client(ready_early_s=0)
    assert (await client.get("/api/items/1")).status == 200


@pytest.mark.asyncio
async def test_slow_path_is_slow_alone_and_counted_in_flight(make_client: MakeClient) -> None:
    client, shop = await make_client()
    slow = asyncio.create_task(client.get("/api/slow", params={"ms": "400"}))
    while not shop.in_flight:
        await asyncio.sleep(0.01)
    assert (await client.get("/api/items/1")).status == 200  # the other paths answer meanwhile
    assert shop.in_flight == 1
    resp = await slow
    assert await resp.json() == {"slept_ms": 400, "version": "v1"}
    for bad in ("x", "-5", str(10**9)):
        assert (await client.get("/api/slow", params={"ms": bad})).status == 400, bad


async def _sse_events(client: TestClient, shop: Shop) -> tuple[list[str], bool]:
    """Open /events, read its first event, begin the stop; the events read, and whether the
    stream ended cleanly (its end came, not a broken connection)."""
    resp = await client.get("/events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert metric(await (await client.get("/metrics")).text(), "app_long_lived_open") == 1
    first = await resp.content.readuntil(b"\n\n")
    shop.begin_stop()
    try:
        rest = await resp.content.read()
    except aiohttp.ClientPayloadError:
        return [first.decode()], False
    return [first.decode(), *rest.decode().split("\n\n")[:-1]], True


@pytest.mark.asyncio
async def test_sse_ticks_then_ends_cleanly_on_a_stop(make_client: MakeClient) -> None:
    client, shop = await make_client("v2")
    events, clean = await _sse_events(client, shop)
    assert events[0].startswith("id: 1\nevent: tick\ndata: ")
    assert json.loads(events[0].split("data: ", 1)[1])["version"] == "v2"
    assert clean and events[-1] == "event: bye\nretry: 1000\ndata: stopping"
    assert await shop.wait_idle(2)


@pytest.mark.asyncio
async def test_sse_is_cut_on_a_stop_with_long_lived_cut(make_client: MakeClient) -> None:
    client, shop = await make_client(long_lived_cut=True)
    events, clean = await _sse_events(client, shop)
    assert not clean and len(events) == 1
    assert await shop.wait_idle(2)


@pytest.mark.asyncio
@pytest.mark.parametrize(("cut", "close_code"), [(False, 1001), (True, 1006)])
async def test_websocket_echoes_ticks_and_closes_on_a_stop(make_client: MakeClient, cut: bool,
                                                            close_code: int) -> None:
    client, shop = await make_client(long_lived_cut=cut)
    ws = await client.ws_connect("/ws")
    await ws.send_str("hello")
    got = [await ws.receive_str() for _ in range(2)]  # the echo and the first tick, in either order
    assert "hello" in got
    assert json.loads(next(m for m in got if m != "hello"))["tick"] == 1
    shop.begin_stop()
    while (msg := await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                   aiohttp.WSMsgType.ERROR):
        assert msg.type == aiohttp.WSMsgType.TEXT  # ticks sent before the stop
    await ws.close()
    assert ws.close_code == close_code
    assert await shop.wait_idle(2)


def test_supervisor_env_merge_and_exit_codes(tmp_path: Path) -> None:
    assert child_env(tmp_path, {"A": "1"}) == {"A": "1"}
    (tmp_path / "env.json").write_text(json.dumps({"APP_BREAKING": "1", "A": 2}))
    assert child_env(tmp_path, {"A": "1"}) == {"A": "2", "APP_BREAKING": "1"}
    (tmp_path / "env.json").write_text("[1]")
    assert child_env(tmp_path, {"A": "1"}) == {"A": "1"}
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


def _start_supervisor(app_dir: Path, port: int, *, log: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
    """The supervisor in a session of its own (``os.killpg`` ends what it started), its stderr
    to ``log`` if given, else to a pipe."""
    full_env = {
        **os.environ,
        "APP_DIR": str(app_dir),
        "APP_PORT": str(port),
        "APP_STOP_DELAY": "0",
        "PYTHONPATH": f"{REPO / 'sandbox'}{os.pathsep}{app_dir}",
        **env,
    }
    with log.open("wb") if log is not None else contextlib.nullcontext(subprocess.PIPE) as err:
        return subprocess.Popen(
            [sys.executable, "-m", "appserver.supervisor"],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def _copy_app(app_dir: Path) -> None:
    app_dir.mkdir(exist_ok=True)
    for name in ("app.py", "VERSION"):
        (app_dir / name).write_bytes((REPO / "app_v1" / name).read_bytes())


def test_supervisor_exits_with_child_boot_failure(tmp_path: Path) -> None:
    _copy_app(tmp_path)
    proc = _start_supervisor(tmp_path, 1, APP_BOOT_FAIL="1")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3
    assert b"APP_BOOT_FAIL" in err


def _wait_ready(port: int, version: str, timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/items/2", timeout=2) as r:
                if r.headers["X-App-Version"] == version:
                    return dict(json.loads(r.read()))
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {version} answer on port {port} within {timeout}s")


def test_supervisor_reloads_new_code_on_sighup_and_stops_on_sigterm(tmp_path: Path) -> None:
    _copy_app(tmp_path)
    port = free_port()
    proc = _start_supervisor(tmp_path, port)
    try:
        assert _wait_ready(port, "v1") == {"id": 2, "name": "item-2", "price": 102}
        for name in ("app.py", "VERSION"):
            (tmp_path / name).write_bytes((REPO / "app_v2" / name).read_bytes())
        (tmp_path / "env.json").write_text('{"APP_BREAKING": "1"}')
        proc.send_signal(signal.SIGHUP)
        assert _wait_ready(port, "v2") == {
            "id": 2,
            "title": "item-2",
            "price": 102,
            "currency": "EUR",
        }
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert err.count(b"started server pid") == 2
    assert b"appserver: stopped v2" in err and b"exited 0" in err  # logs flushed before the fast exit


async def _fake_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      data: dict[str, object], password: str = "") -> None:
    """AUTH, EXISTS, SET, RPUSH, LRANGE over RESP: what RedisSessions sends, as Redis answers it
    (with ``password``, as ``requirepass`` makes it: NOAUTH for anything before AUTH)."""
    authed = not password
    while True:
        try:
            head = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            await writer.wait_closed()
            return
        args = []
        for _ in range(int(head[1:-2])):
            size = int((await reader.readuntil(b"\r\n"))[1:-2])
            args.append((await reader.readexactly(size + 2))[:-2].decode())
        cmd, key = args[0], (args[1:] or [""])[0]
        if cmd == "AUTH":
            authed = key == password
            writer.write(b"+OK\r\n" if authed else b"-WRONGPASS invalid username-password pair\r\n")
        elif not authed:
            writer.write(b"-NOAUTH Authentication required.\r\n")
        elif cmd == "PING":
            writer.write(b"+PONG\r\n")
        elif cmd == "EXISTS":
            writer.write(f":{int(key in data)}\r\n".encode())
        elif cmd == "SET":
            data[key] = args[2]
            writer.write(b"+OK\r\n")
        elif cmd == "RPUSH":
            items = data.setdefault(key, [])
            assert isinstance(items, list)
            items.append(args[2])
            writer.write(f":{len(items)}\r\n".encode())
        elif cmd == "LRANGE":
            items = data.get(key, [])
            assert isinstance(items, list)
            writer.write((f"*{len(items)}\r\n" + "".join(f"${len(i)}\r\n{i}\r\n" for i in items)).encode())
        await writer.drain()


@pytest.mark.asyncio
async def test_redis_sessions_are_shared_between_two_servers() -> None:
    data: dict[str, object] = {}
    server = await asyncio.start_server(lambda r, w: _fake_redis(r, w, data), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        one, other = RedisSessions(f"127.0.0.1:{port}"), RedisSessions(f"127.0.0.1:{port}")
        assert not await one.exists("u1")
        await one.create("u1")
        await one.add("u1", 7)
        await one.add("u1", 9)
        assert await other.exists("u1")  # the server that replaces it knows the session
        assert await other.items("u1") == [7, 9]
        assert await other.items("nobody") == []
        await one.close()
        await other.close()
        await asyncio.sleep(0.05)  # the fake's handlers see the close and close their side
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_redis_ping_says_whether_the_store_answers() -> None:
    server = await asyncio.start_server(lambda r, w: _fake_redis(r, w, {}), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisSessions(f"127.0.0.1:{port}")
    try:
        assert await store.ping(1.0)
        await store.create("u1")  # the connection still answers in order after a ping
        assert await store.exists("u1")
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
    assert not await RedisSessions(f"127.0.0.1:{port}").ping(1.0)  # nobody listens now


@pytest.mark.asyncio
async def test_a_store_slower_to_connect_than_each_ping_allows_still_becomes_ready() -> None:
    """Each ping gives up after 0.1 s, the store takes 0.25 s to answer AUTH: the connection a
    ping gave up on goes on opening, so a later ping finds it, instead of each one starting over
    (the livelock a busy machine made of readiness: never ready, 30 s, rollout failed)."""
    accepted = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(0.25)
        await _fake_redis(reader, writer, {}, "pw")

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    store = RedisSessions(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", "pw")
    try:
        results = []
        for _ in range(6):
            results.append(await store.ping(0.1))
            if results[-1]:
                break
        assert results[-1] and results.count(False) >= 1, results
        assert accepted == 1  # one connection, opened once
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_redis_sessions_authenticate_with_the_password() -> None:
    data: dict[str, object] = {}
    server = await asyncio.start_server(lambda r, w: _fake_redis(r, w, data, "s3cret"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store, stranger = RedisSessions(f"127.0.0.1:{port}", "s3cret"), RedisSessions(f"127.0.0.1:{port}")
    try:
        await store.create("u1")
        assert await store.exists("u1") and await store.ping(1.0)
        with pytest.raises(OSError, match="NOAUTH"):
            await stranger.exists("u1")
        assert not await stranger.ping(1.0)  # not ready without the password
    finally:
        await store.close()
        await stranger.close()
        server.close()
        await server.wait_closed()


def test_the_password_comes_from_the_environment() -> None:
    settings = Settings.from_env({"APP_REDIS": "r:6379", "APP_REDIS_PASSWORD": "pw"})
    assert (settings.redis, settings.redis_password) == ("r:6379", "pw")
    assert Settings.from_env({}).redis_password == ""


@pytest.mark.asyncio
async def test_healthz_not_ready_without_its_session_store(make_client: MakeClient) -> None:
    client, _ = await make_client(redis=f"127.0.0.1:{free_port()}")  # nobody listens there
    resp = await client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "no-session-store" and "127.0.0.1:" in body["error"], body  # and why


def _wait_log(log: Path, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in log.read_bytes():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log} within {timeout}s: {log.read_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def _supervised(app_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A serving supervisor (process, port, log); whatever it started is killed at the end."""
    _copy_app(app_dir)
    port, log = free_port(), app_dir / "stderr.log"
    proc = _start_supervisor(app_dir, port, log=log, **env)
    try:
        _wait_ready(port, "v1")
        yield proc, port, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return int(r.status)


def test_exit_now_cuts_what_is_in_flight_and_exits_143(tmp_path: Path) -> None:
    with _supervised(tmp_path, APP_STOP_MODE="exit-now") as (proc, port, log), \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_get, port, "/api/slow?ms=20000")
        _wait_metric(port, "app_requests_in_flight", 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
            slow.result(timeout=20)
        assert b"exiting at once on SIGTERM (APP_STOP_MODE=exit-now): 1 in flight" in log.read_bytes()
        with pytest.raises(urllib.error.URLError):
            _get(port, "/healthz")  # the listener went with it


def _wait_metric(port: int, name: str, value: float, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            if metric(r.read().decode(), name) == value:
                return
        time.sleep(0.05)
    raise AssertionError(f"{name} never {value} within {timeout}s")


def test_ignore_keeps_serving_after_sigterm(tmp_path: Path) -> None:
    with _supervised(tmp_path, APP_STOP_MODE="ignore") as (proc, port, log):
        proc.send_signal(signal.SIGTERM)
        _wait_log(log, "SIGTERM ignored (APP_STOP_MODE=ignore)")  # the supervisor forwarded it
        assert _get(port, "/api/items/1") == 200
        assert _get(port, "/healthz") == 200  # not even "stopping"
        assert proc.poll() is None


def test_shell_pid1_keeps_sigterm_from_the_app(tmp_path: Path) -> None:
    with _supervised(tmp_path, APP_SHELL_PID1="1") as (proc, port, log):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [b"/bin/sh", b"-c"] and b"-m appserver.supervisor; exit $?" in cmdline[2]
        proc.send_signal(signal.SIGTERM)  # here the shell is not PID 1, so it dies of it, forwarding nothing
        assert proc.wait(timeout=20) == -signal.SIGTERM
        assert _get(port, "/api/items/1") == 200  # the app never heard of it
        assert b"stopping" not in log.read_bytes()


def _idle_connection_closed(port: int, wait_s: float) -> bool:
    """One keep-alive request on a raw socket; whether the server closes it within ``wait_s`` idle."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            got += sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False


def test_keepalive_timeout_closes_idle_connections(tmp_path: Path) -> None:
    with _supervised(tmp_path / "short", APP_KEEPALIVE_TIMEOUT="0.2") as (_, port, _log):
        assert _idle_connection_closed(port, wait_s=10)
    with _supervised(tmp_path / "long", APP_KEEPALIVE_TIMEOUT="30") as (_, port, _log):
        assert not _idle_connection_closed(port, wait_s=1)

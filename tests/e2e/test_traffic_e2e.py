"""End-to-end tests of sandbox.load.run: real Locust in a subprocess against a
tiny aiohttp app in this process (127.0.0.1 only, a few seconds per run).

The app mimics the toy shop: X-App-Version is v1 for the first second after
its first request and v2 after, X-Instance / X-Session-State / a ``sid`` cookie,
items, a cart, a home page. Some requests hang (``/api/items/13`` and a few
fixed request numbers) until the test releases them, so that the load stops
while they wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import pytest_asyncio
from aiohttp import web

from sandbox.load.run import LoadRun, LoadSettings, TrafficError, group_members
from sandbox.results.records import RequestRow, is_load_rid
from tests.conftest import free_port
from tests.e2e.conftest import REPO, Cli, assert_passes

pytestmark = [pytest.mark.e2e]

ROW_KEYS = set(get_type_hints(RequestRow))
HANG_AT = {25, 60, 90}  # request numbers that hang (besides /api/items/13)
SID = web.RequestKey("sid", str)
VERSION = web.RequestKey("version", str)


@dataclass
class FakeApp:
    url: str
    release: asyncio.Event
    count: int = 0
    first: float | None = None
    hanging: int = 0
    hang: bool = True  # False: a healthy app, every request answered at once
    breaking: bool = False  # v2 items rename "name" to "title"
    rids: list[str] = field(default_factory=list)




@pytest_asyncio.fixture
async def fake_app() -> AsyncIterator[FakeApp]:
    release = asyncio.Event()
    state = FakeApp(url="", release=release)
    carts: dict[str, list[int]] = {}

    @web.middleware
    async def headers(request: web.Request, handler):  # type: ignore[no-untyped-def]
        state.count += 1
        n = state.count
        now = time.monotonic()
        if state.first is None:
            state.first = now
        state.rids.append(request.headers.get("X-Request-ID", ""))
        version = "v1" if now - state.first < 1.0 else "v2"
        request[VERSION] = version
        if state.hang and (n in HANG_AT or request.path == "/api/items/13"):
            state.hanging += 1
            try:
                await asyncio.wait_for(release.wait(), 30)
            finally:
                state.hanging -= 1
            return web.Response(status=503, text="released at teardown")
        sid = request.cookies.get("sid")
        session = "resumed" if sid in carts else "new"
        if sid not in carts:
            sid = uuid.uuid4().hex
            carts[sid] = []
        request[SID] = sid
        resp = await handler(request)
        resp.headers["X-App-Version"] = version
        resp.headers["X-Instance"] = "fake-1/boot0"
        resp.headers["X-Session-State"] = session
        resp.set_cookie("sid", sid)
        return resp

    async def item(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if request[VERSION] == "v2":
            key = "title" if state.breaking else "name"
            return web.json_response({"id": n, key: f"item {n}", "price": n, "currency": "EUR"})
        return web.json_response({"id": n, "name": f"item {n}", "price": n * 1.5})

    async def cart_get(request: web.Request) -> web.Response:
        return web.json_response({"items": carts[request[SID]]})

    async def cart_post(request: web.Request) -> web.Response:
        body = await request.json()
        carts[request[SID]].append(int(body["item"]))
        return web.json_response({"items": carts[request[SID]]})

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="shop")

    app = web.Application(middlewares=[headers])
    app.router.add_get("/api/items/{n:\\d+}", item)
    app.router.add_get("/api/cart", cart_get)
    app.router.add_post("/api/cart", cart_post)
    app.router.add_get("/", home)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        release.set()
        await runner.cleanup()


def _no_locust_here() -> None:
    loaded = [m for m in sys.modules if m.split(".")[0] in ("locust", "gevent")]
    assert loaded == [], loaded


@pytest.mark.asyncio
async def test_live_traffic_rows(fake_app: FakeApp, tmp_path: Path) -> None:
    rows_path = tmp_path / "rows.jsonl"
    settings = LoadSettings(users=5, spawn_rate=50, timeout_s=20, stop_timeout_s=1)
    run = LoadRun(fake_app.url, settings, rows_path)
    seen: list[RequestRow] = []
    async with run:
        assert run.running
        for _ in range(6):
            await asyncio.sleep(0.5)
            seen.extend(run.new_rows())
        assert fake_app.hanging > 0, "no request is waiting when the load stops"
        t_stop = time.time()
    await run.stop()  # idempotent
    await run.stop(grace_s=0.1)
    assert not run.running
    assert run.returncode in (0, 1)
    seen.extend(run.new_rows())
    assert run.new_rows() == []

    rows = run.all_rows()
    assert len(rows) > 20
    for row in rows:
        assert set(row) == ROW_KEYS, row
    # new_rows() gave each row exactly once, across calls
    assert sorted(r["rid"] for r in seen) == sorted(r["rid"] for r in rows)
    rids = [r["rid"] for r in rows]
    assert len(set(rids)) == len(rids)
    assert all(is_load_rid(r) for r in rids)  # "ls-" and 32 hex digits: NGINX logs it, the report cross-checks
    # every request the app received was recorded, with the rid it carried
    assert set(fake_app.rids) <= set(rids)

    answered = [r for r in rows if not r["unanswered"]]
    assert {r["version"] for r in answered} == {"v1", "v2"}
    assert all(r["status"] == 200 and r["error"] is None for r in answered)
    assert all(r["t_end"] is not None and r["latency_ms"] is not None for r in answered)
    assert {r["instance"] for r in answered} == {"fake-1/boot0"}
    assert {r["session"] for r in answered} == {"new", "resumed"}
    assert {r["name"] for r in rows} <= {"/api/items/[id]", "/api/cart", "/"}
    assert {r["method"] for r in rows} == {"GET", "POST"}
    users = {r["user"] for r in rows}
    assert len(users) == 5 and all(u.startswith("u") for u in users)
    # cookies are kept: each user is "new" once (its first answer) and then resumed
    for u in users:
        mine = sorted((r for r in answered if r["user"] == u), key=lambda r: r["t"])
        assert [r["session"] for r in mine].count("new") <= 1
    items = [r for r in answered if r["name"] == "/api/items/[id]"]
    assert items and all(r["contract"] == "ok" for r in items)  # compatible mode
    assert all(r["contract"] is None for r in answered if r["name"] != "/api/items/[id]")

    unanswered = [r for r in rows if r["unanswered"]]
    assert unanswered
    for r in unanswered:
        assert r["status"] == 0 and r["t_end"] is None and r["latency_ms"] is None
        assert r["error"] == "unanswered at stop"
        assert r["t"] < t_stop + 0.5  # sent before Locust handled the SIGTERM
    # a user waits on at most one request at a time
    assert len({r["user"] for r in unanswered}) == len(unanswered)
    _no_locust_here()


@pytest.mark.asyncio
async def test_stopping_a_healthy_load_drops_nothing(
    fake_app: FakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No think time: at any instant most users are waiting for an answer, and
    # stop must let them have it instead of calling them unanswered.
    fake_app.hang = False
    monkeypatch.setenv("ROLLING_SANDBOX_WAIT_MIN", "0")
    monkeypatch.setenv("ROLLING_SANDBOX_WAIT_MAX", "0")
    settings = LoadSettings(users=20, spawn_rate=100, stop_timeout_s=2)
    run = LoadRun(fake_app.url, settings, tmp_path / "rows.jsonl")
    async with run:
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3.0
    rows = run.all_rows()
    assert len(rows) > 100
    assert [r for r in rows if r["status"] != 200] == []
    assert len({r["rid"] for r in rows}) == len(rows) == fake_app.count
    _no_locust_here()


@pytest.mark.asyncio
async def test_breaking_v2_gives_contract_violations(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    fake_app.breaking = True
    settings = LoadSettings(users=10, spawn_rate=50, v2_mode="breaking")
    run = LoadRun(fake_app.url, settings, tmp_path / "rows.jsonl")
    async with run:
        await asyncio.sleep(2.0)
    items = [r for r in run.all_rows() if r["name"] == "/api/items/[id]" and r["status"] == 200]
    assert {r["version"] for r in items} == {"v1", "v2"}
    by_user: dict[str, list[RequestRow]] = {}
    for r in sorted(run.all_rows(), key=lambda r: r["t"]):
        if r["status"] == 200:
            by_user.setdefault(r["user"], []).append(r)
    for rows in by_user.values():
        seen_v2 = False
        for r in rows:
            if r["name"] == "/api/items/[id]":
                # the app switches to v2 once and for all: no downgrade here, so a
                # violation is exactly a v2 item to a user who had not seen v2 yet
                want = "violation" if r["version"] == "v2" and not seen_v2 else "ok"
                assert r["contract"] == want, r
            seen_v2 = seen_v2 or r["version"] == "v2"
    assert any(r["contract"] == "violation" for r in items)
    _no_locust_here()


CUSTOM_LOCUSTFILE = """
from locust import constant, task
from sandbox.load.locustfile import *  # noqa: F403  (RecordedHttpUser and the stop hooks)


class Visitor(RecordedHttpUser):  # noqa: F405
    wait_time = constant(0.05)

    @task
    def visit(self):
        self.client.get("/api/cart")
        self.client.get("/", headers={"X-Request-ID": "mine-" + self.sandbox_id})
"""


@pytest.mark.asyncio
async def test_custom_locustfile_gets_rows(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    custom = tmp_path / "my_locustfile.py"
    custom.write_text(CUSTOM_LOCUSTFILE)
    run = LoadRun(fake_app.url, LoadSettings(users=2, locustfile=custom), tmp_path / "rows.jsonl")
    async with run:
        await asyncio.sleep(1.0)
    rows = run.all_rows()
    assert {r["name"] for r in rows} == {"/api/cart", "/"}  # no ShopUser came along
    assert all(set(r) == ROW_KEYS and r["status"] == 200 for r in rows)
    assert {r["rid"] for r in rows if r["name"] == "/"} == {"mine-u1", "mine-u2"}
    assert len(rows) == fake_app.count
    _no_locust_here()


@pytest.mark.asyncio
async def test_missing_locustfile_fails_fast(tmp_path: Path) -> None:
    settings = LoadSettings(users=1, locustfile=tmp_path / "nope.py")
    run = LoadRun("http://127.0.0.1:9", settings, tmp_path / "rows.jsonl")
    t0 = time.monotonic()
    with pytest.raises(TrafficError, match=r"nope\.py"):
        await run.start()
    assert time.monotonic() - t0 < 1.0
    assert not run.running
    await run.stop()


@pytest.mark.asyncio
async def test_broken_locustfile_reports_last_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise RuntimeError('boom from the locustfile')\n")
    run = LoadRun(
        "http://127.0.0.1:9", LoadSettings(users=1, locustfile=broken), tmp_path / "r.jsonl"
    )
    with pytest.raises(TrafficError, match="boom from the locustfile"):
        await run.start()
    assert not run.running
    _no_locust_here()


@pytest.mark.asyncio
async def test_server_not_listening_gives_status_0_rows(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = LoadRun(url, LoadSettings(users=3, spawn_rate=50, timeout_s=2), tmp_path / "rows.jsonl")
    async with run:
        await asyncio.sleep(1.0)
    rows = run.all_rows()
    assert rows
    for r in rows:
        assert r["status"] == 0
        assert r["error"], r
        assert r["version"] is None and r["contract"] is None
    assert {r["error"] for r in rows if not r["unanswered"]} == {"ConnectionRefusedError"}
    _no_locust_here()


# --------------------------------------------------------------------------- any user class, several workers

PLAIN_HTTPUSER_LOCUSTFILE = """
from locust import HttpUser, constant, task


class Plain(HttpUser):
    wait_time = constant(0.02)

    @task
    def visit(self):
        self.client.get("/api/cart")
        with self.client.get("/", catch_response=True) as r:
            r.failure("the page says shop, I wanted a shop with items")
"""

FAST_HTTPUSER_LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Fast(FastHttpUser):
    wait_time = constant(0.02)

    @task
    def visit(self):
        self.client.get("/api/items/7")
        self.client.get("/nope")
"""

# A client of the user's own: it fires Locust's request event itself.
OWN_CLIENT_LOCUSTFILE = """
import time
import urllib.request
from types import SimpleNamespace

from locust import User, constant, task


class Own(User):
    wait_time = constant(0.05)

    @task
    def visit(self):
        t0 = time.time()
        with urllib.request.urlopen(self.host + "/api/cart", timeout=5) as resp:
            body = resp.read()
            answer = SimpleNamespace(status_code=resp.status, headers=dict(resp.headers))
        self.environment.events.request.fire(
            request_type="GET", name="own", response_time=(time.time() - t0) * 1000,
            response_length=len(body), response=answer, context={}, exception=None, start_time=t0)
"""

# Users wait on requests that hang, and Locust wedges while stopping.
WEDGED_LOCUSTFILE = """
import time

from locust import HttpUser, constant, events, task


class Waiter(HttpUser):
    wait_time = constant(0.05)

    @task
    def hang(self):
        self.client.get("/api/items/13")


@events.test_stopping.add_listener
def wedge(**_kwargs):
    time.sleep(60)
"""


def _check_once_each(rows: list[RequestRow], app: FakeApp) -> None:
    """Every request the app received has exactly one row, carrying its rid."""
    rids = [r["rid"] for r in rows]
    assert len(set(rids)) == len(rids), "a request was recorded twice"
    assert sorted(app.rids) == sorted(r["rid"] for r in rows if r["rid"] in set(app.rids))
    assert set(app.rids) <= set(rids)


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_plain_httpuser_records(fake_app: FakeApp, tmp_path: Path, workers: int) -> None:
    fake_app.hang = False
    custom = tmp_path / "plain.py"
    custom.write_text(PLAIN_HTTPUSER_LOCUSTFILE)
    run = LoadRun(fake_app.url, LoadSettings(users=4, locustfile=custom, workers=workers), tmp_path / "r.jsonl")
    async with run:
        await asyncio.sleep(2.0)
    rows = run.all_rows()
    assert len(rows) > 20
    _check_once_each(rows, fake_app)
    assert all(set(r) == ROW_KEYS and is_load_rid(r["rid"]) for r in rows)
    assert {r["name"] for r in rows} == {"/api/cart", "/"}
    answered = [r for r in rows if not r["unanswered"]]
    assert {r["version"] for r in answered} == {"v1", "v2"}  # from X-App-Version
    # marked failed by the locustfile although answered 200: a contract violation
    assert {r["contract"] for r in answered if r["name"] == "/"} == {"violation"}
    assert {r["contract"] for r in answered if r["name"] == "/api/cart"} == {None}
    users = {r["user"] for r in rows}
    assert len(users) == 4
    if workers == 2:
        assert {u.split("-")[0] for u in users} == {"w0", "w1"}
    assert run.end is not None and not run.end.died_early and not run.end.killed
    _no_locust_here()


@pytest.mark.asyncio
async def test_fast_httpuser_records(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    custom = tmp_path / "fast.py"
    custom.write_text(FAST_HTTPUSER_LOCUSTFILE)
    run = LoadRun(fake_app.url, LoadSettings(users=3, locustfile=custom, workers=2), tmp_path / "r.jsonl")
    async with run:
        await asyncio.sleep(2.0)
    rows = run.all_rows()
    assert len(rows) > 20
    _check_once_each(rows, fake_app)
    answered = [r for r in rows if not r["unanswered"]]
    items = [r for r in answered if r["name"] == "/api/items/7"]
    assert items and all(r["status"] == 200 and r["version"] in ("v1", "v2") for r in items)
    assert {r["status"] for r in answered if r["name"] == "/nope"} == {404}
    assert all(r["contract"] is None for r in answered)  # a plain 404 is not a contract violation
    _no_locust_here()


@pytest.mark.asyncio
async def test_own_client_records_from_its_events(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    custom = tmp_path / "own.py"
    custom.write_text(OWN_CLIENT_LOCUSTFILE)
    run = LoadRun(fake_app.url, LoadSettings(users=2, locustfile=custom), tmp_path / "r.jsonl")
    async with run:
        await asyncio.sleep(1.5)
    rows = run.all_rows()
    assert rows and {r["name"] for r in rows} == {"own"}
    assert len(rows) == fake_app.count  # one row per request the app answered
    assert all(r["status"] == 200 and r["version"] in ("v1", "v2") and r["latency_ms"] >= 0 for r in rows)
    assert len({r["user"] for r in rows}) == 2
    _no_locust_here()


@pytest.mark.asyncio
async def test_killed_locust_keeps_finished_rows(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    settings = LoadSettings(users=6, spawn_rate=50, workers=2, think_s=(0.0, 0.01))
    run = LoadRun(fake_app.url, settings, tmp_path / "rows.jsonl")
    await run.start()
    try:
        await asyncio.sleep(2.0)
        assert run.alive()
        assert run.pid is not None
        os.kill(run.pid, signal.SIGKILL)  # the master; its workers notice their parent has gone
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not run.alive():
                break
        assert not run.alive()
    finally:
        await run.stop(grace_s=5)
    end = run.end
    assert end is not None and end.died_early and end.exit_code == -signal.SIGKILL
    assert end.died_at is not None and not end.killed
    rows = run.all_rows()
    assert len(rows) > 50
    _check_once_each(rows, fake_app)  # every request the app saw has its row, none twice
    _no_locust_here()


@pytest.mark.asyncio
async def test_a_dead_worker_is_noticed(fake_app: FakeApp, tmp_path: Path) -> None:
    fake_app.hang = False
    settings = LoadSettings(users=4, spawn_rate=50, workers=2, think_s=(0.0, 0.01))
    run = LoadRun(fake_app.url, settings, tmp_path / "rows.jsonl")
    await run.start()
    try:
        await asyncio.sleep(1.0)
        assert run.alive() and run.pid is not None
        worker = next(pid for pid in group_members(run.pid) if pid != run.pid)
        os.kill(worker, signal.SIGKILL)
        await asyncio.sleep(0.3)
        assert not run.alive()
    finally:
        await run.stop(grace_s=5)
    end = run.end
    assert end is not None and end.died_early and end.died_at is not None and not end.killed
    rows = run.all_rows()
    rids = [r["rid"] for r in rows]
    assert rows and len(set(rids)) == len(rids)
    _no_locust_here()


@pytest.mark.asyncio
async def test_unanswered_rows_are_written_before_any_sigkill(fake_app: FakeApp, tmp_path: Path) -> None:
    # Locust does not stop by itself: the recorder is told to write what is in
    # flight (SIGUSR1) before anything is killed.
    custom = tmp_path / "wedged.py"
    custom.write_text(WEDGED_LOCUSTFILE)
    settings = LoadSettings(users=4, spawn_rate=50, workers=2, locustfile=custom, stop_timeout_s=1, timeout_s=60)
    run = LoadRun(fake_app.url, settings, tmp_path / "rows.jsonl")
    await run.start()
    await asyncio.sleep(1.5)
    assert fake_app.hanging == 4
    await run.stop(grace_s=1)
    end = run.end
    assert end is not None and end.flushed_by_signal and not end.killed and not end.died_early
    rows = run.all_rows()
    _check_once_each(rows, fake_app)
    assert len(rows) == 4
    assert all(r["unanswered"] and r["error"] == "unanswered at stop" for r in rows)
    _no_locust_here()


# --------------------------------------------------------------------------- through a real fleet

FLEET_PLAIN_LOCUSTFILE = """
from locust import HttpUser, constant, task


class Plain(HttpUser):
    wait_time = constant(0.02)

    @task
    def item(self):
        self.client.get("/api/items/3")
"""

FLEET_FAST_LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Fast(FastHttpUser):
    wait_time = constant(0.02)

    @task
    def item(self):
        with self.client.get("/api/items/4", catch_response=True) as r:
            if b"currency" in r.content:
                r.failure("this client cannot read prices with a currency")
"""


def _roll(cli: Cli, report: Path, *args: str,
          failing: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[RequestRow]]:
    data = assert_passes(cli.run("roll", "--warmup", "1", "--cooldown", "1", "--json", "--report", str(report), *args),
                         expected=failing)
    rows = [json.loads(line) for line in (report / "requests.jsonl").read_text().splitlines() if line]
    rids = [r["rid"] for r in rows]
    assert len(set(rids)) == len(rids), "a request was recorded twice"
    assert data["requests"]["total"] == len(rows) > 50
    assert data["requests"]["dropped"] == 0, data["requests"]
    # every row joins the NGINX log line of its request through the rid it sent
    assert data["attribution"]["from_log"] == len(rows)
    ended = data["load_generator"]
    assert not ended["died_early"] and not ended["killed"] and not ended["flushed_by_signal"]
    assert (ended["sent"], ended["written"], data["rows_lost"], data["unrecorded"]) == (len(rows), len(rows), 0, 0)
    return data, rows


@pytest.fixture(scope="module")
def fleet(module_cli: Cli) -> Cli:
    """Two servers shared by the rolls below; each roll leaves them consistent on one version."""
    module_cli.run("up", "--size", "2", "--port", str(module_cli.port), check=True)
    return module_cli


def test_plain_and_fast_locustfiles_through_a_fleet_with_many_workers_and_one(fleet: Cli, tmp_path: Path) -> None:
    """A plain HttpUser spread over the default workers, then a FastHttpUser in one worker; 40 users each."""
    plain = tmp_path / "plain.py"
    plain.write_text(FLEET_PLAIN_LOCUSTFILE)
    data, rows = _roll(fleet, tmp_path / "plain", "--to", "v2", "--locustfile", str(plain), "--users", "40")
    assert data["requests"]["by_version"]["v1"] > 0 and data["requests"]["by_version"]["v2"] > 0
    assert {r["version"] for r in rows} == {"v1", "v2"}  # the app's X-App-Version header
    assert len({r["user"] for r in rows}) == 40
    assert {r["user"].split("-")[0] for r in rows} == {f"w{i}" for i in range(_default_workers())}

    fast = tmp_path / "fast.py"
    fast.write_text(FLEET_FAST_LOCUSTFILE)
    data, rows = _roll(fleet, tmp_path / "fast", "--to", "v1", "--locustfile", str(fast), "--users", "40",
                       "--load-workers", "1",
                       failing=frozenset({"contract_violations"}))  # this locustfile cannot read v2: by design
    assert {r["name"] for r in rows} == {"/api/items/4"}
    # v2 answers carry a currency, which this locustfile marks failed: violations, attributed to v2
    assert {r["version"] for r in rows if r["contract"] == "violation"} == {"v2"}
    assert all(r["contract"] is None for r in rows if r["version"] == "v1")
    assert (tmp_path / "fast" / "report.json").is_file()
    # one worker: user names carry no worker prefix
    assert {r["user"].split("-")[0] for r in rows} == {r["user"] for r in rows} and len({r["user"] for r in rows}) == 40


def _default_workers() -> int:
    from sandbox.config import Settings

    return Settings().load_workers


def test_sigkilled_locust_during_a_roll_keeps_its_rows(fleet: Cli, tmp_path: Path) -> None:
    target = "v2" if fleet.json("status", "--json")["instances"][0]["version"] == "v1" else "v1"
    report = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sandbox", "roll", "--project", fleet.project, "--to", target, "--json",
           "--report", str(report), "--warmup", "4", "--cooldown", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows_path = report / "requests.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not rows_path.exists() or rows_path.stat().st_size < 30_000):
            time.sleep(0.2)
        master = _locust_master(proc.pid)
        before = rows_path.read_bytes()
        before = before[: before.rfind(b"\n") + 1]  # whole lines only
        os.kill(master, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = [json.loads(line) for line in before.splitlines() if line]
    after = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
    assert len(kept) > 50
    assert after[: len(kept)] == kept  # what was written before the kill is all still there
    rids = [r["rid"] for r in after]
    assert len(set(rids)) == len(rids)
    # the verdict says the load died (and, as nothing was sent after, that answers stalled): exit 1
    report_json = assert_passes(subprocess.CompletedProcess(cmd, proc.returncode, out, err),
                                expected=frozenset({"load_alive", "stall_s"}))
    assert report_json["requests"]["total"] == len(after), err
    ended = report_json["load_generator"]
    assert ended["died_early"] and ended["exit_code"] == -signal.SIGKILL and not ended["killed"]


def _locust_master(controller_pid: int) -> int:
    """The pid of the `python -m locust` child of the controller."""
    for _ in range(100):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == controller_pid and b"locust" in cmdline:
                return int(stat.parent.name)
        time.sleep(0.1)
    raise AssertionError("no locust process under the controller")


CALL_SHAPES = """
import sandbox.load.recording as rec
from locust.clients import HttpSession
from locust.contrib.fasthttp import FastHttpSession

for cls in (HttpSession, FastHttpSession):
    sig = rec.inspect.signature(cls.request.__wrapped__)
    c = rec._Call(sig, ("S", "GET", "/a"), {"name": "n", "headers": {"A": "1"}})
    assert (c.head, c.kwargs) == (("S", "GET", "/a"), {"name": "n", "headers": {"A": "1"}})
    c = rec._Call(sig, ("S",), {"method": "POST", "url": "/b"})
    assert (c.text(1), c.text(2), c.kwargs) == ("POST", "/b", {})
    c = rec._Call(sig, ("S", b"GET", b"/c", "label", True), {"context": {"k": 1}})
    assert (c.text(1), c.text(2), c.get("name")) == ("GET", "/c", "label"), c.kwargs
    if cls is HttpSession:
        assert c.get("catch_response") is True and c.get("context") == {"k": 1}
    else:
        assert c.get("data") is True  # FastHttpSession's 5th parameter is data
print("ok")
"""


def test_client_call_shapes() -> None:
    # recording.py imports locust: checked in a child process, never here
    proc = subprocess.run([sys.executable, "-c", CALL_SHAPES], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    _no_locust_here()

"""The dashboard server: /api/state, server-sent events at least twice a second, offline page, read-only."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from sandbox.cli import main
from sandbox.errors import PortInUseError, UsageError
from sandbox.results.model import Report
from sandbox.ui.dashboard import STATIC, Dashboard, LiveView, host_allowed
from sandbox.ui.state import RolloutState
from tests.conftest import free_port
from tests.unit.test_ui_state import PASSED


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def state_of_three() -> RolloutState:
    state = RolloutState()
    state.configure(strategy="one-at-a-time", size=3)
    for n in (1, 2, 3):
        state.seed(f"app-{n}-a", n, "v1", True)
    return state


@pytest_asyncio.fixture
async def board() -> AsyncIterator[Dashboard]:
    dashboard = Dashboard(state_of_three(), free_port())
    await dashboard.start()
    try:
        yield dashboard
    finally:
        await dashboard.close(linger_s=0)


async def read_events(response: aiohttp.ClientResponse, seconds: float) -> list[dict]:
    """The states pushed within ``seconds``."""
    got: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(response.content.readline(), left)
        except TimeoutError:
            break
        if line.startswith(b"data: "):
            got.append(json.loads(line[6:]))
    return got


@pytest.mark.asyncio
async def test_api_state_is_the_snapshot(board: Dashboard) -> None:
    async with aiohttp.ClientSession() as http, http.get(board.url + "api/state") as r:
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
    assert body == json.loads(json.dumps(board.state.snapshot()))
    assert len(body["slots"]) == 3


@pytest.mark.asyncio
async def test_events_push_at_least_twice_a_second_and_changes_at_once(board: Dashboard) -> None:
    async with aiohttp.ClientSession() as http, http.get(board.url + "events") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        quiet = await read_events(r, 2.0)
        assert len(quiet) >= 4  # nothing changed: the heartbeat alone is 2 per second
        board.state.event({"t": time.time(), "phase": "detach", "instance": "app-2-a", "slot": 2, "version": "v1",
                           "batch": 2, "detail": {"in_flight": 5}})
        changed = await read_events(r, 0.4)
    servers = [s for slot in changed[-1]["slots"] for s in slot["servers"]]
    assert {"name": "app-2-a", "state": "draining", "in_flight": 5}.items() <= \
        next(s for s in servers if s["name"] == "app-2-a").items()


@pytest.mark.asyncio
async def test_close_lets_an_open_page_receive_the_final_state() -> None:
    dashboard = Dashboard(state_of_three(), free_port())
    await dashboard.start()
    async with aiohttp.ClientSession() as http, http.get(dashboard.url + "events") as r:
        await read_events(r, 0.3)
        dashboard.state.finish(Report.from_json({"outcome": "completed", "requests": {"dropped": 0},
                                                 "verdict": PASSED}))
        closing = asyncio.create_task(dashboard.close())
        final = await read_events(r, 2.0)
        await closing
    assert final and final[-1]["phase"] == "ended" and final[-1]["result"]["verdict"] == "PASS: all 2 checks held"


@pytest.mark.asyncio
async def test_a_taken_port_is_a_usage_error(taken_port: int) -> None:
    with pytest.raises(PortInUseError, match=rf"^dashboard-port: 127.0.0.1:{taken_port} is already in use"):
        await Dashboard(RolloutState(), taken_port).start()


@pytest.mark.asyncio
async def test_the_page_is_served_and_only_reads(board: Dashboard) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(board.url) as r:
            page = await r.text()
        assert r.status == 200 and 'id="slots"' in page and "/static/page.js" in page
        for path in ("static/page.js", "static/page.css"):
            async with http.get(board.url + path) as r:
                assert r.status == 200
        for method, path in (("GET", "static/../dashboard.py"), ("GET", "static/nope.js"), ("POST", "api/state"),
                             ("DELETE", "api/state"), ("GET", "files/json")):
            async with http.request(method, board.url + path) as r:
                assert r.status in (404, 405), (method, path, r.status)


@pytest.mark.asyncio
async def test_report_files_are_served_once_the_run_has_them(board: Dashboard, tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("# report\n")
    board.state.finish(Report.from_json({"outcome": "completed", "requests": {"dropped": 0},
                        "files": {"markdown": str(tmp_path / "report.md")}}))
    async with aiohttp.ClientSession() as http:
        async with http.get(board.url + "files/markdown") as r:
            assert r.status == 200 and await r.text() == "# report\n"
        async with http.get(board.url + "files/chart") as r:
            assert r.status == 404


def test_the_page_fetches_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert "@import" not in text and "fetch(" not in text


def test_cli_rejects_a_taken_dashboard_port_before_docker(capsys: pytest.CaptureFixture[str],
                                                          taken_port: int) -> None:
    code = main(["roll", "--project", "never-created", "--dashboard", "--dashboard-port", str(taken_port)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"dashboard-port: 127.0.0.1:{taken_port} is already in use" in err


@pytest.mark.asyncio
async def test_on_a_terminal_the_final_page_is_served_until_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from sandbox.ui.dashboard import LiveView
    said: list[str] = []
    view = await LiveView.open(dashboard=True, port=free_port(), say=said.append)
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as tty:
        monkeypatch.setattr("sys.stdin", tty)
        final = Report.from_json({"outcome": "completed", "requests": {"dropped": 0}, "verdict": PASSED})
        closing = asyncio.create_task(view.close(report=final))
        await asyncio.sleep(0.3)
        assert not closing.done() and "until you press Enter" in said[-1]
        async with aiohttp.ClientSession() as http, http.get(view.dashboard.url + "api/state") as r:  # type: ignore[union-attr]
            assert (await r.json())["result"]["passed"] is True
        os.write(master, b"\n")
        await asyncio.wait_for(closing, 2)
    os.close(master)


@pytest.mark.asyncio
async def test_elsewhere_the_command_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.ui.dashboard import LiveView
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    view = await LiveView.open(dashboard=True, port=free_port(), say=lambda _text: None)
    await asyncio.wait_for(view.close(report=Report.from_json({"outcome": "completed", "requests": {"dropped": 0}})), 1)


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:8089", True), ("localhost:8089", True), ("LOCALHOST:8089", True),
    ("127.0.0.1", False), ("localhost:8090", False), ("attacker.example:8089", False),
    ("127.0.0.1.nip.io:8089", False), ("127.0.0.1:8089@evil", False), ("", False), (None, False),
])
def test_only_local_hosts_name_the_dashboard(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, 8089) is allowed


def test_on_port_80_a_bare_local_name_is_the_dashboard() -> None:
    assert host_allowed("localhost", 80) and host_allowed("127.0.0.1:80", 80) and not host_allowed("evil", 80)


@pytest.mark.asyncio
async def test_a_rebinding_host_gets_421_on_every_path(board: Dashboard) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/api/state", "/events", "/static/page.js", "/files/markdown"):
            rebound = {"Host": f"evil.example:{board.port}"}
            async with session.get(f"{board.url.rstrip('/')}{path}", headers=rebound) as r:
                assert r.status == 421, path
        async with session.get(f"{board.url}api/state", headers={"Host": f"localhost:{board.port}"}) as r:
            assert r.status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize("port", [0, -1, 65536])
async def test_a_dashboard_port_that_is_no_port_is_bad_input(port: int) -> None:
    with pytest.raises(UsageError, match=rf"^dashboard-port: {port} is not a port"):
        await LiveView.open(dashboard=True, port=port)

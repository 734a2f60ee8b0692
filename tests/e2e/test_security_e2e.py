"""Nothing on the fleet's network can steer it.

From inside one of the fleet's own app containers (where someone who took over the app would
stand), the requests an attacker would try: the LB's admin listener (no token, a guessed one,
even the real one), the session store without its password, the dashboard through the host's
address with a rebinding ``Host``. Each is refused and the fleet is unchanged. Then the
hardening itself: NGINX without root on a read-only root filesystem, here and in compose/.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.access import controller_address
from sandbox.fleet.balancer import ADMIN_PORT
from sandbox.fleet.docker_base import REDIS_PORT, network_name
from sandbox.fleet.images import ImageSet
from sandbox.ui.dashboard import Dashboard
from sandbox.ui.state import RolloutState
from tests.e2e.conftest import REPO, Cli, free_port

pytestmark = pytest.mark.e2e

# run with python3 inside an app container: argv = lb_ip admin_port token redis_host redis_port host_ip dash_port
ATTACK = r"""
import json, socket, sys, urllib.error, urllib.request
lb_ip, admin_port, token, redis_host, redis_port, host_ip, dash_port = sys.argv[1:8]
out = {}

def admin(method, path, token, body=None):
    req = urllib.request.Request(f"http://{lb_ip}:{admin_port}{path}", data=body, method=method)
    if token is not None:
        req.add_header("X-Sandbox-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__

detach_all = b"999999\n{}\n"  # a newer generation and no server: every user would get 503
out["put_without_token"] = admin("PUT", "/servers", None, detach_all)
out["put_guessed_token"] = admin("PUT", "/servers", "0" * len(token), detach_all)
out["put_real_token"] = admin("PUT", "/servers", token, detach_all)  # even a leaked token is not enough
out["get_servers_real_token"] = admin("GET", "/servers", token)

with socket.create_connection((redis_host, int(redis_port)), timeout=5) as s:
    s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
    out["redis_flushall"] = s.recv(200).decode().strip()
    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$5\r\nguess\r\n")
    out["redis_auth_guess"] = s.recv(200).decode().strip()

try:  # the dashboard listens on the host's 127.0.0.1: through the host's address on this network
    with socket.create_connection((host_ip, int(dash_port)), timeout=5) as s:
        s.sendall(f"GET /api/state HTTP/1.1\r\nHost: rebind.example:{dash_port}\r\n"
                  "Connection: close\r\n\r\n".encode())
        out["dashboard"] = s.recv(200).decode(errors="replace").split("\r\n")[0]
except OSError as exc:
    out["dashboard"] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    """The real dashboard (as ``--dashboard`` serves it: 127.0.0.1 only), in a thread of its own."""
    board = Dashboard(RolloutState(), free_port())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(board.start(), loop).result(timeout=10)
    try:
        yield board
    finally:
        asyncio.run_coroutine_threadsafe(board.close(linger_s=0), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def admin_from_host(lb: Any, project: str, path: str) -> tuple[int, str]:
    """A request to the admin listener from where the controller stands (this host)."""
    ip = lb.attrs["NetworkSettings"]["Networks"][network_name(project)]["IPAddress"]
    req = urllib.request.Request(f"http://{ip}:{ADMIN_PORT}{path}")
    req.add_header("X-Sandbox-Token", lb.labels[L.LABEL_ADMIN_TOKEN])
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read().decode()


def http(url: str, *, host: str | None = None, data: bytes | None = None,
         cookie: str = "") -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    if host:
        req.add_header("Host", host)
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def fleet(cli: Cli, client: docker.DockerClient) -> dict[str, Any]:
    """What an attacker would want to change: the fleet as status sees it and the LB's live set."""
    lb = client.containers.get(f"{cli.project}-lb")
    return {"status": cli.json("status", "--json"), "servers": admin_from_host(lb, cli.project, "/servers")}


def test_an_app_container_cannot_steer_the_fleet_whose_lb_runs_without_root(cli: Cli, client: docker.DockerClient,
                                                  dashboard: Dashboard) -> None:
    cli.run("up", "--size", "2", "--sessions", "shared", "--port", str(cli.port), check=True)
    lb = client.containers.get(f"{cli.project}-lb")
    # a user's cart in the shared session store: FLUSHALL would empty it
    status, headers, _ = http(f"http://127.0.0.1:{cli.port}/api/cart", data=b'{"item": 3}')
    assert status == 200
    cookie = headers["Set-Cookie"].split(";")[0]
    before = fleet(cli, client)
    assert before["servers"][0] == 200 and len(before["status"]["lb"]["upstreams"]) == 2

    app = client.containers.list(filters=L.project_filter(cli.project, L.ROLE_APP))[0]
    lb_ip = lb.attrs["NetworkSettings"]["Networks"][network_name(cli.project)]["IPAddress"]
    host_ip = controller_address(lb_ip)  # the host's address on the fleet's network
    result = app.exec_run(["python3", "-c", ATTACK, lb_ip, str(ADMIN_PORT), lb.labels[L.LABEL_ADMIN_TOKEN],
                           f"{cli.project}-redis", str(REDIS_PORT), host_ip, str(dashboard.port)])
    assert result.exit_code == 0, result.output.decode()
    seen = json.loads(result.output.decode().strip().splitlines()[-1])

    assert seen["put_without_token"] == 403
    assert seen["put_guessed_token"] == 403
    assert seen["put_real_token"] == 403 and seen["get_servers_real_token"] == 403
    assert seen["redis_flushall"].startswith("-NOAUTH"), seen
    assert seen["redis_auth_guess"].startswith("-WRONGPASS"), seen
    assert seen["dashboard"] == "ConnectionRefusedError", seen

    # from the host, where a browser tricked by DNS rebinding would send it
    local = f"http://127.0.0.1:{dashboard.port}/api/state"
    assert http(local, host=f"rebind.example:{dashboard.port}")[0] == 421
    assert http(local)[0] == 200

    assert fleet(cli, client) == before  # nothing changed: the same servers, attached, same generation
    status, _, body = http(f"http://127.0.0.1:{cli.port}/api/cart", cookie=cookie)
    assert status == 200 and json.loads(body)["items"] == [3]  # the session store kept the cart

    # the same fleet's load balancer: NGINX without root on a read-only root, and it still rolls
    assert_nginx_hardened(lb)
    cli.run("roll", "--to", "v2", "--no-load", check=True)  # config installs and set changes still work
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"v2"}


def nginx_processes(container: Any) -> list[tuple[str, str, str]]:
    """(command line, real uid, effective capabilities) of every NGINX process in ``container``."""
    script = ('for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); case "$c" in nginx*) '
              'echo "$c|$(awk \'/^Uid/{print $2}\' $p/status)|$(awk \'/^CapEff/{print $2}\' $p/status)";; esac; done')
    out = container.exec_run(["sh", "-c", script]).output.decode()
    return [tuple(line.rsplit("|", 2)) for line in out.splitlines() if line.count("|") >= 2]  # type: ignore[misc]


def assert_nginx_hardened(container: Any) -> None:
    container.reload()
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert "no-new-privileges" in container.attrs["HostConfig"]["SecurityOpt"]
    processes = nginx_processes(container)
    assert any("master" in cmd for cmd, _, _ in processes) and any("worker" in cmd for cmd, _, _ in processes)
    assert {(uid, caps) for _, uid, caps in processes} == {("33", "0000000000000000")}, processes  # www-data


def test_the_compose_fleet_is_hardened_the_same_way(client: docker.DockerClient, image_set: ImageSet) -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: scripts/setup.sh installs it"
    project, port = f"t{secrets.token_hex(4)}", free_port()
    env = {**os.environ, "SANDBOX_PORT": str(port), "SANDBOX_APP_IMAGE": image_set.app["v1"],
           "SANDBOX_LB_IMAGE": image_set.lb}
    compose = [exe, "-f", str(REPO / "compose" / "docker-compose.yml"), "-p", project]
    try:
        up = subprocess.run([*compose, "up", "-d"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        deadline, status = time.monotonic() + 60, 0
        while time.monotonic() < deadline and status != 200:
            try:
                status = http(f"http://127.0.0.1:{port}/api/items/1")[0]
            except OSError:
                time.sleep(0.5)
        assert status == 200
        def service(name: str) -> Any:
            found = client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                              f"com.docker.compose.service={name}"]})
            assert len(found) == 1, name
            return found[0]
        assert_nginx_hardened(service("lb"))
        for name in ("app1", "app2", "app3"):
            app = service(name)
            assert app.attrs["HostConfig"]["ReadonlyRootfs"] is True and app.attrs["Config"]["User"] == "10001:10001"
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=300)

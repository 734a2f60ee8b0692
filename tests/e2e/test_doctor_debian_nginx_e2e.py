"""A second image the project did not write: Debian's nginx-light with Debian's stock config
(examples/debian-nginx), served as a fleet and diagnosed by `sandbox doctor`.

What doctor finds in it (seen in bench/DOCTOR.md too): NGINX stops at once and cleanly on SIGTERM (its
fast shutdown) and on SIGQUIT (its graceful one) alike, since a static page is answered long before
either signal lands; either way it closes its listener at the signal, so with the endpoint removed
late it drops requests and needs the preStop sleep. Its stock keep-alive (65 s) outlasts the proxy's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.e2e.conftest import REPO, Cli, project_objects

pytestmark = pytest.mark.e2e

IMAGE = "rolling-sandbox-example/debian-nginx:bookworm"
# Debian's NGINX writes its pid, logs and temp files under /run and /var: not a read-only root
APP = ["--image", f"bookworm={IMAGE}", "--app-port", "80", "--health-path", "/", "--read-only", "false"]


@pytest.fixture(scope="session")
def debian_nginx(client: docker.DockerClient) -> Iterator[None]:
    subprocess.run([str(REPO / "examples" / "debian-nginx" / "build.sh")], check=True, capture_output=True,
                   timeout=900, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    labels = client.images.get(IMAGE).labels
    assert labels["io.rolling-sandbox.project"] == "example-debian-nginx", labels
    assert labels["io.rolling-sandbox.example.package"].startswith("nginx-light "), labels
    yield


def test_the_stock_debian_page_is_served_by_a_fleet(cli: Cli, debian_nginx: None) -> None:
    cli.run("up", "--size", "1", "--port", str(cli.port), *APP, check=True)
    status, _, body = cli.get("/")  # Debian's index.nginx-debian.html, through the sandbox's LB
    assert status == 200 and b"<title>Welcome to nginx!</title>" in body, (status, body[:200])


def _doctor(cli: Cli, client: docker.DockerClient, *args: str) -> dict[str, Any]:
    out = cli.json("doctor", "--json", *APP, *args, expect=1, timeout=900)  # exit 1: endpoint_lag fails
    assert project_objects(client, f"{cli.project}-doctor") == []  # doctor removes its own fleet
    assert out["image"] == IMAGE
    return {f["name"]: f for f in out["findings"]} | {"_all": out}


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGQUIT"])
def test_debian_nginx_is_diagnosed(cli: Cli, client: docker.DockerClient, debian_nginx: None, signal: str) -> None:
    found = _doctor(cli, client, "--stop-signal", signal)
    assert set(found) == {"sigterm", "pid1", "endpoint_lag", "readiness", "keepalive", "long_requests",
                          "capacity", "_all"}
    pid1 = found["pid1"]
    assert pid1["status"] == "PASS" and pid1["evidence"]["pid1"].startswith("nginx: master process"), pid1
    # either signal: the static requests in flight finish, and NGINX exits by itself, at once, code 0
    stop = found["sigterm"]
    assert stop["status"] == "PASS" and stop["evidence"]["signal"] == signal, stop
    assert stop["evidence"]["cut"] == 0 and stop["evidence"]["exit_code"] == 0, stop
    assert stop["evidence"]["exit_s"] is not None and stop["evidence"]["exit_s"] < stop["evidence"]["stop_timeout_s"]
    # either signal closes the listener: routed to late, it drops; the fix is the full 5 s preStop sleep.
    # At lag 0 (signal and detach at once) it drops a few requests in some runs, none in others.
    lag = found["endpoint_lag"]
    assert lag["status"] == "FAIL" and lag["evidence"]["tolerated_lag_s"] in (None, 0), lag
    assert lag["evidence"]["trials"]["5"]["dropped"] > 0 and lag["evidence"]["pre_stop_sleep_s"] == 5, lag
    assert any("502" in f["what"] for f in lag["failures"]), lag["failures"]  # the LB: upstream refused
    assert found["readiness"]["status"] == "PASS" and found["readiness"]["evidence"]["failed"] == 0
    keep = found["keepalive"]  # Debian's keepalive_timeout 65 s: longer than the proxy's 30 s
    assert keep["status"] == "PASS" and keep["evidence"]["app_idle_s"] is None, keep
    k8s = found["_all"]["snippets"]["kubernetes"]
    assert "port: 80" in k8s and "seconds: 5" in k8s, k8s

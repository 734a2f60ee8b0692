"""sandbox doctor against real containers: each broken toy variant is found with its evidence, the
fixed one passes, and a third-party image (httpbin) is diagnosed. Doctor's own fleet is removed.

Each run costs a fleet and about a minute, so the broken switches that do not mask each other share
one run (exit at once, ready too early, a short idle timeout), and so do the fixed ones.
"""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from tests.e2e.conftest import Cli, project_objects
from tests.e2e.test_httpbin_e2e import httpbin  # noqa: F401 (a fixture: builds the httpbin images)

pytestmark = pytest.mark.e2e

LONG_LIVED = ["--ws-path", "/ws", "--sse-path", "/events"]


def _doctor(cli: Cli, client: docker.DockerClient, *args: str, expect: int) -> dict[str, Any]:
    out = cli.json("doctor", "--json", *args, expect=expect, timeout=900)
    assert project_objects(client, f"{cli.project}-doctor") == []  # doctor removes its own fleet
    return {f["name"]: f for f in out["findings"]} | {"_all": out}


def test_a_toy_app_that_keeps_serving_after_sigterm_passes(cli: Cli, client: docker.DockerClient) -> None:
    # graceful, and it keeps serving 6 s after SIGTERM: longer than the 5 s endpoint lag doctor rehearses
    found = _doctor(cli, client, "--env", "APP_STOP_DELAY=6", *LONG_LIVED, expect=0)
    for name in ("sigterm", "pid1", "endpoint_lag", "readiness", "keepalive", "long_requests",
                 "websocket /ws", "sse /events"):
        assert found[name]["status"] == "PASS", found[name]
    assert found["sigterm"]["evidence"]["cut"] == 0 and found["sigterm"]["evidence"]["exit_s"] < 20
    assert found["endpoint_lag"]["evidence"]["pre_stop_sleep_s"] == 0
    assert found["websocket /ws"]["evidence"]["close_code"] == 1001
    assert found["keepalive"]["evidence"]["app_idle_s"] is None or found["keepalive"]["evidence"]["app_idle_s"] > 30
    k8s = found["_all"]["snippets"]["kubernetes"]
    assert "preStop" not in k8s and "terminationGracePeriodSeconds" in k8s


def test_exit_at_once_early_readiness_and_a_short_idle_timeout_are_each_found(
        cli: Cli, client: docker.DockerClient) -> None:
    found = _doctor(cli, client, "--env", "APP_STOP_MODE=exit-now", "--env", "APP_READY_EARLY_S=3",
                    "--env", "APP_KEEPALIVE_TIMEOUT=2", "--env", "APP_LATENCY_MS=200", *LONG_LIVED, expect=1)
    sigterm = found["sigterm"]
    assert sigterm["status"] == "FAIL" and sigterm["evidence"]["cut"] > 0 and sigterm["evidence"]["exit_s"] < 1
    lag = found["endpoint_lag"]
    assert lag["status"] == "FAIL" and lag["failures"] and lag["evidence"]["pre_stop_sleep_s"] == 5
    ready = found["readiness"]
    assert ready["status"] == "FAIL" and ready["evidence"]["failed"] > 0 and ready["evidence"]["serves_after_s"] >= 2
    assert all("503" in f["what"] for f in ready["failures"])
    keep = found["keepalive"]
    assert keep["status"] == "FAIL" and 1.5 <= keep["evidence"]["app_idle_s"] <= 3 and keep["evidence"]["race_sent"]
    assert found["websocket /ws"]["status"] == "FAIL" and found["sse /events"]["status"] == "FAIL"
    assert "seconds: 5" in found["_all"]["snippets"]["kubernetes"]  # the preStop sleep measured


def test_a_shell_pid1_that_swallows_sigterm_is_killed_at_the_stop_timeout(
        cli: Cli, client: docker.DockerClient) -> None:
    found = _doctor(cli, client, "--env", "APP_SHELL_PID1=1", "--stop-timeout", "5", expect=1)
    assert found["sigterm"]["status"] == "FAIL" and found["sigterm"]["evidence"]["exit_s"] is None
    pid1 = found["pid1"]
    assert pid1["status"] == "FAIL" and pid1["evidence"]["shell"] is True


def test_httpbin_is_diagnosed(cli: Cli, client: docker.DockerClient, httpbin: None) -> None:  # noqa: F811
    out = cli.run("doctor", "--image", "0.10.1=rolling-sandbox-example/httpbin:0.10.1", "--health-path",
                  "/status/200", "--path", "/get", "--json", timeout=900)
    assert out.returncode in (0, 1), out.stderr
    data = json.loads(out.stdout)
    found = {f["name"]: f for f in data["findings"]}
    assert set(found) == {"sigterm", "pid1", "endpoint_lag", "readiness", "keepalive", "long_requests", "capacity"}
    assert found["pid1"]["status"] == "PASS" and "gunicorn" in found["pid1"]["evidence"]["pid1"]
    assert found["sigterm"]["evidence"]["exit_s"] is not None  # gunicorn stops on SIGTERM
    assert data["image"] == "rolling-sandbox-example/httpbin:0.10.1"
    assert project_objects(client, f"{cli.project}-doctor") == []

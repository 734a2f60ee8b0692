"""An app that is not ours: httpbin (gunicorn) in two releases, no /metrics, no /healthz, no version header.

Requests of one and two seconds are in flight at every detach; gunicorn exits at once on SIGQUIT, so
only the drain (the load balancer's own in-flight count) can have saved them.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import REPO, Cli, assert_passes

pytestmark = pytest.mark.e2e

IMAGES = ["--image", "0.10.1=rolling-sandbox-example/httpbin:0.10.1",
          "--image", "0.10.2=rolling-sandbox-example/httpbin:0.10.2"]
LOAD = ["--users", "20", "--path", "/delay/1", "--path", "/delay/2", "--path", "/get",
        "--warmup", "3", "--cooldown", "3", "--slow-ms", "5000", "--json"]  # /delay/2 is slow by design


@pytest.fixture(scope="session")
def httpbin(client: docker.DockerClient) -> Iterator[None]:
    subprocess.run([str(REPO / "examples" / "httpbin" / "build.sh")], check=True, capture_output=True,
                   timeout=900, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    yield


def _up(cli: Cli, *extra: str) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), *IMAGES, "--stop-signal", "SIGQUIT", *extra, check=True)


def test_a_version_that_never_turns_healthy_is_rolled_back_then_httpbin_rolls_with_nothing_dropped(
        cli: Cli, httpbin: None, tmp_path: Path) -> None:
    _up(cli, "--health-path", "/status/200")
    # gunicorn reads GUNICORN_CMD_ARGS: the new version cannot start (a bad command, in effect)
    proc = cli.run("roll", *LOAD, "--ready-timeout", "8", "--set-env", "GUNICORN_CMD_ARGS=--chdir=/nonexistent",
                   "--junit", str(tmp_path / "rollout.xml"), timeout=600)
    report = assert_passes(proc, expected=frozenset({"outcome"}))
    assert report["outcome"] == "rolled_back" and report["requests"]["dropped"] == 0, report["requests"]
    suite = ET.parse(tmp_path / "rollout.xml").getroot().find("testsuite")  # what a CI system shows
    assert suite is not None
    failed = {c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None}
    assert failed == {"outcome"}, failed

    # the rollback left the fleet on 0.10.1: the same fleet now rolls for real
    report = assert_passes(cli.run("roll", *LOAD, timeout=600))
    assert (report["from_version"], report["to_version"], report["outcome"]) == ("0.10.1", "0.10.2", "completed")
    assert report["requests"]["dropped"] == 0, report["requests"]
    drains = report["drains"]
    assert len(drains) == 3 and all(d["in_flight"] > 0 and not d["timed_out"] for d in drains), drains
    by_version = report["requests"]["by_version"]
    assert by_version["0.10.1"] > 0 and by_version["0.10.2"] > 0 and by_version["unknown"] == 0, by_version

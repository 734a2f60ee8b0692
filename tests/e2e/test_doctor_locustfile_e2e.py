"""`sandbox doctor --locustfile`: your locustfile runs against doctor's fleet, and its longest request
(here the toy app's /api/slow, which doctor's own --path requests never ask for) is judged against
the stop timeout and lengthens the grace period in the snippets."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Cli, project_objects

pytestmark = pytest.mark.e2e

LOCUSTFILE = '''
from locust import HttpUser, between, task


class Export(HttpUser):
    wait_time = between(0.5, 1.0)

    @task
    def export(self):
        self.client.get("/api/slow?ms=4000", name="/api/slow (export)")
'''


def test_the_locustfile_s_longest_request_is_found(cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    locustfile = tmp_path / "export.py"
    locustfile.write_text(LOCUSTFILE)
    out = cli.json("doctor", "--json", "--locustfile", str(locustfile), "--users", "2", "--stop-timeout", "6",
                   expect=None, timeout=900)
    assert project_objects(client, f"{cli.project}-doctor") == []
    found = {f["name"]: f for f in out["findings"]}
    long = found["long_requests"]
    run = long["evidence"]["locustfile"]
    assert run["requests"] >= 2 and run["failed"] == 0 and run["longest_name"] == "GET /api/slow (export)", run
    assert 4.0 <= run["longest_s"] < 6.0 and long["evidence"]["longest_request_s"] == run["longest_s"]
    assert long["status"] == "WARN" and "your locustfile" in long["summary"]  # over half of the 6 s stop timeout
    assert "terminationGracePeriodSeconds" in out["snippets"]["kubernetes"]

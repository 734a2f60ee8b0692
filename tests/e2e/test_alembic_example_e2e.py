"""Your own app with a real migration tool: examples/alembic-orders (aiohttp, SQLAlchemy Core, Alembic),
two releases built offline, rolled v1 -> v2 with `roll --migrate "alembic upgrade head"` on a fleet with
`--service postgres`.

- without the migration, v2 never turns ready (its /ready names the columns it lacks): the roll is
  rolled back with nothing dropped, and the database stays at revision 0001;
- with it, Alembic runs once in a one-off v2 container before the first batch (its own output is in the
  report and JUnit), v1 keeps answering without error against the expanded schema, nothing is dropped,
  and `alembic current` says the database is at 0002;
- the rollback that follows works: v1 boots against revision 0002 and serves it, nothing dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ensure_db_image
from tests.e2e.conftest import REPO, Cli, assert_passes

pytestmark = pytest.mark.e2e

REPOSITORY = "rolling-sandbox-example/alembic-orders"
IMAGES = ["--image", f"v1={REPOSITORY}:v1", "--image", f"v2={REPOSITORY}:v2"]
# --max-p99-ms: this test is about the migration, not latency; on 2 cores shared with other fleets a rollout
# p99 of 274 ms (steady 157 ms, nothing dropped) was seen to fail the default 250 ms bound
LOAD = ["--users", "10", "--path", "/api/orders", "--warmup", "3", "--cooldown", "2", "--max-p99-ms", "2000",
        "--json"]
MIGRATE = "alembic upgrade head"


@pytest.fixture(scope="module")
def orders_images(client: docker.DockerClient) -> Iterator[None]:
    """The example's two images (build.sh keeps them while their inputs are unchanged) and the PostgreSQL image."""
    ensure_db_image(client)
    def build() -> str:
        done = subprocess.run([str(REPO / "examples" / "alembic-orders" / "build.sh")], capture_output=True,
                              text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    build()
    ids = {v: client.images.get(f"{REPOSITORY}:{v}").id for v in ("v1", "v2")}
    for version in ("v1", "v2"):
        labels = client.images.get(f"{REPOSITORY}:{version}").labels
        assert labels[L.LABEL_MANAGED] == "true" and labels[L.LABEL_PROJECT] == "example-alembic-orders", labels
        assert labels[L.LABEL_INPUTS], labels  # what build.sh compares to decide nothing needs building
    again = build()  # the inputs are unchanged: nothing is fetched or built, the images stay
    assert again.count("is up to date") == 2, again
    assert {v: client.images.get(f"{REPOSITORY}:{v}").id for v in ("v1", "v2")} == ids
    yield


def _get(cli: Cli, path: str) -> dict[str, Any]:
    status, headers, body = cli.get(path)
    assert status == 200
    answer: dict[str, Any] = json.loads(body)
    assert headers["X-App-Version"] == answer["version"]
    return answer


def _post_order(cli: Cli, order: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{cli.port}/api/orders", data=json.dumps(order).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def _alembic_current(client: docker.DockerClient, project: str) -> str:
    """`alembic current`, run in a one-off container of v2's image with the servers' DATABASE_URL (labelled
    with the project, so the teardown would remove it if it were left)."""
    [app, *_] = client.containers.list(filters=L.project_filter(project, L.ROLE_APP))
    url = next(e for e in app.attrs["Config"]["Env"] if e.startswith("DATABASE_URL=")).split("=", 1)[1]
    out: bytes = client.containers.run(f"{REPOSITORY}:v2", ["alembic", "current"], environment={"DATABASE_URL": url},
                                       network=f"{project}-net", labels=L.project_labels(project, L.ROLE_MIGRATE),
                                       remove=True, stdout=True, stderr=False)
    return out.decode().strip()


def test_alembic_upgrade_head_rolls_the_example_with_nothing_dropped(
        cli: Cli, client: docker.DockerClient, orders_images: None, tmp_path: Path) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), "--service", "postgres", "--health-path", "/ready",
            *IMAGES, check=True)
    assert _get(cli, "/") == {"version": "v1", "revision": "0001"}  # the servers applied the baseline, once
    assert [o["item"] for o in _get(cli, "/api/orders")["orders"]] == ["orange juice", "croissant", "espresso"]

    # the release without its migration: v2's /ready answers 503 (customer, status missing), so it is rolled back
    proc = cli.run("roll", "--to", "v2", *LOAD, "--ready-timeout", "8", timeout=600)
    report = assert_passes(proc, expected=frozenset({"outcome"}))
    assert report["outcome"] == "rolled_back" and report["requests"]["dropped"] == 0, report["requests"]
    assert _get(cli, "/") == {"version": "v1", "revision": "0001"}

    junit = tmp_path / "junit.xml"
    proc = cli.run("roll", "--to", "v2", "--migrate", MIGRATE, *LOAD, "--junit", str(junit), timeout=600)
    report = assert_passes(proc)
    assert (report["from_version"], report["to_version"], report["outcome"]) == ("v1", "v2", "completed")
    assert report["requests"]["dropped"] == 0 and report["requests"]["errors_4xx"] == 0, report["requests"]
    migration = report["migration"]
    assert (migration["command"], migration["status"], migration["exit_code"], migration["at"]) == (
        MIGRATE, "passed", 0, "before"), migration
    after = migration["by_version_after"]  # read from NGINX's log, as every version of your own image is
    assert after["v1"]["answers"] > 0 and after["v1"]["errors"] == 0, after  # v1 kept working on 0002's schema
    assert after["v2"]["answers"] > 0 and after["v2"]["errors"] == 0, after
    [record] = [r for r in report["mixed_checks"] if r["name"] == "migration"]
    alembic_said = "INFO  [alembic.runtime.migration] Running upgrade 0001 -> 0002, add orders.customer"
    assert alembic_said in record["stdout_tail"], record  # Alembic's own log, through alembic.ini
    [case] = [c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "migration"]
    assert case.find("failure") is None and alembic_said in (case.findtext("system-out") or "")
    assert client.containers.list(all=True, filters=L.project_filter(cli.project, L.ROLE_MIGRATE)) == []
    stops = [e for e in report["steps"] if e["phase"] == "stop"]  # SIGTERM: each v1 server finished and exited 0
    assert len(stops) == 3 and all(e["detail"]["exit_code"] == 0 for e in stops), stops

    assert _alembic_current(client, cli.project) == "0002 (head)"
    assert _get(cli, "/") == {"version": "v2", "revision": "0002"}
    status, created = _post_order(cli, {"item": "flat white", "customer": "ada"})
    assert status == 201 and created["version"] == "v2", created
    assert (created["order"]["customer"], created["order"]["status"]) == ("ada", "placed")  # 0002's default

    # the expand keeps the rollback open: v1 boots against revision 0002 and serves it, nothing dropped
    report = assert_passes(cli.run("rollback", *LOAD, timeout=600))
    assert (report["to_version"], report["outcome"], report["requests"]["dropped"]) == ("v1", "completed", 0)
    assert _get(cli, "/") == {"version": "v1", "revision": "0002"}
    assert _get(cli, "/api/orders")["orders"][0]["item"] == "flat white"  # v2's order, read by v1

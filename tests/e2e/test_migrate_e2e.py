"""`up --service postgres` and `roll --migrate`: a real PostgreSQL for the fleet, and a migration run once
in a one-off container of the target image before the first batch.

- expand (adds the column v2 needs): v1 keeps working, 0 errors from v1 while mixed, PASS;
- breaking (renames the column v1 reads): v1 answers errors (409 schema mismatch: answers, not drops),
  named per version in the report;
- a failing migration: exit 1, one line naming it, the fleet untouched.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ensure_db_image
from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

# latency is not what these tests judge, and the machine is shared (a steady p99 of 770 ms was seen)
LOAD = ("--users", "10", "--warmup", "3", "--cooldown", "2", "--slow-ms", "30000", "--max-p99-ms", "60000",
        "--max-stall-s", "5")


@pytest.fixture(scope="module", autouse=True)
def db_image(client: docker.DockerClient) -> str:
    """The PostgreSQL image, built once when missing (cached by its inputs, as the others)."""
    return ensure_db_image(client)


def _up(cli: Cli, size: int = 3) -> None:
    cli.run("up", "--size", str(size), "--port", str(cli.port), "--service", "postgres", check=True)


def _cart(cli: Cli) -> tuple[int, dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{cli.port}/api/cart", data=b'{"item": 7}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def _migration(report: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = report["migration"]
    return block


def test_expand_keeps_v1_working_and_the_database_is_the_projects_own(
        cli: Cli, client: docker.DockerClient, db_image: str, tmp_path: Path) -> None:
    _up(cli)
    [db] = client.containers.list(filters=L.project_filter(cli.project, L.ROLE_POSTGRES))
    assert db.image.tags and db.image.tags[0] == db_image
    port = db.labels[L.LABEL_PORT]  # published on 127.0.0.1 only, for the host's hooks (test_hooks_e2e.py)
    assert db.attrs["HostConfig"]["PortBindings"] == {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]}
    assert list(db.attrs["NetworkSettings"]["Networks"]) == [f"{cli.project}-net"]
    [volume] = [m for m in db.attrs["Mounts"] if m["Type"] == "volume"]
    assert client.volumes.get(volume["Name"]).attrs["Labels"][L.LABEL_PROJECT] == cli.project
    url = db.attrs["Config"]["Env"]  # the server's own environment holds its password
    password = next(e for e in url if e.startswith("POSTGRES_PASSWORD=")).split("=", 1)[1]
    shown = cli.run("status", "--json", check=True).stdout
    assert json.loads(shown)["services"] == {"postgres": {"address": f"{cli.project}-postgres:5432",
                                                          "database": "postgres"}}
    assert len(password) == 32 and password not in shown
    status, headers, body = _cart(cli)  # v1 keeps orders in PostgreSQL
    assert status == 200 and headers["X-Schema-Expected"] == "orders-v1", (headers, body)
    assert body["orders"][0] == {"item": 7, "item_name": "item-7"}

    junit = tmp_path / "junit.xml"
    proc = cli.run("roll", "--to", "v2", "--migrate", "python3 -m migrate expand", *LOAD, "--json",
                   "--junit", str(junit), "--report", str(tmp_path / "r"))
    report = assert_passes(proc)
    assert report["outcome"] == "completed" and report["requests"]["dropped"] == 0
    migration = _migration(report)
    assert (migration["status"], migration["exit_code"], migration["at"]) == ("passed", 0, "before")
    after = migration["by_version_after"]
    assert after["v1"]["answers"] > 0 and after["v1"]["errors"] == 0, after  # v1 served after it, without error
    assert after["v2"]["answers"] > 0 and after["v2"]["errors"] == 0, after
    assert report["requests"]["errors_4xx"] == 0
    [judged] = [c for c in report["verdict"]["checks"] if c["name"] == "migration_errors"]
    assert (judged["status"], judged["value"]) == ("PASS", 0)
    [case] = [c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "migration"]
    assert case.find("failure") is None and "migrate expand: done" in (case.findtext("system-out") or "")
    # the new servers got the fleet's DATABASE_URL from its record, and expect v2's schema
    status, headers, body = _cart(cli)
    assert status == 200 and headers["X-Schema-Expected"] == "orders-v2-expand", (headers, body)
    assert body["orders"][0] == {"item": 7, "title": "item-7", "currency": "EUR"}  # v1's order, as title
    assert client.containers.list(all=True, filters=L.project_filter(cli.project, L.ROLE_MIGRATE)) == []


def test_breaking_makes_v1_answer_errors_named_per_version_not_drops(cli: Cli, tmp_path: Path) -> None:
    _up(cli)
    proc = cli.run("roll", "--to", "v2", "--migrate", "python3 -m migrate breaking", "--v2-mode", "breaking",
                   *LOAD, "--json", "--report", str(tmp_path / "r"))
    report = json.loads(proc.stdout)
    failed = {c["name"] for c in report["verdict"]["checks"] if not c["pass"]}
    # the errors after the migration (what it did to v1) fail it; v2's own JSON rename fails
    # contract_violations only when a user got v1 after v2 (timing: not every run), and nothing else may fail
    assert "migration_errors" in failed and failed <= {"migration_errors", "contract_violations"}, (
        failed, proc.stderr[-3000:])
    assert proc.returncode == 1
    assert report["requests"]["dropped"] == 0  # the errors are answers, not drops
    after = _migration(report)["by_version_after"]
    assert after["v1"]["errors"] > 0, after  # the old version broke while the fleet was mixed
    assert after["v2"]["errors"] == 0, after
    [judged] = [c for c in report["verdict"]["checks"] if c["name"] == "migration_errors"]
    assert judged["value"] == after["v1"]["errors"] and f"v1 {after['v1']['errors']} of " in judged["note"]
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Migration" in markdown and f"| v1 | {after['v1']['answers']} | {after['v1']['errors']} |" in markdown
    assert "after it        v1" not in proc.stdout  # --json: the summary is not mixed into stdout


def test_a_failing_migration_stops_before_anything_changes(cli: Cli, client: docker.DockerClient) -> None:
    _up(cli, size=2)
    before = cli.json("status", "--json")
    ids = sorted(c.id for c in client.containers.list(all=True, filters=L.project_filter(cli.project)))
    proc: subprocess.CompletedProcess[str] = cli.run("roll", "--to", "v2", "--migrate", "echo nope; false", *LOAD)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sandbox: error: migration 'echo nope; false' failed (exit 1, "), last
    assert last.endswith("before the first batch; the fleet was not changed: nope"), last
    after = cli.json("status", "--json")
    assert after == before
    assert sorted(c.id for c in client.containers.list(all=True, filters=L.project_filter(cli.project))) == ids

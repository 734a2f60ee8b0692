"""`--sessions memory|shared`: carts kept by each server are lost when it is replaced; carts in
the project's Redis survive every replacement."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from sandbox.fleet import labels as L
from tests.e2e.conftest import Cli, assert_passes, project_objects

pytestmark = pytest.mark.e2e


def test_memory_sessions_are_lost_in_a_roll_and_compare_keeps_shared_ones(
        cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    """One server at a time loses in-memory sessions (`roll`) and none kept in Redis (`compare`'s table).

    `compare` is `up`, `roll` and `down` per strategy, so each store is rolled once, by one of the two."""
    cli.run("up", "--size", "3", "--port", str(cli.port), "--sessions", "memory", check=True)
    assert client.containers.list(filters=L.project_filter(cli.project, L.ROLE_REDIS)) == []
    report = assert_passes(cli.run("roll", "--to", "v2", "--users", "10", "--warmup", "2", "--cooldown", "1",
                                   "--json"))  # lost sessions are shown, not judged
    assert report["outcome"] == "completed", report["outcome"]
    assert report["requests"]["total"] > 50
    memory = report["exposure"]
    assert memory["sessions_lost"] > 0, memory
    cli.run("down", check=True)

    proc = cli.run("compare", "--size", "3", "--port", str(cli.port), "--strategies", "one-at-a-time",
                   "--sessions", "shared", "--users", "10", "--warmup", "2", "--cooldown", "1",
                   "--report", str(tmp_path / "shared"), "--json")
    rows = json.loads(proc.stdout)["rows"]
    assert [(r["outcome"], r["pass"]) for r in rows] == [("completed", True)], proc.stderr
    assert proc.returncode == 0, proc.stderr
    shared = json.loads((tmp_path / "shared" / "one-at-a-time" / "report.json").read_text())
    assert shared["requests"]["total"] > 50
    assert rows[0]["sessions_lost"] == shared["exposure"]["sessions_lost"] == 0, rows[0]
    # compare's fleet, its Redis included, is gone
    assert project_objects(client, f"{cli.project}-1") == []

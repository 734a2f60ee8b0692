"""`--sessions memory|shared`: carts kept by each server are lost when it is replaced; carts in
the project's Redis survive every replacement."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from sandbox.fleet import labels as L
from tests.e2e.conftest import Cli, project_objects

pytestmark = pytest.mark.e2e


def roll_with(cli: Cli, sessions: str) -> dict[str, int]:
    cli.run("up", "--size", "3", "--port", str(cli.port), "--sessions", sessions, check=True)
    report = cli.json("roll", "--to", "v2", "--users", "10", "--warmup", "2", "--cooldown", "1", "--json",
                      expect=None)
    assert report["outcome"] == "completed", report["outcome"]
    assert report["requests"]["total"] > 50
    return report["exposure"]


def test_shared_sessions_survive_a_replace_rollout_memory_ones_do_not(
        cli: Cli, client: docker.DockerClient) -> None:
    shared = roll_with(cli, "shared")
    redis = client.containers.list(filters=L.project_filter(cli.project, L.ROLE_REDIS))
    assert [c.status for c in redis] == ["running"]
    cli.run("down", check=True)
    memory = roll_with(cli, "memory")
    assert client.containers.list(filters=L.project_filter(cli.project, L.ROLE_REDIS)) == []
    assert shared["sessions_lost"] == 0, shared
    assert memory["sessions_lost"] > 0, memory


def test_compare_shows_sessions_lost_apart_by_session_store(
        cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    """compare's table: one server at a time loses in-memory sessions and none kept in Redis."""
    lost = {}
    for sessions in ("memory", "shared"):
        proc = cli.run("compare", "--size", "3", "--port", str(cli.port), "--strategies", "one-at-a-time",
                       "--sessions", sessions, "--users", "10", "--warmup", "2", "--cooldown", "1",
                       "--report", str(tmp_path / sessions), "--json")
        rows = json.loads(proc.stdout)["rows"]
        assert [r["outcome"] for r in rows] == ["completed"], proc.stderr
        lost[sessions] = rows[0]["sessions_lost"]
        assert project_objects(client, f"{cli.project}-1") == []  # compare's fleet, its Redis included, is gone
    assert lost["shared"] == 0 < lost["memory"], lost

"""`--sessions memory|shared`: carts kept by each server are lost when it is replaced; carts in
the project's Redis survive every replacement."""

from __future__ import annotations

import docker
import pytest

from sandbox.fleet import labels as L
from tests.e2e.conftest import Cli

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

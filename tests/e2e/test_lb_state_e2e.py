"""The load balancer loses nothing the fleet needs: after `docker restart` of its container, and
after `docker rm -f` (the controller creates it again from the project's state volume), `roll`
and `rollback` behave as before it: new servers keep `up --env` and the shared sessions, and
`rollback` finds the last roll. A stale writer of the admin listener gets 409, never an overwrite."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.balancer import ADMIN_PORT, EXPECT_HEADER
from sandbox.fleet.docker_base import network_name
from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e


def admin(client: docker.DockerClient, project: str, *, body: bytes | None = None,
          expect: int | None = None) -> tuple[int, str]:
    """GET /servers, or PUT ``body`` on the generation ``expect``, as the controller would."""
    lb = client.containers.get(f"{project}-lb")
    ip = lb.attrs["NetworkSettings"]["Networks"][network_name(project)]["IPAddress"]
    req = urllib.request.Request(f"http://{ip}:{ADMIN_PORT}/servers", data=body, method="PUT" if body else "GET")
    req.add_header("X-Sandbox-Token", lb.labels[L.LABEL_ADMIN_TOKEN])
    if expect is not None:
        req.add_header(EXPECT_HEADER, str(expect))
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def roll(cli: Cli, *args: str) -> dict[str, Any]:
    return assert_passes(cli.run(*args, "--no-load", "--json"))


def assert_fleet(cli: Cli, client: docker.DockerClient, version: str, rollout: dict[str, str]) -> None:
    """Every server on ``version``, attached, with the fleet's own environment; the LB's record
    of the last rollout is ``rollout``; the fleet answers."""
    data = cli.json("status", "--json")
    assert data["lb"]["size"] == 2 and data["lb"]["lb_apply"] == "dynamic"
    assert {k: data["lb"]["rollout"][k] for k in rollout} == rollout, data["lb"]["rollout"]
    assert [(i["version"], i["attached"]) for i in data["instances"]] == [(version, True)] * 2, data["instances"]
    for inst in data["instances"]:
        env = dict(p.split("=", 1) for p in client.containers.get(inst["name"]).attrs["Config"]["Env"])
        assert env["FOO"] == "bar" and env["APP_REDIS"] == f"{cli.project}-redis:6379", env
    assert cli.get("/api/items/1")[0] == 200


def test_roll_and_rollback_after_the_lb_restarts_or_is_recreated(cli: Cli, client: docker.DockerClient) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), "--env", "FOO=bar", "--sessions", "shared", check=True)
    versions_label = client.containers.get(f"{cli.project}-lb").labels[L.LABEL_VERSIONS]
    roll(cli, "roll", "--to", "v2")
    assert_fleet(cli, client, "v2", {"kind": "roll", "from": "v1", "to": "v2"})

    client.containers.get(f"{cli.project}-lb").restart()  # NGINX's shared memory is gone
    data = cli.json("status", "--json")  # read from the record: nothing attached yet, nothing forgotten
    assert data["lb"]["upstreams"] == [] and data["lb"]["size"] == 2 and data["lb"]["rollout"]["from"] == "v1"
    proc = cli.run("rollback", "--no-load", "--json")
    assert "re-attached 2 servers" in proc.stderr + proc.stdout
    assert assert_passes(proc)["outcome"] == "completed"
    assert_fleet(cli, client, "v1", {"kind": "rollback", "from": "v2", "to": "v1"})

    client.containers.get(f"{cli.project}-lb").remove(force=True)  # its volumes stay; the controller's record too
    proc = cli.run("status")
    assert proc.returncode == 1 and "its load balancer container is gone" in proc.stderr, proc.stderr
    proc = cli.run("roll", "--to", "v2", "--no-load", "--json")
    assert "created it again from the fleet's record" in proc.stderr + proc.stdout
    assert assert_passes(proc)["outcome"] == "completed"
    assert client.containers.get(f"{cli.project}-lb").labels[L.LABEL_VERSIONS] == versions_label
    assert_fleet(cli, client, "v2", {"kind": "roll", "from": "v1", "to": "v2"})

    client.containers.get(f"{cli.project}-lb").remove(force=True)
    assert roll(cli, "rollback")["outcome"] == "completed"  # it finds the last roll in the record
    assert_fleet(cli, client, "v1", {"kind": "rollback", "from": "v2", "to": "v1"})


def test_a_stale_writer_gets_a_conflict_and_changes_nothing(cli: Cli, client: docker.DockerClient) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), check=True)
    code, live = admin(client, cli.project)
    generation, state_line = int(live.splitlines()[0]), live.splitlines()[1]
    assert code == 200 and generation >= 2  # the empty set, then the attached servers
    for expect in (generation - 1, generation + 1):  # a writer that saw an older (or no such) generation
        code, text = admin(client, cli.project, body=f"{generation + 1}\n{state_line}\n".encode(), expect=expect)
        assert code == 409 and f"the live generation is {generation}" in text, text
    code, text = admin(client, cli.project, body=f"{generation}\n{state_line}\n".encode(), expect=generation)
    assert code == 409, text  # not newer than the live one
    assert admin(client, cli.project) == (200, live)  # nothing changed
    assert len(cli.json("status", "--json")["lb"]["upstreams"]) == 2
    # the writer that saw the live generation is accepted (the controller, next)
    assert roll(cli, "roll", "--to", "v2")["outcome"] == "completed"

"""``sandbox up / status / down`` against the real engine. (Bad input, a taken port among it, exits 2
before any engine call: tests/unit/test_cli.py.)"""

from __future__ import annotations

import json

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ImageSet
from tests.e2e.conftest import Cli, project_objects

pytestmark = pytest.mark.e2e


def test_up_status_down(cli: Cli, client: docker.DockerClient, image_set: ImageSet) -> None:
    up = cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    assert "attached" in up.stdout

    # every server answers through the load balancer
    seen: dict[str, str] = {}
    for _ in range(30):
        status, headers, body = cli.get("/api/items/7")
        assert status == 200
        assert json.loads(body)["id"] == 7
        seen[headers["X-Instance"].split("/")[0]] = headers["X-App-Version"]
    assert len(seen) == 3 and set(seen.values()) == {"v1"}

    data = cli.json("status", "--json")
    assert data["project"] == cli.project
    assert data["lb"]["url"] == f"http://127.0.0.1:{cli.port}"
    instances = data["instances"]
    assert sorted(i["slot"] for i in instances) == [1, 2, 3]
    assert {i["name"] for i in instances} == set(seen)
    assert all(i["version"] == "v1" and i["state"] == "running" and i["attached"] for i in instances)
    assert sorted(data["lb"]["upstreams"]) == sorted(i["address"] for i in instances)

    # published on 127.0.0.1 only; app containers publish nothing and are hardened
    lb = client.containers.get(f"{cli.project}-lb")
    bindings = lb.attrs["HostConfig"]["PortBindings"]["80/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(cli.port)}]
    app = client.containers.get(instances[0]["name"])
    host = app.attrs["HostConfig"]
    assert not host.get("PortBindings")
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"][0]
    assert app.attrs["Config"]["User"] == "10001:10001"
    assert app.labels[L.LABEL_PROJECT] == cli.project and app.labels[L.LABEL_VERSION] == "v1"

    # a container of someone else's, without our labels, survives `down`
    foreign = client.containers.create(image_set.lb, ["sleep", "300"], name=f"{cli.project}-foreign")
    try:
        foreign.start()  # inside the try: a container that fails to start is removed too
        down = cli.run("down", check=True)
        assert "removed 4 containers" in down.stdout
        assert project_objects(client, cli.project) == []
        foreign.reload()
        assert foreign.status == "running"
        again = cli.run("status", "--json")
        assert again.returncode == 1 and "no fleet" in again.stderr
    finally:
        foreign.remove(force=True)


def test_status_from_a_fresh_process_sees_what_up_made(cli: Cli) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), "--version", "v2", check=True)
    data = cli.json("status", "--json")
    assert [i["version"] for i in data["instances"]] == ["v2", "v2"]
    assert cli.get("/")[1]["X-App-Version"] == "v2"

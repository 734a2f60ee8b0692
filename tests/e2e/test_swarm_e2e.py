"""The same rehearsal on a single-node Docker Swarm: app servers as services, the load
balancer a plain container on the overlay, real NGINX and Locust.

The swarm is a private engine's (tests/e2e/private_engine.py: a second dockerd in a network
namespace of its own), never the shared engine's: putting an engine into a swarm and out again
breaks name resolution for the containers already running on its bridge networks
(moby/moby#45144), which failed the fleets of tests running beside these, and a test suite must
not put a user's engine into a swarm. So these tests run beside every other test. The module
fixture first checks on the private engine, still in no swarm, that `--engine swarm` exits 2 and
creates nothing; the same refusal is tested against a fake engine in tests/unit/test_swarm.py.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ImageSet
from tests.conftest import free_port
from tests.e2e.conftest import assert_passes, project_objects
from tests.e2e.private_engine import PrivateCli, PrivateEngine, host_network, leaks, private_engine

pytestmark = pytest.mark.e2e

LOAD = ["--users", "20", "--warmup", "2", "--cooldown", "2", "--json"]


@pytest.fixture(scope="module")
def swarm(client: docker.DockerClient, image_set: ImageSet) -> Iterator[PrivateEngine]:
    """A private engine holding this checkout's images, in a single-node swarm of its own; afterwards
    nothing of it is left in the host's network namespace, and the host's network is as it was."""
    host_before = host_network(client)
    with private_engine(client, image_set.refs()) as engine:
        # the engine is in no swarm: first, --engine swarm must refuse, touching nothing
        refused = PrivateCli(project="tnoswarm", port=free_port(), engine=engine).run("up", "--engine", "swarm",
                                                                                    "--port", "8080")
        assert refused.returncode == 2 and "docker swarm init" in refused.stderr, refused.stderr
        with engine.client() as c:
            assert project_objects(c, "tnoswarm") == []
        engine.init_swarm()
        yield engine
        engine.record_bridges()
    assert leaks(engine) == [], leaks(engine)
    assert host_network(client) == host_before


@pytest.fixture(scope="module")
def swarm_client(swarm: PrivateEngine) -> Iterator[docker.DockerClient]:
    """A client of the private engine in its swarm."""
    with swarm.client() as c:
        yield c


@pytest.fixture
def cli(swarm: PrivateEngine, swarm_client: docker.DockerClient) -> Iterator[PrivateCli]:
    """A project of this test's own on the private engine; removed afterwards, whatever happened."""
    c = PrivateCli(project=f"t{secrets.token_hex(4)}", port=free_port(), engine=swarm)
    try:
        yield c
    finally:
        c.run("down", timeout=300)
        assert project_objects(swarm_client, c.project) == []


def services(client: docker.DockerClient, project: str) -> list[Any]:
    return client.services.list(filters=L.project_filter(project))


def assert_clean(report: dict[str, Any], to: str) -> None:
    assert report["outcome"] == "completed", report.get("outcome")
    assert report["requests"]["dropped"] == 0, report["requests"]
    assert report["requests"]["total"] > 100, report["requests"]
    assert report["to_version"] == to


def test_swarm_up_status_roll_rollback_down(swarm_client: docker.DockerClient, cli: PrivateCli) -> None:
    cli.run("up", "--engine", "swarm", "--size", "3", "--port", str(cli.port), check=True)

    # services, one replica each, dnsrr on the project's overlay, hardened; the LB records the engine
    found = services(swarm_client, cli.project)
    assert len(found) == 3
    for s in found:
        spec = s.attrs["Spec"]
        container = spec["TaskTemplate"]["ContainerSpec"]
        assert spec["Mode"]["Replicated"]["Replicas"] == 1
        assert spec["EndpointSpec"]["Mode"] == "dnsrr"
        assert container["Labels"][L.LABEL_PROJECT] == cli.project
        assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
    network = swarm_client.networks.get(f"{cli.project}-net")
    assert network.attrs["Driver"] == "overlay" and network.attrs["Attachable"] is True
    lb = swarm_client.containers.list(filters=L.project_filter(cli.project, L.ROLE_LB))[0]
    assert lb.labels[L.LABEL_ENGINE] == "swarm"

    # status from a fresh process, without --engine: the engine recorded on the LB is used
    status = cli.json("status", "--json")
    assert [i["state"] for i in status["instances"]] == ["running"] * 3
    assert all(i["attached"] for i in status["instances"])
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    assert all(ipaddress.ip_address(i["address"].rsplit(":", 1)[0]) in subnet for i in status["instances"])
    code, headers, _ = cli.get("/api/items/1")
    assert code == 200 and headers["X-App-Version"] == "v1"

    # one at a time under load, then back with rolling 2: nothing dropped either way
    assert_clean(assert_passes(cli.run("roll", "--to", "v2", "--strategy", "one-at-a-time", *LOAD)), "v2")
    assert cli.get("/api/items/1")[1]["X-App-Version"] == "v2"
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"v2"}
    assert len(services(swarm_client, cli.project)) == 3  # the old services are gone, not just stopped

    assert_clean(assert_passes(cli.run("rollback", "--strategy", "rolling", "--batch", "2", *LOAD)), "v1")
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"v1"}
    assert cli.get("/api/items/1")[1]["X-App-Version"] == "v1"

    # down leaves nothing of the project: services, containers, network
    proc = cli.run("down", check=True)
    assert "3 services" in proc.stdout
    assert services(swarm_client, cli.project) == []
    assert swarm_client.containers.list(all=True, filters=L.project_filter(cli.project)) == []
    assert swarm_client.networks.list(filters=L.project_filter(cli.project)) == []


def test_swarm_surge_double_half_blue_green_and_boot_failure(swarm_client: docker.DockerClient,
                                                             cli: PrivateCli) -> None:
    """The strategies that start new servers before stopping old ones, each with 0 dropped; then a
    version that never boots is rolled back on the same fleet."""
    cli.run("up", "--engine", "swarm", "--size", "2", "--port", str(cli.port), check=True)
    # (strategy, target, the most app servers alive at once: surge 1 adds one, the others a fleet)
    for strategy, to, peak in (("surge", "v2", 3), ("double-half", "v1", 4), ("blue-green", "v2", 4)):
        report = assert_passes(cli.run("roll", "--to", to, "--strategy", strategy, *LOAD))
        assert_clean(report, to)
        assert report["strategy"] == strategy and report["peak_instances"] == peak, (strategy, report["peak_instances"])
        assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {to}, strategy
        assert cli.get("/api/items/1")[1]["X-App-Version"] == to, strategy
        assert len(services(swarm_client, cli.project)) == 2, strategy  # the old fleet's services are removed

    report = assert_passes(cli.run("roll", "--to", "v1", "--set-env", "APP_BOOT_FAIL=1", "--ready-timeout", "15",
                                   *LOAD), expected=frozenset({"outcome"}))
    assert report["outcome"] == "rolled_back"
    assert report["requests"]["dropped"] == 0
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"v2"}
    assert len(services(swarm_client, cli.project)) == 2  # the failed service was removed
    cli.run("down", check=True)
    assert services(swarm_client, cli.project) == []
    assert project_objects(swarm_client, cli.project) == []


def test_swarm_your_own_images(swarm_client: docker.DockerClient, cli: PrivateCli, image_set: ImageSet) -> None:
    """--image on Swarm: versions named by you (here the toy app's images under other names, as in
    test_own_app_e2e), each service with your app's contract, rolled under load with 0 dropped."""
    images = ["--image", f"green={image_set.app['v1']}", "--image", f"blue={image_set.app['v2']}"]
    cli.run("up", "--engine", "swarm", "--size", "2", "--port", str(cli.port), *images,
            "--health-path", "/healthz", "--stop-signal", "SIGINT", check=True)
    for s in services(swarm_client, cli.project):
        container = s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert container["Labels"][L.LABEL_VERSION] == "green" and container["Labels"][L.LABEL_APP_PORT] == "8000"
        assert container["StopSignal"] == "SIGINT" and "User" not in container  # the image's own USER
    assert cli.json("status", "--json")["lb"]["versions"] == {"green": image_set.app["v1"], "blue": image_set.app["v2"]}
    report = assert_passes(cli.run("roll", *LOAD))  # no --to: the last declared, from the fleet's own map
    assert_clean(report, "blue")
    assert report["requests"]["by_version"]["green"] > 0 and report["requests"]["by_version"]["blue"] > 0
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"blue"}
    cli.run("down", check=True)
    assert services(swarm_client, cli.project) == [] and project_objects(swarm_client, cli.project) == []


def test_swarm_native_stop_first_and_start_first_in_compare(swarm_client: docker.DockerClient,
                                                            cli: PrivateCli, tmp_path: Any) -> None:
    proc = cli.run("compare", "--engine", "swarm", "--size", "2", "--port", str(cli.port),
                   "--strategies", "swarm-native:stop-first,swarm-native:start-first",
                   "--users", "10", "--warmup", "2", "--cooldown", "2", "--report", str(tmp_path), "--json")
    assert proc.stdout.startswith("{"), f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    table = json.loads(proc.stdout)
    rows = {r["strategy"]: r for r in table["rows"]}
    assert set(rows) == {"swarm-native:stop-first", "swarm-native:start-first"}
    for spec, row in rows.items():
        assert row["outcome"] == "completed"
        assert row["dropped"] == 0, (spec, row)
        assert row["duration_s"] > 0
        checks = json.loads((tmp_path / spec.replace(":", "-") / "report.json").read_text())["verdict"]["checks"]
        failed = {c["name"] for c in checks if not c["pass"]}
        assert failed == set() and row["pass"], (spec, failed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # start-first runs the new task beside the old one (and the old one lingers through Swarm's
    # 2 s before SIGTERM, while the next new one may start); stop-first never exceeds the size
    assert 3 <= rows["swarm-native:start-first"]["peak_instances"] <= 4
    assert rows["swarm-native:stop-first"]["peak_instances"] == 2
    for n in (1, 2):  # each fleet of the comparison is removed afterwards
        assert services(swarm_client, f"{cli.project}-{n}") == []
        assert project_objects(swarm_client, f"{cli.project}-{n}") == []
    report = json.loads((tmp_path / "swarm-native-start-first" / "report.json").read_text())
    assert report["requests"]["total"] > 50 and report["requests"]["by_version"]["v2"] > 0

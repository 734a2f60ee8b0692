"""`sandbox cluster`: a real multi-node swarm on this machine, the rehearsal across its nodes.

The cluster is made on a private engine (tests/e2e/private_engine.py), never the shared one: `cluster
up` makes the engine a swarm manager, and the suite must not put a user's engine into a swarm. The
workers are real engines (Debian's dockerd) in containers of that engine, joined over a bridge
network of the cluster's; the app tasks land on every node; the ones on a worker are probed through
the load balancer's relay. Afterwards the private engine is in no swarm and holds nothing of the
cluster, and nothing of it reached the host's network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.fleet import cluster
from sandbox.fleet import labels as L
from sandbox.fleet.images import ImageSet, ensure_node_image
from tests.conftest import free_port
from tests.e2e.conftest import REPO, project_objects, wait_for_line
from tests.e2e.private_engine import PrivateCli, PrivateEngine, host_network, leaks, private_engine

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engine(client: docker.DockerClient, image_set: ImageSet) -> Iterator[PrivateEngine]:
    """A private engine holding this checkout's images and the node image, in no swarm; afterwards
    nothing of it is left in the host's network namespace, and the host's network is as it was."""
    node_image = ensure_node_image(client)  # built once on the shared engine (cached there), copied in
    host_before = host_network(client)
    with private_engine(client, [*image_set.refs(), node_image]) as private:
        yield private
        private.record_bridges()
    assert leaks(private) == [], leaks(private)
    assert host_network(client) == host_before


def sandbox_cluster(engine: PrivateEngine, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(engine.wrap([sys.executable, "-m", "sandbox", "cluster", *args]), cwd=REPO,
                          env={**os.environ, "DOCKER_HOST": engine.host}, capture_output=True,
                          text=True, timeout=timeout)


def cluster_objects(c: docker.DockerClient) -> list[str]:
    found = [f"container {x.name}" for x in c.containers.list(all=True, filters=L.project_filter(cluster.CLUSTER))]
    found += [f"network {n.name}" for n in c.networks.list(filters=L.project_filter(cluster.CLUSTER))]
    found += [f"volume {v.name}" for v in c.volumes.list(filters=L.project_filter(cluster.CLUSTER))]
    return found


def swarm_state(c: docker.DockerClient) -> str:
    return str((c.info().get("Swarm") or {}).get("LocalNodeState"))


def test_a_three_node_cluster_rolls_across_its_nodes_and_goes_away(engine: PrivateEngine) -> None:
    with engine.client() as c:
        assert swarm_state(c) == "inactive"
        networks_before = sorted(n.name for n in c.networks.list())
    cli = PrivateCli(project="tcluster", port=free_port(), engine=engine)
    try:
        made = sandbox_cluster(engine, "up", "--nodes", "3", "--json")
        assert made.returncode == 0, made.stderr
        nodes = json.loads(made.stdout)
        assert [(n["role"], n["state"]) for n in nodes] == [("manager", "ready"), ("worker", "ready"),
                                                             ("worker", "ready")], nodes
        again = sandbox_cluster(engine, "up", "--nodes", "2")  # one cluster per engine: refused, nothing made
        assert again.returncode == 2 and "a cluster is up already" in again.stderr, again.stderr
        with engine.client() as c:
            sockets = cluster.Cluster(c).sockets()
            v1 = c.images.get("rolling-sandbox/app:v1").id
        assert sorted(sockets) == ["worker-1", "worker-2"]
        for hostname, socket in sockets.items():  # the toy's images are on every worker, by id
            with contextlib.closing(cluster.node_client(socket)) as worker:
                assert worker.images.get(str(v1)).id == v1, hostname

        cli.run("up", "--engine", "swarm", "--size", "6", "--port", str(cli.port), check=True)
        status = json.loads(cli.run("status", "--json", check=True).stdout)
        placed = {i["node"] for i in status["instances"]}
        assert len(placed) >= 2 and placed & {"worker-1", "worker-2"}, status["instances"]  # spread over nodes
        text = cli.run("status", check=True).stdout
        assert " on worker-" in text, text

        rolled = cli.run("roll", "--to", "v2", "--strategy", "one-at-a-time", "--users", "20", "--warmup", "2",
                         "--cooldown", "2", "--json", timeout=900)
        report: dict[str, Any] = json.loads(rolled.stdout)
        assert report["outcome"] == "completed", rolled.stderr[-2000:]
        assert report["requests"]["dropped"] == 0 and report["requests"]["total"] > 100, report["requests"]
        started = [s for s in report["steps"] if s["phase"] == "start"]
        assert len(started) == 6 and {s.get("node") for s in started} & {"worker-1", "worker-2"}, started
        after = json.loads(cli.run("status", "--json", check=True).stdout)
        assert {i["version"] for i in after["instances"]} == {"v2"}

        busy = sandbox_cluster(engine, "down")  # a fleet still runs on the swarm: refused, nothing removed
        assert busy.returncode == 2 and "still runs" in busy.stderr, busy.stderr
        with engine.client() as c:
            assert len(cluster.Cluster(c).node_containers()) == 2
    finally:
        cli.run("down", timeout=300)
        gone = sandbox_cluster(engine, "down")
    assert gone.returncode == 0, gone.stderr
    with engine.client() as c:
        assert project_objects(c, cli.project) == []
        assert cluster_objects(c) == []
        assert swarm_state(c) == "inactive"
        assert sorted(n.name for n in c.networks.list()) == networks_before  # docker_gwbridge and ingress too
        engine_dirs = list(cluster.SOCKET_ROOT.glob(f"{str(c.info()['ID']).replace(':', '')[:12]}*"))
    assert engine_dirs == [] or not any(Path(d).iterdir() for d in engine_dirs)


def test_a_worker_lost_mid_rollout_is_named_and_the_fleet_ends_consistent(engine: PrivateEngine) -> None:
    cli = PrivateCli(project="tnodelost", port=free_port(), engine=engine)
    try:
        made = sandbox_cluster(engine, "up", "--nodes", "3")
        assert made.returncode == 0, made.stderr
        cli.run("up", "--engine", "swarm", "--size", "6", "--port", str(cli.port), check=True)
        before = json.loads(cli.run("status", "--json", check=True).stdout)["instances"]
        on_lost = sorted(i["name"] for i in before if i.get("node") == "worker-1")
        assert on_lost, before  # Swarm spread the six over the three nodes
        roll = cli.start("roll", "--to", "v2", "--strategy", "one-at-a-time", "--users", "20", "--warmup", "2",
                         "--cooldown", "2", "--json")
        wait_for_line(roll, "attach", timeout=300)  # the first new server is in: the rollout is under way
        with engine.client() as c:
            c.containers.get(cluster.container_name("worker-1")).kill()  # its engine, and its tasks, are gone
        out, err = roll.communicate(timeout=900)
        assert out.strip(), err[-4000:]
        report: dict[str, Any] = json.loads(out)
        # the rollout went on with the nodes that remain, and replaced what died with the node
        assert report["outcome"] == "completed", err[-3000:]
        lost = [f for f in report["faults"] if f["fault"] == "node_lost"]
        assert [f["node"] for f in lost] == ["worker-1"], report["faults"]
        died = [f for f in report["faults"] if f["fault"] == "died"]
        assert {d["instance"] for d in died} == set(lost[0]["servers"]) and all(d["node"] == "worker-1" for d in died)
        assert set(lost[0]["servers"]) & set(on_lost) or any(d["instance"] not in on_lost for d in died)
        assert "its node worker-1 is down" in str(died[0]["exit"])
        # counted, not hidden: what the users lost is in dropped, and no more than what went to the lost servers
        assert 0 <= lost[0]["lost_requests"] <= report["requests"]["dropped"], (lost, report["requests"])
        # a new server that died leaves its slot empty once the plan is done: one more pass fills it (an old
        # one's slot is rebuilt by the plan in its turn anyway)
        phases = [s["phase"] for s in report["steps"]]
        new_died = any(s["phase"] == "died" and s.get("version") == "v2" for s in report["steps"])
        assert phases.count("heal-start") == (1 if new_died else 0), phases
        text = cli.run("status", check=True).stdout
        after = json.loads(cli.run("status", "--json", check=True).stdout)
        running = [i for i in after["instances"] if i["state"] == "running"]
        assert len(running) == 6 and {i["version"] for i in running} == {"v2"}, text
        assert all(i["attached"] for i in running) and "worker-1" not in {i["node"] for i in running}, text
        assert sorted(after["lb"]["upstreams"]) == sorted(i["address"] for i in running), text
        # the node comes back: its engine starts again and rejoins the swarm on its own
        with engine.client() as c:
            c.containers.get(cluster.container_name("worker-1")).start()
        deadline = time.monotonic() + 120
        while True:
            nodes = {n["hostname"]: n["state"] for n in json.loads(sandbox_cluster(engine, "status", "--json").stdout)}
            if nodes.get("worker-1") == "ready":
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(2)
    finally:
        cli.run("down", timeout=300)
        sandbox_cluster(engine, "down")

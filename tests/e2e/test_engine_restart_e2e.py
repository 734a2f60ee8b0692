"""A real Docker engine restart mid-roll, on a private engine this test starts, restarts and ends.

The shared engine is never restarted (other fleets run on it): ``tests/e2e/private_engine.py``
starts a second ``dockerd`` in a network namespace of its own (why: its docstring), loads the
fleet's images into it, and every ``sandbox`` command and request of this test runs in that
namespace with ``DOCKER_HOST`` naming its socket. The engine gets SIGTERM mid-roll (by the pid it
wrote), and is started again with the same arguments once it exited, as ``systemctl restart
docker`` does. The running roll must end with one line naming it; ``status`` shows what the engine
stopped; the next ``roll`` starts the load balancer, Redis and the app servers again and completes:
every slot serves v2 through the load balancer, and sessions kept in Redis work. And when the
controller does not see the engine go (held through the restart), the same roll starts what the
engine stopped and ends with every slot serving. The host's network (``docker0``, iptables, the
shared engine's networks) is the same after as before, in each test.

It runs beside every other test: nothing of it is visible to the other fleets (its own engine,
namespace, bridges, 127.0.0.1 and iptables; the host's firewall is never written).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ImageSet
from tests.conftest import free_port
from tests.e2e.conftest import assert_passes, project_objects, wait_for_line
from tests.e2e.private_engine import PrivateCli, PrivateEngine, host_network, leaks, private_engine, started

pytestmark = pytest.mark.e2e

SIZE = 4
LOAD = ("--users", "10", "--warmup", "1", "--cooldown", "1")

def load_left(engine: PrivateEngine) -> list[str]:
    """Command lines of Locust processes still running in the engine's network namespace (where only
    this test's controllers run one)."""
    ns = os.readlink(engine.netns)
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.readlink(proc / "ns" / "net") != ns:
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "locust" in cmdline:
            found.append(cmdline)
    return found


def states(engine: PrivateEngine, project: str) -> dict[str, str]:
    """Role -> sorted states of the project's containers on the private engine."""
    with engine.client() as c:
        found: dict[str, list[str]] = {}
        for container in c.containers.list(all=True, filters=L.project_filter(project)):
            found.setdefault(container.labels[L.LABEL_ROLE], []).append(container.status)
    return {role: ",".join(sorted(s)) for role, s in found.items()}


@contextlib.contextmanager
def fleet_on_a_private_engine(client: docker.DockerClient, image_set: ImageSet) -> Iterator[PrivateCli]:
    """A private engine with a fleet of SIZE servers on v1 and shared sessions; afterwards the fleet,
    the engine and its root are gone, nothing of it is in the host's network namespace or on the
    shared engine, and the host's network is as it was."""
    host_before = host_network(client)
    project = f"t{secrets.token_hex(4)}"
    with private_engine(client, image_set.refs()) as engine:
        cli = PrivateCli(project=project, port=free_port(), engine=engine)
        try:
            cli.run("up", "--size", str(SIZE), "--port", str(cli.port), "--sessions", "shared", check=True)
            engine.record_bridges()
            assert states(engine, project) == {"lb": "running", "redis": "running", "app": ",".join(["running"] * SIZE)}
            yield cli
        finally:
            while started:
                proc = started.pop()
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=30)
            cli.run("down", timeout=300)
            with engine.client() as c:
                left = [x.name for x in c.containers.list(all=True, filters=L.project_filter(project))]
            assert left == [], left
    assert leaks(engine) == [], leaks(engine)
    assert project_objects(client, project) == []  # nothing of it ever reached the shared engine
    assert host_network(client) == host_before


def assert_every_slot_serves(cli: PrivateCli, version: str) -> None:
    """Right now: every slot one running container on ``version``, attached; the LB's set is exactly
    them; a session kept in Redis is seen by every server that answers it."""
    status = cli.json("status", "--json")
    instances = status["instances"]
    assert status["lb"]["state"] == "running" and status["stopped"] == [], status
    assert sorted(i["slot"] for i in instances) == list(range(1, SIZE + 1)), instances
    assert all(i["state"] == "running" and i["attached"] and i["version"] == version for i in instances), instances
    assert sorted(status["lb"]["upstreams"]) == sorted(i["address"] for i in instances)
    sessions = cli.client("session", "16")
    assert sessions["first"] == [7], sessions
    assert all(s["items"] == [7] and s["version"] == version and s["session"] == "resumed"
               for s in sessions["seen"]), sessions
    assert len({s["instance"] for s in sessions["seen"]}) >= 2, sessions  # kept across servers: in Redis


def test_roll_after_a_real_engine_restart_mid_roll(client: docker.DockerClient, image_set: ImageSet) -> None:
    """The controller sees the engine go: one line; `roll` afterwards starts what it stopped and completes."""
    with fleet_on_a_private_engine(client, image_set) as cli:
        engine, project = cli.engine, cli.project
        assert engine is not None
        roll = cli.start("roll", "--to", "v2", *LOAD, "--json")
        wait_for_line(roll, " attach ", timeout=180)  # slot 1 is on v2: the fleet is mixed
        engine.restart()  # SIGTERM to the pid it wrote, wait for its exit, start it again
        out, err = roll.communicate(timeout=300)
        assert roll.returncode == 1, (roll.returncode, err)
        assert "Traceback" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("sandbox: error:")]
        assert len(errors) == 1, err
        assert errors[0].startswith("sandbox: error: the Docker engine stopped answering mid-roll (stopped or "
                                    "restarted: that stops the load balancer and every server): "), errors
        assert f"`sandbox roll --to v2 --project {project}` starts them again and resumes" in errors[0], errors
        assert out == "", out  # no report: the run was cut short, not judged
        assert load_left(engine) == [], "the roll left its Locust processes running"

        # the engine stopped everything: the LB's on-failure policy does not start it after a clean exit
        stopped = states(engine, project)
        assert stopped["lb"] == "exited" and stopped["redis"] == "exited", stopped
        assert set(stopped["app"].split(",")) == {"exited"}, stopped
        status = cli.json("status", "--json")
        assert status["lb"]["state"] == "exited" and status["lb"]["upstreams"] == [], status["lb"]
        assert status["stopped"] == [{"name": f"{project}-redis", "role": "redis", "state": "exited"}], status
        assert {i["state"] for i in status["instances"]} == {"exited"}, status["instances"]
        versions = sorted(i["version"] for i in status["instances"])
        assert versions.count("v2") >= 1 and "v1" in versions, versions  # stopped mid-roll, mixed
        text = cli.run("status", check=True).stdout
        assert f"{project}-redis" in text and "`sandbox roll" in text and "starts them again first" in text, text

        resumed = cli.run("roll", "--to", "v2", *LOAD, "--json")
        said = resumed.stderr
        assert "the load balancer was exited: starting it again" in said, said
        assert f"{project}-redis was stopped (the Docker engine restarted?): started it again" in said, said
        assert "app server(s) had stopped (the Docker engine restarted?): started them again" in said, said
        assert "did not come back" not in said, said
        report = assert_passes(resumed)
        assert report["outcome"] == "completed", report["outcome"]
        assert_every_slot_serves(cli, "v2")


def test_an_engine_restart_the_roll_did_not_see_is_repaired_by_the_same_roll(
        client: docker.DockerClient, image_set: ImageSet) -> None:
    """The controller is held (SIGSTOP) through the whole restart, as a controller busy elsewhere
    would be: when it goes on, the engine answers and only the load balancer looks gone. The same roll
    says the load balancer exited, starts it, Redis and the stopped servers again, and ends with every
    slot serving one version; the outage's requests fail its verdict."""
    with fleet_on_a_private_engine(client, image_set) as cli:
        engine = cli.engine
        assert engine is not None
        roll = cli.start("roll", "--to", "v2", *LOAD, "--json")
        wait_for_line(roll, " attach ", timeout=180)
        roll.send_signal(signal.SIGSTOP)
        try:
            engine.restart()
        finally:
            roll.send_signal(signal.SIGCONT)
        out, err = roll.communicate(timeout=300)
        assert "Traceback" not in err and "sandbox: error:" not in err, err
        report = json.loads(out)
        assert "the load balancer exited" in err and "app server(s) had stopped" in err, err
        assert report["outcome"] in ("completed", "rolled_back"), (report["outcome"], err)
        (restored,) = [e for e in report["steps"] if e["phase"] == "lb-restored"]
        assert f"{cli.project}-redis" in restored["detail"]["started_again"], restored
        assert not [f for f in report["faults"] if f["fault"] == "died"], report["faults"]  # none counted dead
        failed = {c["name"] for c in report["verdict"]["checks"] if not c["pass"]}
        assert "dropped" in failed and roll.returncode == 1, (failed, roll.returncode)
        assert load_left(engine) == []
        assert_every_slot_serves(cli, "v2" if report["outcome"] == "completed" else "v1")  # right after, no repair

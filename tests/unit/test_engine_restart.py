"""A Docker engine restart mid-roll, against the fakes: the running roll ends with one line naming it
(no rollback against an engine that does not answer), and the next `roll` starts again the load
balancer, the session store and the app servers the engine stopped, then rolls on. The real engine
restart is tests/e2e/test_engine_restart_e2e.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

import docker
import pytest
import requests

from sandbox import cli
from sandbox.errors import EngineError, EngineUnreachable, exit_code_for
from sandbox.fleet import labels as L
from sandbox.fleet.engine import LbHandle
from sandbox.fleet.runtime import DockerEngine
from tests.unit.test_rehearsal import World, settings


def engine_restarted(world: World) -> None:
    """What an engine restart leaves: every container exited (no address), the load balancer too,
    and started again it has lost its attached set (NGINX's shared memory)."""
    for name, inst in list(world.runtime.containers.items()):
        world.runtime.containers[name] = replace(inst, state="exited", ip=None)
    world.runtime.lbs["p"] = replace(world.runtime.lbs["p"], state="exited")
    world.runtime.services["p-redis"] = LbHandle("p-redis", "p-redis", "exited",
                                                 labels={L.LABEL_ROLE: L.ROLE_REDIS})
    world.balancer.state.upstreams = []
    world.balancer.lost = True


@pytest.mark.asyncio
async def test_roll_after_an_engine_restart_starts_what_it_stopped_then_rolls_on() -> None:
    world = World(n=3)
    engine_restarted(world)
    result = await world.rehearse(settings())
    assert result.exit_code == 0 and result.report["outcome"] == "completed"
    log = world.runtime.log
    started = ["start_again p-lb", "start_again p-redis", "start_again a1", "start_again a2", "start_again a3"]
    assert [line for line in log if line.startswith("start_again")] == started, log
    assert log.index("start_again p-redis") < log.index("start_again a1")  # the servers' store first
    # the servers started again are what the lost set is rebuilt from, at their new addresses
    first_lb = next(line for line in log if line.startswith("lb "))
    assert first_lb.startswith("lb +a1 +a2 +a3"), log
    assert world.attached_versions() == {"v2"} and len(world.balancer.state.upstreams) == 3
    assert world.runtime.services["p-redis"].state == "running"
    said = world.stream.getvalue()
    assert "p-redis was stopped (the Docker engine restarted?): started it again" in said
    assert "3 app server(s) had stopped (the Docker engine restarted?): started them again: a1, a2, a3" in said


@pytest.mark.asyncio
async def test_a_stopped_server_that_does_not_come_back_is_removed_and_its_slot_rebuilt() -> None:
    world = World(n=3, unready=frozenset({"v1"}))
    world.runtime.containers["a1"] = replace(world.runtime.containers["a1"], version="v2")  # slot 1 was rolled
    world.balancer.attach_all()
    engine_restarted(world)
    result = await world.rehearse(settings())
    assert result.report["outcome"] == "completed", world.stream.getvalue()
    log = world.runtime.log
    assert "kill a2" in log and "kill a3" in log and "kill a1" not in log, log
    assert sorted(world.runtime.containers) == ["a1", "n2", "n3"]  # a1 kept, 2 and 3 rebuilt
    assert world.attached_versions() == {"v2"} and len(world.balancer.state.upstreams) == 3
    said = world.stream.getvalue()
    assert "a2 did not come back (a2 (v1) was not ready within" in said
    assert "the plan starts a new server in slot 2" in said


@pytest.mark.asyncio
async def test_a_set_the_load_balancer_kept_follows_a_restarted_servers_new_address() -> None:
    """Reload mode keeps its config on a volume: the names survive a restart, the addresses may not."""
    world = World(n=2, version="v2")
    for name, inst in list(world.runtime.containers.items()):
        world.runtime.containers[name] = replace(inst, state="exited", ip=None)
    result = await world.rehearse(settings())  # already on v2: nothing to roll, the fleet repaired
    assert result.exit_code == 0
    assert sorted(world.runtime.containers) == ["a1", "a2"]  # started again, not rebuilt
    assert not [line for line in world.runtime.log if line.startswith("start ")], world.runtime.log
    now = {i.name: i.address for i in world.runtime.containers.values()}
    assert {u.name: u.address for u in world.balancer.state.upstreams} == now and None not in now.values()


@pytest.mark.asyncio
async def test_an_engine_that_stops_answering_mid_roll_ends_it_in_one_line_without_a_rollback() -> None:
    world = World(n=3)
    calls = {"stop": 0}

    def engine_gone(*_: Any) -> None:
        calls["stop"] += 1
        raise EngineUnreachable("the Docker engine stopped answering: ('Connection aborted.', FileNotFoundError(2))")

    world.runtime.before["stop"] = engine_gone
    with pytest.raises(EngineUnreachable) as caught:
        await world.rehearse(settings())
    text = str(caught.value)
    assert text.startswith("the Docker engine stopped answering mid-roll (stopped or restarted: that stops the "
                           "load balancer and every server): ('Connection aborted.', FileNotFoundError(2)). "), text
    assert "\n" not in text
    assert "`sandbox roll --to v2 --project p` starts them again and resumes" in text
    assert "`sandbox status --project p` shows what is stopped" in text
    assert calls["stop"] == 1 and not [line for line in world.runtime.log if line.startswith("start 1 v1")]
    assert exit_code_for(caught.value) == 1


def test_a_cut_connection_to_the_engine_is_engine_unreachable() -> None:
    engine = DockerEngine(cast(docker.DockerClient, object()))

    def cut() -> None:
        raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2))")

    with pytest.raises(EngineUnreachable, match=r"^the Docker engine stopped answering: \('Connection aborted"):
        asyncio.run(engine._call(cut))
    assert issubclass(EngineUnreachable, EngineError)  # every caller of an EngineError still catches it


def test_status_names_what_is_stopped_and_what_starts_it(capsys: pytest.CaptureFixture[str]) -> None:
    cli._print_status({
        "project": "t1", "lb": {"url": "http://127.0.0.1:1", "state": "exited", "lb_apply": None, "upstreams": []},
        "services": {}, "steering": None,
        "stopped": [{"name": "t1-redis", "role": "redis", "state": "exited"}],
        "instances": [{"name": "t1-app-1-abc", "slot": 1, "version": "v1", "state": "exited", "address": None,
                       "attached": False}]})
    out = capsys.readouterr().out
    assert "t1-redis                     redis    exited" in out, out
    assert out.rstrip().endswith("3 container(s) of the fleet are stopped (an engine restart stops them all): "
                                 "`sandbox roll --project t1` or `sandbox rollback --project t1` starts them "
                                 "again first"), out


@pytest.mark.asyncio
async def test_an_engine_back_before_the_controller_noticed_is_repaired_in_the_same_roll() -> None:
    """The engine restarts while the first v2 server boots and answers again before the controller's
    next Docker call: its next change of the load balancer fails (the LB was stopped), and the same
    roll starts the LB, Redis and the stopped servers again (never rebuilding them), then goes on."""
    world = World(n=3)
    failures = ["the load balancer's admin listener did not answer PUT /servers: ClientConnectorError"]

    def restart(slot: int, version: str) -> None:
        if version == "v2" and "p-redis" not in world.runtime.services:
            held = list(world.balancer.state.upstreams)
            engine_restarted(world)
            world.balancer.state.upstreams, world.balancer.lost = held, False  # what this controller holds

    world.runtime.before["start"] = restart
    world.balancer.reject = lambda upstreams, changes: (
        failures.pop() if failures and "p-redis" in world.runtime.services else None)  # once, after the restart
    result = await world.rehearse(settings())
    assert result.report["outcome"] == "completed", world.stream.getvalue()
    log = world.runtime.log
    assert log.count("start_again p-lb") == 1 and "start_again p-redis" in log, log
    assert "start_again a2" in log and "start_again a3" in log, log  # started again, then replaced by the plan
    assert log.index("start_again a3") < log.index("stop a2"), log
    assert world.attached_versions() == {"v2"} and len(world.balancer.state.upstreams) == 3
    (restored,) = [e for e in result.report["steps"] if e["phase"] == "lb-restored"]
    assert restored["detail"]["started_again"] == ["p-redis", "a2", "a3"], restored


@pytest.mark.asyncio
async def test_a_server_killed_mid_roll_is_replaced_by_the_rollback_not_started_again() -> None:
    """Only an exited load balancer says the engine stopped everything: a server that died alone
    (the load balancer running) is never started again; the rollback replaces it."""
    world = World(n=3)

    def kill(slot: int, version: str) -> None:
        a3 = world.runtime.containers.get("a3")
        if version == "v2" and a3 is not None and a3.state == "running":
            world.runtime.containers["a3"] = replace(a3, state="exited", ip=None)

    world.runtime.before["start"] = kill
    result = await world.rehearse(settings())
    log = world.runtime.log
    assert not [line for line in log if line.startswith("start_again")], log
    assert result.report["outcome"] in ("completed", "rolled_back"), world.stream.getvalue()
    assert "a3" not in {u.name for u in world.balancer.state.upstreams}

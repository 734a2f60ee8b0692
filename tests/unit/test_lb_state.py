"""The dynamic LB's state, controller side: every change is compare-and-set on the generation the
controller last saw (a stale writer gets BalancerConflict and overwrites nothing), and the fleet's
record on the state volume gives a restarted or recreated LB everything back."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandbox.errors import BalancerConflict
from sandbox.fleet import labels as L
from sandbox.fleet.balancer import (
    EXPECT_HEADER,
    LIVE_CONF,
    RECORD_FILE,
    STAGING_CONF,
    NginxBalancer,
    admin_body,
    config_id,
    parse_admin_body,
)
from sandbox.fleet.loadbalancer import LbState, Upstream
from tests.unit.fakes import FakeRuntime

ROLLED = {"kind": "roll", "from": "v1", "to": "v2", "strategy": "one-at-a-time", "status": "completed"}


class FakeAdmin:
    """The admin listener of lb/dynamic.conf.j2 as a string: ``PUT /servers`` is compare-and-set."""

    def __init__(self) -> None:
        self.body = ""
        self.generation = 0
        self.expects: list[int] = []  # the generation each PUT was made on

    def restart(self) -> None:
        """NGINX started again: its shared memory is empty."""
        self.body, self.generation = "", 0

    def request(self, method: str, what: str, body: str | None, headers: dict[str, str]) -> tuple[int, str]:
        if method == "GET":
            return 200, self.body
        generation, expected = int((body or "").splitlines()[0]), int(headers[EXPECT_HEADER])
        self.expects.append(expected)
        if expected != self.generation or generation <= self.generation:
            return 409, f"conflict: the live generation is {self.generation}, the writer expected {expected}"
        self.body, self.generation = body or "", generation
        return 200, str(generation)


class Balancer(NginxBalancer):
    """NginxBalancer speaking to a FakeAdmin instead of over HTTP."""

    def __init__(self, runtime: FakeRuntime, admin: FakeAdmin) -> None:
        super().__init__(runtime, "p", 18080)  # type: ignore[arg-type]  # the fake engine, checked in test_protocols
        self.admin = admin

    async def _http(self, method: str, url: str, body: str | None, headers: dict[str, str]) -> tuple[int, str]:
        what = url.rsplit("/", 1)[1]
        if what == "config":  # the reload landed at once
            return 200, config_id(self._installed or "") or ""
        return self.admin.request(method, what, body, headers)


async def fleet() -> tuple[FakeRuntime, FakeAdmin, list[Upstream]]:
    """Two servers behind a dynamic LB started as `up --env FOO=bar` starts it, then rolled to v2."""
    runtime = FakeRuntime()
    servers = [Upstream(i.name, i.address or "", "v1") for i in runtime.up(2)]
    await runtime.start_lb("p", 18080, "lb:test", {L.LABEL_ADMIN_TOKEN: "t0k"})
    runtime.before["exec"] = lambda name, *cmd: runtime.files.__setitem__(  # nginx -t, mv, reload
        (name, LIVE_CONF), runtime.files[(name, STAGING_CONF)])
    admin = FakeAdmin()
    balancer = Balancer(runtime, admin)
    await balancer.apply([], lb_apply="dynamic", size=2, app_env={"FOO": "bar"}, rollout=None)
    await balancer.apply(servers)
    await balancer.apply(servers, rollout=ROLLED)
    return runtime, admin, servers


def fleet_facts(state: LbState) -> tuple[int, dict[str, str], dict[str, str] | None, str]:
    return state.size, state.app_env, state.rollout, state.lb_apply


@pytest.mark.asyncio
async def test_each_change_is_made_on_the_generation_last_seen() -> None:
    _, admin, _ = await fleet()
    assert admin.expects == [0, 1, 2] and admin.generation == 3


@pytest.mark.asyncio
async def test_a_stale_writer_gets_a_conflict_and_overwrites_nothing() -> None:
    runtime, admin, servers = await fleet()
    stale, fresh = Balancer(runtime, admin), Balancer(runtime, admin)
    await stale.load()
    await fresh.load()
    await fresh.apply(servers[:1])  # another controller detached a server since `stale` looked
    live = admin.body
    with pytest.raises(BalancerConflict, match="it is at generation 4, this controller expected 3"):
        await stale.apply(servers, rollout=None)
    assert admin.body == live and stale.state.rollout == ROLLED  # neither the LB nor its view changed
    await fresh.apply(servers)  # the writer that saw the live generation goes on
    assert admin.generation == 5


@pytest.mark.asyncio
async def test_a_conflict_that_would_overwrite_nothing_is_retried_once() -> None:
    runtime, admin, servers = await fleet()
    balancer = Balancer(runtime, admin)
    await balancer.load()
    admin.restart()  # mid-roll: the LB restarted, it holds nothing
    await balancer.apply(servers[:1])
    assert admin.expects[-2:] == [3, 0] and admin.generation == 4
    replay = Balancer(runtime, admin)
    await replay.load()
    same = parse_admin_body(admin.body)  # the same state under a newer generation: another PUT of it landed
    assert same is not None
    admin.body, admin.generation = admin_body(replace(same, generation=9)), 9
    await replay.apply(servers)
    assert admin.expects[-2:] == [4, 9] and admin.generation == 10


@pytest.mark.asyncio
async def test_a_restarted_lb_gets_the_fleets_facts_back_from_the_record() -> None:
    runtime, admin, servers = await fleet()
    admin.restart()
    balancer = Balancer(runtime, admin)  # a fresh process, as `roll` after `docker restart`
    state = await balancer.load()
    assert balancer.lost and state.upstreams == []
    assert fleet_facts(state) == (2, {"FOO": "bar"}, ROLLED, "dynamic")
    await balancer.repair_lost_set(await runtime.instances("p"), 2)
    again = await Balancer(runtime, admin).load()
    assert fleet_facts(again) == fleet_facts(state) and [u.address for u in again.upstreams] == [
        u.address for u in servers]


@pytest.mark.asyncio
async def test_a_recreated_lb_gets_its_config_and_the_fleets_facts_from_the_record() -> None:
    runtime, admin, _ = await fleet()
    runtime.lb_image_files = {LIVE_CONF: b"# placeholder until rolling-sandbox pushes the real config\n"}
    runtime.lbs.pop("p")  # docker rm -f: the state volume stays
    assert await runtime.recreate_lb("p", "lb:test") is not None
    admin.restart()
    balancer = Balancer(runtime, admin)
    state = await balancer.load()
    assert balancer.lost and fleet_facts(state) == (2, {"FOO": "bar"}, ROLLED, "dynamic")
    await balancer.repair_lost_set(await runtime.instances("p"), 2)
    assert "rolling-sandbox-config-id" in runtime.files[("p-lb", LIVE_CONF)].decode()  # the real config again
    assert fleet_facts(await Balancer(runtime, admin).load()) == fleet_facts(state)


@pytest.mark.asyncio
async def test_the_record_keeps_the_fleets_facts_not_its_attached_set() -> None:
    runtime, _, _ = await fleet()
    record = LbState.from_json(runtime.files[("p-lb", RECORD_FILE)].decode())
    assert (record.upstreams, record.generation) == ([], 0)
    assert fleet_facts(record) == (2, {"FOO": "bar"}, ROLLED, "dynamic")

"""The executor against the fakes: the calls each strategy makes, in order, and the fleet it leaves."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import get_args

import pytest

from sandbox.config import Settings
from sandbox.errors import BalancerError, ReadinessError
from sandbox.results.measure import measure
from sandbox.rollout import plan as planner
from sandbox.rollout.executor import ErrorRatioExceeded, Executor, Interrupted, Timing
from tests.unit.fakes import IMAGES, FakeBalancer, FakeProbe, FakeRuntime
from tests.unit.test_plan import STRATEGY_MODES

FAST = Timing(poll_s=0.001, drain_quiet_s=0.0, stop_grace_s=1.0, state_check_s=0.0)


def settings_for(n: int, strategy: str = "one-at-a-time", mode: str = "replace", batch: int = 1,
                 **extra: object) -> Settings:
    return Settings(project="p", size=n, strategy=strategy, mode=mode, batch=batch,  # type: ignore[arg-type]
                    **{"settle_s": 0, "ready_timeout": 0.05, "drain_timeout": 1, **extra})  # type: ignore[arg-type]


def fleet_and_executor(n: int, settings: Settings, unready: frozenset[str] = frozenset()
                       ) -> tuple[FakeRuntime, FakeBalancer, Executor]:
    runtime = FakeRuntime()
    runtime.up(n)
    balancer = FakeBalancer(runtime)
    balancer.attach_all()
    executor = Executor(runtime, balancer, settings, IMAGES,
                        probe=FakeProbe(runtime, unready).factory(), timing=FAST)
    return runtime, balancer, executor


async def roll(runtime: FakeRuntime, executor: Executor, settings: Settings, **kw: object) -> list[planner.Step]:
    instances, servers = await executor.fleet()
    steps = planner.merge_reloads(planner.plan(servers, planner.PlanSettings(
        settings.size, "v2", settings.strategy, settings.batch, settings.mode, detach_lag_s=settings.detach_lag_s)))
    await executor.execute(steps, "v2", env={}, from_version="v1", instances=instances, **kw)  # type: ignore[arg-type]
    return steps


def test_every_plan_action_has_a_handler() -> None:
    _, _, executor = fleet_and_executor(1, settings_for(1))
    assert executor.actions == set(get_args(planner.Action))


CALLS = [
    # (strategy, mode, n, batch, the calls made, in order)
    ("one-at-a-time", "replace", 2, 1, ["lb -a1", "stop a1", "start 1 v2", "lb +n1 -a2", "stop a2", "start 2 v2",
                                        "lb +n2"]),
    ("one-at-a-time", "in-place", 2, 1, ["lb -a1", "swap a1", "lb +a1 -a2", "swap a2", "lb +a2"]),
    ("rolling", "replace", 3, 2, ["lb -a1 -a2", "stop a1", "stop a2", "start 1 v2", "start 2 v2", "lb +n1 +n2 -a3",
                                  "stop a3", "start 3 v2", "lb +n3"]),
    ("surge", "replace", 2, 1, ["start 1 v2", "lb +n1", "lb -a1", "stop a1", "start 2 v2", "lb +n2", "lb -a2",
                                "stop a2"]),
    ("double-half", "replace", 2, 1, ["start 1 v2", "start 2 v2", "lb +n1 +n2", "lb -a1 -a2", "stop a1", "stop a2"]),
    ("blue-green", "replace", 2, 1, ["start 1 v2", "start 2 v2", "lb +n1 +n2 -a1 -a2", "stop a1", "stop a2"]),
    ("naive", "replace", 2, 1, ["kill a1", "start 1 v2", "lb +n1 -a1", "kill a2", "start 2 v2", "lb +n2 -a2"]),
    ("naive", "in-place", 2, 2, ["swap a1", "swap a2"]),
]


@pytest.mark.parametrize(("strategy", "mode", "n", "batch", "calls"), CALLS,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}x{c[3]}" for c in CALLS])
@pytest.mark.asyncio
async def test_calls_in_order(strategy: str, mode: str, n: int, batch: int, calls: list[str]) -> None:
    settings = settings_for(n, strategy, mode, batch)
    runtime, _, executor = fleet_and_executor(n, settings)
    await roll(runtime, executor, settings)
    assert runtime.log == calls


LAG_CALLS = [
    # (strategy, n, batch, the calls made with a detach lag, in order): the stop signal before each detach
    ("one-at-a-time", 2, 1, ["term a1", "lb -a1", "stop a1", "start 1 v2", "lb +n1", "term a2", "lb -a2", "stop a2",
                             "start 2 v2", "lb +n2"]),
    ("surge", 2, 1, ["start 1 v2", "lb +n1", "term a1", "lb -a1", "stop a1", "start 2 v2", "lb +n2", "term a2",
                     "lb -a2", "stop a2"]),
    ("blue-green", 2, 1, ["start 1 v2", "start 2 v2", "term a1", "term a2", "lb +n1 +n2 -a1 -a2", "stop a1",
                          "stop a2"]),
]


@pytest.mark.parametrize(("strategy", "n", "batch", "calls"), LAG_CALLS, ids=[c[0] for c in LAG_CALLS])
@pytest.mark.asyncio
async def test_a_detach_lag_signals_before_each_detach(strategy: str, n: int, batch: int, calls: list[str]) -> None:
    settings = settings_for(n, strategy, batch=batch, detach_lag_s=0.05)
    runtime, _, executor = fleet_and_executor(n, settings)
    await roll(runtime, executor, settings)
    assert runtime.log == calls
    terms = [(e["instance"], e["detail"]) for e in executor.events if e["phase"] == "term"]
    assert terms == [(f"a{i}", {"lag_s": 0.05}) for i in range(1, n + 1)]
    # the grace runs from the signal: the stop gets what the lag left of it
    assert all(grace <= FAST.stop_grace_s - 0.05 for grace in runtime.graces.values())
    stops = [(e["instance"], e["detail"]["exit_code"]) for e in executor.events if e["phase"] == "stop"]
    assert stops == [(f"a{i}", 0) for i in range(1, n + 1)]  # how each one ended


@pytest.mark.asyncio
async def test_a_server_that_exits_at_its_stop_signal_is_taken_out_and_not_probed_again() -> None:
    """APP_STOP_MODE=exit-now under a lag: it dies while attached; the next step takes it out, and
    no probe waits on its address (a gone container's address drops packets)."""
    settings = settings_for(1, detach_lag_s=0.01)
    runtime = FakeRuntime()
    (a1,) = runtime.up(1)
    balancer = FakeBalancer(runtime)
    balancer.attach_all()
    probe = FakeProbe(runtime)
    asked: list[str] = []
    answer = probe.metrics

    async def metrics(address: str) -> dict[str, float] | None:
        asked.append(address)
        return await answer(address)
    probe.metrics = metrics  # type: ignore[method-assign]
    runtime.before["term"] = lambda *_: runtime.containers.update(a1=replace(a1, state="exited"))
    executor = Executor(runtime, balancer, settings, IMAGES, probe=probe.factory(), timing=FAST)
    await roll(runtime, executor, settings)
    assert [e["phase"] for e in executor.events if e["instance"] == "a1"] == ["term", "died", "detach", "drain",
                                                                              "stop"]
    assert a1.address not in asked


SWEEP = [(strategy, mode, n, batch) for strategy, mode in STRATEGY_MODES for n in (1, 3, 4) for batch in (1, 2)]


@pytest.mark.parametrize(("strategy", "mode", "n", "batch"), SWEEP)
@pytest.mark.asyncio
async def test_final_fleet(strategy: str, mode: str, n: int, batch: int) -> None:
    settings = settings_for(n, strategy, mode, batch)
    runtime, balancer, executor = fleet_and_executor(n, settings)
    fleet_before = (await executor.fleet())[1]
    steps = await roll(runtime, executor, settings)
    live = await runtime.instances("p")
    assert [(i.slot, i.version, i.state) for i in live] == [(s, "v2", "running") for s in range(1, n + 1)]
    assert sorted(u.name for u in balancer.state.upstreams) == sorted(i.name for i in live)
    assert {u.address for u in balancer.state.upstreams} == {i.address for i in live}
    sim = planner.simulate(fleet_before, planner.PlanSettings(n, "v2", strategy, batch, mode), steps)  # type: ignore[arg-type]
    assert executor.peak == sim.peak_containers
    reloads = [s for s in steps if s.action in ("attach", "detach", "switch", "reattach")]
    assert len(balancer.applied) == len(reloads)  # one reload per step that changes the attached set
    attached = [e["instance"] for e in executor.events if e["phase"] == "attach"]
    assert len(attached) == sum(len(s.targets) for s in reloads if s.action != "detach")


@pytest.mark.asyncio
async def test_reattach_events_carry_each_side_its_own_batch() -> None:
    settings = settings_for(2)
    runtime, _, executor = fleet_and_executor(2, settings)
    await roll(runtime, executor, settings)
    batches = [(e["phase"], e["instance"], e.get("batch"))
               for e in executor.events if e["phase"] in ("attach", "detach")]
    assert batches == [("detach", "a1", 1), ("attach", "n1", 1), ("detach", "a2", 2), ("attach", "n2", 2)]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("mode", "set_env", "unready", "vanish", "message"), [
    ("replace", {}, {"v2"}, False, r"was not ready within 0.05 s .*; the last check: .*: not ready"),
    ("in-place", {}, {"v2"}, False, r"was not ready within 0.05 s .*; the last check: .*: not ready"),
    ("replace", {"APP_BOOT_FAIL": "1"}, set(), False, "stopped before it was ready: state exited"),
    ("replace", {}, {"v2"}, True, "stopped before it was ready: container is gone"),
], ids=["never-ready", "never-ready-in-place", "boot-fails", "vanishes"])
@pytest.mark.asyncio
async def test_a_server_that_is_not_ready_stops_the_rollout_before_it_is_attached(
        mode: str, set_env: dict[str, str], unready: set[str], vanish: bool, message: str) -> None:
    settings = settings_for(3, mode=mode)
    runtime, balancer, executor = fleet_and_executor(3, settings, unready=frozenset(unready))
    if vanish:
        runtime.before["refresh"] = lambda inst: runtime.vanish(inst.name) if inst.version == "v2" else None
    instances, servers = await executor.fleet()
    steps = planner.merge_reloads(planner.plan(servers, planner.PlanSettings(3, "v2", mode=mode)))  # type: ignore[arg-type]
    with pytest.raises(ReadinessError, match=message):
        await executor.execute(steps, "v2", env=set_env, from_version="v1", instances=instances)
    assert sorted(u.name for u in balancer.state.upstreams) == ["a2", "a3"]  # the rest keep serving
    assert "attach" not in [e["phase"] for e in executor.events]


@pytest.mark.asyncio
async def test_a_rejected_config_leaves_the_attached_set_as_it_was() -> None:
    settings = settings_for(2)
    runtime, balancer, executor = fleet_and_executor(2, settings)
    balancer.reject = lambda upstreams, changes: "bad" if any(u.name == "n1" for u in upstreams) else None
    with pytest.raises(BalancerError, match="rejected"):
        await roll(runtime, executor, settings)
    assert [u.name for u in balancer.state.upstreams] == ["a2"]
    assert runtime.log[-1] == "lb +n1 -a2"


@pytest.mark.parametrize("when", ["stop", "start"])
@pytest.mark.asyncio
async def test_a_stop_request_finishes_the_batch_under_way_then_raises(when: str) -> None:
    """Every slot ends with its server attached; the next batch does not start (its detach is dropped)."""
    settings = settings_for(2)
    runtime, balancer, executor = fleet_and_executor(2, settings)
    runtime.before[when] = lambda *args: executor.stop_requested.set()
    with pytest.raises(Interrupted):
        await roll(runtime, executor, settings)
    assert runtime.log[-3:] == ["stop a1", "start 1 v2", "lb +n1"]
    assert sorted(u.name for u in balancer.state.upstreams) == ["a2", "n1"]


@pytest.mark.asyncio
async def test_the_health_check_stops_the_rollout_between_steps() -> None:
    settings = settings_for(3)
    runtime, _, executor = fleet_and_executor(3, settings)
    calls = []

    def health() -> str | None:
        calls.append(1)
        return "error ratio 60.0%" if len(calls) > 4 else None

    with pytest.raises(ErrorRatioExceeded, match=r"error ratio 60\.0%"):
        await roll(runtime, executor, settings, health=health)
    assert runtime.log == ["lb -a1", "stop a1", "start 1 v2"]  # 4 steps ran: detach, drain, stop, start


@pytest.mark.parametrize(("counts_seen", "drain_timeout", "timed_out"), [
    ([3, 2, 0], 1.0, False),  # drained as soon as the LB counts nothing in flight to it
    ([0], 1.0, False),
    ([5] * 1000, 0.05, True),  # still busy at the deadline: the drain says it timed out
])
@pytest.mark.asyncio
async def test_dynamic_drain_ends_on_the_lb_count(counts_seen: list[int], drain_timeout: float,
                                                  timed_out: bool) -> None:
    settings = settings_for(1, drain_timeout=drain_timeout)
    runtime, balancer, executor = fleet_and_executor(1, settings)
    balancer.state.lb_apply = "dynamic"
    (inst,) = runtime.containers.values()
    seen = iter(counts_seen)

    async def counts() -> dict[str, int]:
        return {inst.address or "": next(seen, counts_seen[-1])}

    balancer.in_flight = counts  # type: ignore[method-assign]
    await roll(runtime, executor, settings)
    (drain,) = [e for e in executor.events if e["phase"] == "drain"]
    assert drain["detail"]["signal"] == "lb"
    assert drain["detail"]["in_flight"] == counts_seen[0]
    assert drain["detail"]["timed_out"] is timed_out


@pytest.mark.asyncio
async def test_an_attached_server_that_died_is_taken_out_and_named() -> None:
    """`docker kill` of a serving old server mid-rollout: the next step takes it out with a
    `died` event on the address the LB used, and the rollout still completes."""
    settings = settings_for(3)
    runtime, balancer, executor = fleet_and_executor(3, settings)
    a3 = runtime.containers["a3"]

    def kill_a3(*_: object) -> None:
        runtime.containers["a3"] = dataclasses.replace(a3, state="exited", ip=None)
        del runtime.before["start"]  # once
    runtime.before["start"] = kill_a3  # dies while slot 1 is being rebuilt
    await roll(runtime, executor, settings)
    died = [e for e in executor.events if e["phase"] == "died"]
    assert [(e["instance"], e["address"]) for e in died] == [("a3", a3.address)]
    assert "lb -a3" in runtime.log
    assert {i.version for i in runtime.containers.values()} == {"v2"}
    assert sorted(u.name for u in balancer.state.upstreams) == ["n1", "n2", "n3"]


@pytest.mark.asyncio
async def test_nothing_died_nothing_is_taken_out() -> None:
    settings = settings_for(2)
    runtime, _, executor = fleet_and_executor(2, settings)
    await roll(runtime, executor, settings)
    assert not [e for e in executor.events if e["phase"] == "died"]


@pytest.mark.asyncio
async def test_a_new_server_that_died_after_ready_is_never_attached() -> None:
    settings = settings_for(2)
    runtime, balancer, executor = fleet_and_executor(2, settings)

    async def kill_before_attach(step: planner.Step) -> None:
        if step.action in ("attach", "reattach") and "n1" in runtime.containers:
            runtime.containers["n1"] = dataclasses.replace(runtime.containers["n1"], state="exited")
    executor.before_step = kill_before_attach
    with pytest.raises(ReadinessError, match=r"n1 .* stopped after it was ready, before it was attached"):
        await roll(runtime, executor, settings)
    assert "n1" not in {u.name for u in balancer.state.upstreams}
    assert [e["instance"] for e in executor.events if e["phase"] == "died"] == ["n1"]


@pytest.mark.asyncio
async def test_a_rollback_replaces_an_old_server_that_died_with_a_fresh_one() -> None:
    """An old server killed mid-roll, the roll stopped (error ratio): the rollback planned from
    the fleet as it is starts a fresh v1 in the dead server's slot and removes the dead one;
    every slot ends attached on v1 and nothing waits on the dead container."""
    settings = settings_for(3)
    runtime, balancer, executor = fleet_and_executor(3, settings)
    a3 = runtime.containers["a3"]
    runtime.before["start"] = lambda *_: runtime.containers.update(a3=dataclasses.replace(a3, state="exited", ip=None))
    steps = 0

    def unhealthy() -> str | None:
        nonlocal steps
        steps += 1
        return "error ratio" if steps > 4 else None  # after slot 1's start: its ready and attach still run
    with pytest.raises(ErrorRatioExceeded):
        await roll(runtime, executor, settings, health=unhealthy)
    assert [e["instance"] for e in executor.events if e["phase"] == "died"] == ["a3"]  # named before it stopped
    del runtime.before["start"]
    instances, servers = await executor.fleet()
    assert [(s.id, s.alive) for s in servers if s.slot == 3] == [("a3", False)]
    back = planner.merge_reloads(planner.plan(servers, planner.PlanSettings(3, "v1")))
    planner.validate(servers, planner.PlanSettings(3, "v1"), back)
    await executor.execute(back, "v1", env={}, from_version="v2", instances=instances)
    assert "stop a3" in runtime.log and "start 3 v1" in runtime.log
    assert sorted((i.slot, i.version, i.state) for i in runtime.containers.values()) == [
        (1, "v1", "running"), (2, "v1", "running"), (3, "v1", "running")]
    assert sorted(u.name for u in balancer.state.upstreams) == sorted(runtime.containers)


@pytest.mark.asyncio
async def test_a_load_balancer_that_exited_is_started_again_with_the_fleets_state() -> None:
    """The LB container killed mid-roll: the step that found it gone says so, starts it again,
    pushes the attached set it had, runs again, and the roll completes; the events span the outage."""
    settings = settings_for(2)
    runtime, balancer, executor = fleet_and_executor(2, settings)
    def kill_lb(*_: object) -> None:  # once: the engine's snapshot of it says it exited
        if "start_again p-lb" not in runtime.log:
            runtime.lbs["p"] = replace(runtime.lbs["p"], state="exited", exit_code=137)

    runtime.before["stop"] = kill_lb
    balancer.reject = lambda upstreams, changes: ("admin listener did not answer"
                                                  if runtime.lbs["p"].state != "running" else None)
    await roll(runtime, executor, settings)
    assert runtime.lbs["p"].state == "running" and runtime.log.count("start_again p-lb") == 1
    at = runtime.log.index("start_again p-lb")
    assert runtime.log[at + 1:at + 3] == ["lb forget", "lb"]  # the set it had, pushed as it was
    assert sorted(u.name for u in balancer.state.upstreams) == ["n1", "n2"]
    phases = [e["phase"] for e in executor.events]
    assert phases.index("lb-exited") < phases.index("lb-restored")
    (exited,) = [e for e in executor.events if e["phase"] == "lb-exited"]
    assert exited["detail"]["exit_code"] == 137
    (restored,) = [e for e in executor.events if e["phase"] == "lb-restored"]
    assert restored["detail"]["outage_s"] >= 0 and restored["detail"]["attached"] == 1


@pytest.mark.asyncio
async def test_a_balancer_error_with_the_lb_running_is_not_retried() -> None:
    settings = settings_for(2)
    runtime, balancer, executor = fleet_and_executor(2, settings)
    balancer.reject = lambda upstreams, changes: "no_such_directive"
    with pytest.raises(BalancerError, match="no_such_directive"):
        await roll(runtime, executor, settings)
    assert "start_again p-lb" not in runtime.log and not [e for e in executor.events if e["phase"] == "lb-exited"]


@pytest.mark.asyncio
async def test_a_reload_mode_drain_with_no_metrics_says_so_and_counts_as_not_drained() -> None:
    runtime, balancer, _ = fleet_and_executor(2, settings_for(2))
    assert not balancer.dynamic

    async def no_metrics(address: str) -> None:
        return None  # an app without /metrics

    probe = FakeProbe(runtime)
    probe.metrics = no_metrics  # type: ignore[method-assign]
    executor = Executor(runtime, balancer, settings_for(2), IMAGES, probe=probe.factory(), timing=FAST)
    await roll(runtime, executor, settings_for(2))
    drains = [e for e in executor.events if e["phase"] == "drain"]
    assert len(drains) == 2
    assert all(e["detail"]["timed_out"] is True and e["detail"]["reason"] ==
               "skipped: the app has no /metrics to drain by" for e in drains)
    assert measure([], executor.events).drains_timed_out == 2


@pytest.mark.asyncio
async def test_a_reload_mode_drain_of_a_server_that_no_longer_answers_is_drained() -> None:
    runtime, balancer, _ = fleet_and_executor(2, settings_for(2))
    probe = FakeProbe(runtime)

    async def gone(address: str) -> bool:
        return False  # it is dead: nothing can be in flight there

    async def no_metrics(address: str) -> None:
        return None

    probe.accepts = gone  # type: ignore[method-assign]
    probe.metrics = no_metrics  # type: ignore[method-assign]
    executor = Executor(runtime, balancer, settings_for(2), IMAGES, probe=probe.factory(), timing=FAST)
    await roll(runtime, executor, settings_for(2))
    drains = [e for e in executor.events if e["phase"] == "drain"]
    assert [e["detail"]["timed_out"] for e in drains] == [False, False]
    assert all("reason" not in e["detail"] for e in drains)


@pytest.mark.asyncio
async def test_attaching_servers_that_turned_ready_at_once_inspects_no_container() -> None:
    """Before an attach the executor lists the containers once (one engine call for a whole batch),
    and a server ready at its first probe is never inspected: each inspection is work for the
    engine the serving servers share (bench/BOOT_COST.md)."""
    settings = settings_for(4, "double-half")
    runtime, balancer, executor = fleet_and_executor(4, settings)
    inspected: list[str] = []
    runtime.before["refresh"] = lambda inst: inspected.append(inst.name)
    await roll(runtime, executor, settings)
    assert inspected == []
    assert {u.version for u in balancer.state.upstreams} == {"v2"}

"""The canary's plan: servers per weight, the steps of each weight, the limits, the settings."""

from __future__ import annotations

import pytest

from sandbox.config import Settings
from sandbox.errors import UsageError
from sandbox.fleet.balancer import canary_body
from sandbox.fleet.loadbalancer import LbState, Upstream
from sandbox.rollout.canary import plan_note, reload_note
from sandbox.rollout.plan import PlanError, PlanSettings, Server, limits, plan, simulate, validate
from sandbox.rollout.strategies import canary_new, canary_old, check_weights


def fleet_of(n: int) -> list[Server]:
    return [Server(f"a{i}", i, "v1", True) for i in range(1, n + 1)]


# (size) -> new and old servers at 5, 25, 50 %, then the most containers at once
TABLE = {
    1: ([(1, 1), (1, 1), (1, 1)], 2),
    2: ([(1, 2), (1, 2), (1, 1)], 3),
    3: ([(1, 3), (1, 3), (2, 2)], 5),
    4: ([(1, 4), (1, 3), (2, 2)], 6),
    5: ([(1, 5), (2, 4), (3, 3)], 8),
    6: ([(1, 6), (2, 5), (3, 3)], 9),
    7: ([(1, 7), (2, 6), (4, 4)], 11),
    8: ([(1, 8), (2, 6), (4, 4)], 12),
    9: ([(1, 9), (3, 7), (5, 5)], 14),
}


@pytest.mark.parametrize("size", sorted(TABLE))
def test_servers_per_weight_and_the_plan_for_sizes_1_to_9(size: int) -> None:
    counts, peak = TABLE[size]
    assert [(canary_new(size, w), canary_old(size, w)) for w in (5, 25, 50)] == counts
    assert (canary_new(size, 100), canary_old(size, 100)) == (size, 0)
    fleet, settings = fleet_of(size), PlanSettings(size, "v2", "canary")
    steps = plan(fleet, settings)
    validate(fleet, settings, steps)
    sim = simulate(fleet, settings, steps)
    assert (sim.peak_containers, sim.min_serving, sim.batches) == (peak, size, 4)
    assert limits(settings) == (0, peak - size)
    # after each step's batch: the new servers attached, the old ones the weight still needs
    for k, (new, old) in enumerate(counts, 1):
        done = simulate(fleet, settings, [s for s in steps if s.batch_no <= k]).fleet
        assert sum(s.version == "v2" and s.attached for s in done) == new
        assert sum(s.version == "v1" and s.attached for s in done) == old


@pytest.mark.parametrize("weights", [(5, 25, 50, 100), (10, 100), (100,), (1, 2, 3, 100), (50, 100),
                                     (33, 66, 100), (20, 40, 60, 80, 100)])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 9])
def test_every_step_list_converges_within_its_limits(weights: tuple[int, ...], size: int) -> None:
    fleet, settings = fleet_of(size), PlanSettings(size, "v2", "canary", weights=weights)
    steps = plan(fleet, settings)
    validate(fleet, settings, steps)
    sim = simulate(fleet, settings, steps)
    assert sim.min_serving == size and sim.batches == len(weights)
    assert sim.peak_containers <= size + limits(settings)[1]
    # a step starts new servers before it stops old ones: never the other way round
    for batch in {s.batch_no for s in steps}:
        actions = [s.action for s in steps if s.batch_no == batch]
        if "start" in actions and "stop" in actions:
            assert actions.index("attach") < actions.index("detach")


def test_a_resumed_canary_counts_the_new_servers_it_has() -> None:
    fleet = [Server("n1", 1, "v2", True), Server("a1", 1, "v1", True), *fleet_of(9)[1:]]
    settings = PlanSettings(9, "v2", "canary")
    steps = plan(fleet, settings)
    validate(fleet, settings, steps)
    assert not [s for s in steps if s.batch_no > 1 and s.action == "start" and any(r.slot == 1 for r in s.targets)]


@pytest.mark.parametrize("weights", [(), (0, 100), (5, 5, 100), (50, 25, 100), (5, 50), (101,), (5.5, 100)])
def test_bad_weights_are_refused(weights: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        check_weights(weights)
    with pytest.raises(PlanError, match="weights"):
        plan(fleet_of(3), PlanSettings(3, "v2", "canary", weights=weights))


@pytest.mark.parametrize(("values", "named"), [
    ({"steps": "5,x,100"}, "steps"),
    ({"steps": "5,50"}, "steps"),
    ({"steps": "50,25,100"}, "steps"),
    ({"step_pause": "0s"}, "step_pause"),
    ({"step_pause": "soon"}, "step_pause"),
    ({"max_step_extensions": -1}, "max_step_extensions"),
    ({"sticky_canary": True, "strategy": "one-at-a-time"}, "sticky_canary"),
])
def test_bad_canary_settings_name_the_setting(values: dict[str, object], named: str) -> None:
    with pytest.raises(UsageError, match=f"^{named}: "):
        Settings(**values)  # type: ignore[arg-type]


def test_canary_settings_parse() -> None:
    s = Settings(strategy="canary", steps="10, 50,100", step_pause="manual", sticky_canary=True)
    assert (s.canary_weights, s.step_pause_s) == ((10, 50, 100), None)
    assert Settings(step_pause="1m").step_pause_s == 60.0
    assert Settings().canary_weights == (5, 25, 50, 100)


def test_the_balancers_canary_body() -> None:
    ups = [Upstream("a", "10.0.0.2:8000", "v1"), Upstream("b", "10.0.0.3:8000", "v2")]
    old = LbState(upstreams=ups[:1])
    new = LbState(upstreams=ups, canary={"version": "v2", "weight": 5, "sticky": True})
    assert canary_body(new, old) == "500 1\n10.0.0.3:8000\n"
    # a canary server leaving still counts as the canary's until the set without it has landed
    assert canary_body(LbState(upstreams=ups[:1], canary={"version": "v2", "weight": 0}), new) == "0 0\n10.0.0.3:8000\n"
    assert canary_body(LbState(upstreams=ups), new) == ""
    assert "canary" not in LbState().to_json() and LbState.from_json(new.to_json()).canary == new.canary


def test_reload_mode_says_what_it_gives_instead_of_weights() -> None:
    note = reload_note(9, (5, 25, 50, 100))
    assert note.startswith("--lb-apply reload: no weights")
    assert "5: 1 of 10 (10 %)" in note and "50: 5 of 10 (50 %)" in note and "100:" not in note
    assert "--sticky-canary need --lb-apply dynamic" in note


def test_the_plan_says_the_servers_and_the_hold_of_each_step() -> None:
    assert plan_note(9, (5, 25, 50, 100), "30s") == (
        "canary: 5 % (1 new, 9 old), 25 % (3 new, 7 old), 50 % (5 new, 5 old), 100 % (9 new, 0 old); "
        "each step below 100 % held 30s (--step-pause), then its analysis decides")
    assert "held until `sandbox promote`" in plan_note(3, (50, 100), "manual")

"""Table-driven tests of the pure planner: every plan is replayed through validate()."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from sandbox.errors import SandboxError
from sandbox.rollout.plan import (
    PlanError,
    PlanSettings,
    Ref,
    Server,
    Step,
    limits,
    merge_reloads,
    plan,
    simulate,
    validate,
    wind_down,
)
from sandbox.rollout.strategies import REGISTRY, canary_new, canary_old

# The invariant sweep: one row per strategy of the registry (a new strategy adds its row here).
# For a uniform roll of n servers, b = min(batch, n): (batches, peak containers, fewest serving slots,
# reloads merge_reloads saves between batches).
SHAPES: dict[str, Callable[[int, int], tuple[int, int, int, int]]] = {
    "one-at-a-time": lambda n, b: (n, n, n - 1, n - 1),
    "rolling": lambda n, b: (math.ceil(n / b), n, n - b, math.ceil(n / b) - 1),
    "naive": lambda n, b: (math.ceil(n / b), n, n - b, 0),
    "surge": lambda n, b: (math.ceil(n / b), n + b, n, 0),
    "double-half": lambda n, b: (1, 2 * n, n, 0),
    "blue-green": lambda n, b: (1, 2 * n, n, 0),
    # --steps 5,25,50,100: one batch per step; the most containers while the last step starts its
    # new servers beside the old ones of 50 % (tests/unit/test_canary_plan.py has the table)
    "canary": lambda n, b: (4, _canary_peak(n), n, _canary_merges(n)),
}

def _canary_counts(n: int) -> list[tuple[int, int]]:
    """(new, old) servers at each of the default canary steps, the start (0, n) first."""
    return [(0, n)] + [(canary_new(n, w), canary_old(n, w)) for w in (5, 25, 50, 100)]


def _canary_peak(n: int) -> int:
    """Each step starts its new servers before it stops old ones: new of the step plus old of the one before."""
    counts = _canary_counts(n)
    return max(new + old for (new, _), (_, old) in zip(counts[1:], counts, strict=False))


def _canary_merges(n: int) -> int:
    """Reattaches merge_reloads makes: a step that only starts, followed by one that only stops
    (the rehearsal runs a canary unmerged, so that each weight is held where the plan says)."""
    counts = _canary_counts(n)
    kinds = [(b[0] > a[0], b[1] < a[1]) for a, b in itertools.pairwise(counts)]  # (starts, stops) per step
    busy = [k for k in kinds if any(k)]
    return sum(1 for a, b in itertools.pairwise(busy) if a[0] and not a[1] and not b[0] and b[1])


STRATEGY_MODES = [
    (name, mode) for name, strategy in REGISTRY.items() for mode in ("replace", "in-place")
    if mode == "replace" or strategy.in_place
]


def fleet_of(n: int, version: str = "v1", prefix: str = "a") -> list[Server]:
    """A uniform fleet: slot i holds container f'{prefix}{i}', attached."""
    return [Server(f"{prefix}{i}", i, version, True) for i in range(1, n + 1)]


def render(steps: list[Step]) -> list[str]:
    """Steps as 'batch action targets [-detached]'; a new container of slot s reads 'new<s>'."""

    def names(refs: tuple[Ref, ...]) -> str:
        return ",".join(r.id if r.id is not None else f"new{r.slot}" for r in refs)

    def detach(s: Step) -> str:
        if not s.detach:
            return ""
        return f" -{names(s.detach)}" + (f"@{s.detach_batch}" if s.detach_batch is not None else "")

    return [f"{s.batch_no} {s.action} {names(s.targets)}{detach(s)}" for s in steps]


# --------------------------------------------------------------------------- every strategy


def test_the_sweep_has_one_row_per_registered_strategy():
    assert sorted(SHAPES) == sorted(REGISTRY)
    assert ("one-at-a-time", "in-place") in STRATEGY_MODES and ("surge", "in-place") not in STRATEGY_MODES


SWEEP = [
    (strategy, mode, n, batch)
    for strategy, mode in STRATEGY_MODES
    for n in range(1, 13)
    for batch in sorted({1, 2, 3, 5, n, n + 3})
]


@pytest.mark.parametrize(("strategy", "mode", "n", "batch"), SWEEP)
def test_uniform_roll_validates_with_expected_shape(strategy, mode, n, batch):
    fleet = fleet_of(n)
    settings = PlanSettings(n, "v2", strategy, batch, mode)
    steps = plan(fleet, settings)
    validate(fleet, settings, steps)
    sim = simulate(fleet, settings, steps)
    batches, peak, fewest, between_batches = SHAPES[strategy](n, min(batch, n))
    assert (sim.batches, sim.peak_containers, sim.min_serving) == (batches, peak, fewest)
    assert sorted((s.slot, s.version) for s in sim.fleet) == [(i, "v2") for i in range(1, n + 1)]
    if mode == "in-place":  # same containers, new code
        assert sorted(s.id for s in sim.fleet) == sorted(s.id for s in fleet)
    # what runs: the same plan with one reload between batches, checked the same way
    merged = merge_reloads(steps)
    validate(fleet, settings, merged)
    merged_sim = simulate(fleet, settings, merged)
    assert (merged_sim.batches, merged_sim.peak_containers, merged_sim.min_serving) == (
        sim.batches, sim.peak_containers, sim.min_serving)
    assert merged_sim.fleet == sim.fleet
    assert sum(s.action == "reattach" for s in merged) == between_batches
    assert len(merged) == len(steps) - between_batches


@pytest.mark.parametrize(
    ("strategy", "n", "batch", "batches", "peak"),
    [
        ("one-at-a-time", 9, 1, 9, 9),
        ("rolling", 9, 3, 3, 9),
        ("rolling", 9, 2, 5, 9),
        ("rolling", 9, 12, 1, 9),
        ("surge", 9, 2, 5, 11),
        ("surge", 9, 3, 3, 12),
        ("double-half", 9, 1, 1, 18),
        ("blue-green", 9, 1, 1, 18),
        ("naive", 9, 1, 9, 9),
    ],
)
def test_classic_nine_server_fleet(strategy, n, batch, batches, peak):
    settings = PlanSettings(n, "v2", strategy, batch)
    sim = simulate(fleet_of(n), settings, plan(fleet_of(n), settings))
    assert (sim.batches, sim.peak_containers) == (batches, peak)


@pytest.mark.parametrize(
    ("strategy", "n", "batch", "expected"),
    [
        ("one-at-a-time", 9, 7, (1, 0)),
        ("rolling", 9, 3, (3, 0)),
        ("rolling", 4, 10, (4, 0)),
        ("surge", 9, 2, (0, 2)),
        ("surge", 4, 10, (0, 4)),
        ("double-half", 9, 1, (0, 9)),
        ("blue-green", 9, 1, (0, 9)),
        ("naive", 9, 1, (1, 0)),
        ("naive", 9, 3, (3, 0)),
    ],
)
def test_limits(strategy, n, batch, expected):
    assert limits(PlanSettings(n, "v2", strategy, batch)) == expected


# --------------------------------------------------------------------------- exact sequences


@pytest.mark.parametrize(
    ("n", "strategy", "batch", "mode", "expected"),
    [
        (2, "one-at-a-time", 1, "replace", [
            "1 detach a1", "1 drain a1", "1 stop a1", "1 start new1", "1 ready new1", "1 attach new1",
            "2 detach a2", "2 drain a2", "2 stop a2", "2 start new2", "2 ready new2", "2 attach new2",
        ]),
        (2, "one-at-a-time", 1, "in-place", [
            "1 detach a1", "1 drain a1", "1 swap a1", "1 ready a1", "1 attach a1",
            "2 detach a2", "2 drain a2", "2 swap a2", "2 ready a2", "2 attach a2",
        ]),
        (3, "rolling", 2, "replace", [
            "1 detach a1,a2", "1 drain a1,a2", "1 stop a1,a2",
            "1 start new1,new2", "1 ready new1,new2", "1 attach new1,new2",
            "2 detach a3", "2 drain a3", "2 stop a3", "2 start new3", "2 ready new3", "2 attach new3",
        ]),
        (2, "surge", 1, "replace", [
            "1 start new1", "1 ready new1", "1 attach new1", "1 detach a1", "1 drain a1", "1 stop a1",
            "2 start new2", "2 ready new2", "2 attach new2", "2 detach a2", "2 drain a2", "2 stop a2",
        ]),
        (2, "double-half", 1, "replace", [
            "1 start new1,new2", "1 ready new1,new2", "1 attach new1,new2",
            "1 detach a1,a2", "1 drain a1,a2", "1 stop a1,a2",
        ]),
        (2, "blue-green", 1, "replace", [
            "1 start new1,new2", "1 ready new1,new2", "1 switch new1,new2 -a1,a2",
            "1 drain a1,a2", "1 stop a1,a2",
        ]),
        (2, "naive", 1, "replace", [
            "1 kill a1", "1 start new1", "1 ready new1", "1 switch new1 -a1",
            "2 kill a2", "2 start new2", "2 ready new2", "2 switch new2 -a2",
        ]),
        (2, "naive", 2, "in-place", ["1 swap a1,a2", "1 ready a1,a2"]),
    ],
)
def test_exact_sequence(n, strategy, batch, mode, expected):
    settings = PlanSettings(n, "v2", strategy, batch, mode)
    steps = plan(fleet_of(n), settings)
    assert render(steps) == expected
    validate(fleet_of(n), settings, steps)


MERGED_CASES = [
    # (name, fleet, settings, expected merged steps)
    ("one-at-a-time", fleet_of(3), PlanSettings(3, "v2"), [
        "1 detach a1", "1 drain a1", "1 stop a1", "1 start new1", "1 ready new1", "1 reattach new1 -a2@2",
        "2 drain a2", "2 stop a2", "2 start new2", "2 ready new2", "2 reattach new2 -a3@3",
        "3 drain a3", "3 stop a3", "3 start new3", "3 ready new3", "3 attach new3",
    ]),
    ("in-place", fleet_of(2), PlanSettings(2, "v2", mode="in-place"), [
        "1 detach a1", "1 drain a1", "1 swap a1", "1 ready a1", "1 reattach a1 -a2@2",
        "2 drain a2", "2 swap a2", "2 ready a2", "2 attach a2",
    ]),
    ("surge keeps attach and detach apart", fleet_of(2), PlanSettings(2, "v2", "surge"), [
        "1 start new1", "1 ready new1", "1 attach new1", "1 detach a1", "1 drain a1", "1 stop a1",
        "2 start new2", "2 ready new2", "2 attach new2", "2 detach a2", "2 drain a2", "2 stop a2",
    ]),
    ("settle, then the first batch", [Server("b1", 1, "v2", False), Server("a2", 2, "v1", True)], PlanSettings(2, "v2"), [
        "1 ready b1", "1 reattach b1 -a2@2", "2 drain a2", "2 stop a2", "2 start new2", "2 ready new2",
        "2 attach new2",
    ]),
    ("naive switches are left alone", fleet_of(2), PlanSettings(2, "v2", "naive"), [
        "1 kill a1", "1 start new1", "1 ready new1", "1 switch new1 -a1",
        "2 kill a2", "2 start new2", "2 ready new2", "2 switch new2 -a2",
    ]),
]


@pytest.mark.parametrize(("fleet", "settings", "expected"), [c[1:] for c in MERGED_CASES],
                         ids=[c[0] for c in MERGED_CASES])
def test_merged_sequence(fleet, settings, expected):
    merged = merge_reloads(plan(fleet, settings))
    assert render(merged) == expected
    validate(fleet, settings, merged)


LAG_CASES = [
    # (name, fleet, settings, expected merged steps): 'term' (the stop signal, then the lag) before each
    # detach of a server the plan stops; the detach no longer follows an attach, so nothing merges
    ("one-at-a-time", fleet_of(2), PlanSettings(2, "v2", detach_lag_s=2), [
        "1 term a1", "1 detach a1", "1 drain a1", "1 stop a1", "1 start new1", "1 ready new1", "1 attach new1",
        "2 term a2", "2 detach a2", "2 drain a2", "2 stop a2", "2 start new2", "2 ready new2", "2 attach new2",
    ]),
    ("surge", fleet_of(1), PlanSettings(1, "v2", "surge", detach_lag_s=2), [
        "1 start new1", "1 ready new1", "1 attach new1", "1 term a1", "1 detach a1", "1 drain a1", "1 stop a1",
    ]),
    ("blue-green", fleet_of(2), PlanSettings(2, "v2", "blue-green", detach_lag_s=2), [
        "1 start new1,new2", "1 ready new1,new2", "1 term a1,a2", "1 switch new1,new2 -a1,a2",
        "1 drain a1,a2", "1 stop a1,a2",
    ]),
    ("settle: only the attached surplus waits",
     [Server("b1", 1, "v2", True), Server("a1", 1, "v1", True), Server("a9", 1, "v1", False)],
     PlanSettings(1, "v2", detach_lag_s=2), ["1 term a1", "1 detach a1", "1 drain a1,a9", "1 stop a1,a9"]),
]


@pytest.mark.parametrize(("fleet", "settings", "expected"), [c[1:] for c in LAG_CASES], ids=[c[0] for c in LAG_CASES])
def test_a_detach_lag_signals_first(fleet, settings, expected):
    merged = merge_reloads(plan(fleet, settings))
    assert render(merged) == expected
    validate(fleet, settings, merged)


@pytest.mark.parametrize(("strategy", "n", "batch"), [
    (strategy, n, batch) for strategy, mode in STRATEGY_MODES if mode == "replace" and REGISTRY[strategy].graceful
    for n in (1, 3, 9) for batch in (1, 2, n)])
def test_a_detach_lag_keeps_the_shape_and_signals_every_removed_server(strategy, n, batch):
    fleet = fleet_of(n)
    plain, lagged = PlanSettings(n, "v2", strategy, batch), PlanSettings(n, "v2", strategy, batch, detach_lag_s=2)
    steps = plan(fleet, lagged)
    validate(fleet, lagged, steps)
    validate(fleet, lagged, merge_reloads(steps))
    without = simulate(fleet, plain, plan(fleet, plain))
    sim = simulate(fleet, lagged, steps)
    assert (sim.batches, sim.peak_containers, sim.min_serving) == (
        without.batches, without.peak_containers, without.min_serving)
    signalled = [r.id for s in steps if s.action == "term" for r in s.targets]
    assert sorted(signalled) == sorted(s.id for s in fleet)  # each old server once
    assert [s for s in steps if s.action != "term"] == plan(fleet, plain)


# --------------------------------------------------------------------------- resuming


def v1(id_: str, slot: int, attached: bool = True) -> Server:
    return Server(id_, slot, "v1", attached)


def v2(id_: str, slot: int, attached: bool = True) -> Server:
    return Server(id_, slot, "v2", attached)


RESUME_CASES = [
    # (name, fleet, settings, expected steps)
    ("converged", [v2("b1", 1), v2("b2", 2)], PlanSettings(2, "v2"), []),
    ("converged-surge", [v2("b1", 1), v2("b2", 2)], PlanSettings(2, "v2", "surge", 2), []),
    ("half-rolled", [v2("b1", 1), v2("b2", 2), v1("a3", 3), v1("a4", 4)], PlanSettings(4, "v2", "rolling", 2), [
        "1 detach a3,a4", "1 drain a3,a4", "1 stop a3,a4", "1 start new3,new4", "1 ready new3,new4", "1 attach new3,new4",
    ]),
    ("two-in-slot: new not attached yet", [v1("a1", 1), v2("b1", 1, False), v1("a2", 2)], PlanSettings(2, "v2", "surge"), [
        "1 ready b1", "1 attach b1", "1 detach a1", "1 drain a1", "1 stop a1",
        "2 start new2", "2 ready new2", "2 attach new2", "2 detach a2", "2 drain a2", "2 stop a2",
    ]),
    ("two-in-slot: both attached", [v1("a1", 1), v2("b1", 1), v2("b2", 2)], PlanSettings(2, "v2", "surge"), [
        "1 detach a1", "1 drain a1", "1 stop a1",
    ]),
    ("two-in-slot: old detached", [v1("a1", 1, False), v2("b1", 1), v2("b2", 2)], PlanSettings(2, "v2"), [
        "1 drain a1", "1 stop a1",
    ]),
    ("two-in-slot: blue-green switches", [v1("a1", 1), v2("b1", 1, False)], PlanSettings(1, "v2", "blue-green"), [
        "1 ready b1", "1 switch b1 -a1", "1 drain a1", "1 stop a1",
    ]),
    ("missing slot", [v1("a1", 1), v1("a3", 3)], PlanSettings(3, "v2"), [
        "1 start new2", "1 ready new2", "1 attach new2",
        "2 detach a1", "2 drain a1", "2 stop a1", "2 start new1", "2 ready new1", "2 attach new1",
        "3 detach a3", "3 drain a3", "3 stop a3", "3 start new3", "3 ready new3", "3 attach new3",
    ]),
    ("missing slot, in-place", [v1("a1", 1)], PlanSettings(2, "v2", mode="in-place"), [
        "1 start new2", "1 ready new2", "1 attach new2",
        "2 detach a1", "2 drain a1", "2 swap a1", "2 ready a1", "2 attach a1",
    ]),
    ("detached target-version server", [v2("b1", 1, False), v1("a2", 2)], PlanSettings(2, "v2"), [
        "1 ready b1", "1 attach b1",
        "2 detach a2", "2 drain a2", "2 stop a2", "2 start new2", "2 ready new2", "2 attach new2",
    ]),
    ("detached old server goes first, no second detach", [v1("a1", 1), v1("a2", 2, False)], PlanSettings(2, "v2"), [
        "1 drain a2", "1 stop a2", "1 start new2", "1 ready new2", "1 attach new2",
        "2 detach a1", "2 drain a1", "2 stop a1", "2 start new1", "2 ready new1", "2 attach new1",
    ]),
    ("over-size, already on target", [v2("b1", 1), v2("b2", 2), v2("b3", 3, False), v1("a4", 4)], PlanSettings(2, "v2"), [
        "1 detach a4", "1 drain b3,a4", "1 stop b3,a4",
    ]),
    ("over-size, to roll", [v1("a1", 1), v1("a2", 2), v1("a3", 3)], PlanSettings(2, "v2", "surge"), [
        "1 detach a3", "1 drain a3", "1 stop a3",
        "2 start new1", "2 ready new1", "2 attach new1", "2 detach a1", "2 drain a1", "2 stop a1",
        "3 start new2", "3 ready new2", "3 attach new2", "3 detach a2", "3 drain a2", "3 stop a2",
    ]),
    ("dead old server: removed, its slot rebuilt fresh (a rollback never waits on it)",
     [v2("b1", 1), Server("a2", 2, "v1", False, alive=False), v1("a3", 3)], PlanSettings(3, "v1"), [
        "1 drain a2", "1 stop a2",
        "2 start new2", "2 ready new2", "2 attach new2",
        "3 detach b1", "3 drain b1", "3 stop b1", "3 start new1", "3 ready new1", "3 attach new1",
    ]),
    ("dead server still attached, in-place: taken out, removed, a fresh one started",
     [Server("a1", 1, "v1", True, alive=False), v1("a2", 2)], PlanSettings(2, "v1", mode="in-place"), [
        "1 detach a1", "1 drain a1", "1 stop a1", "2 start new1", "2 ready new1", "2 attach new1",
    ]),
    ("empty fleet", [], PlanSettings(2, "v2", "rolling", 2), [
        "1 start new1,new2", "1 ready new1,new2", "1 attach new1,new2",
    ]),
]


@pytest.mark.parametrize(("fleet", "settings", "expected"), [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_resume(fleet, settings, expected):
    steps = plan(fleet, settings)
    assert render(steps) == expected
    validate(fleet, settings, steps)


PREFIX_CASES = [
    (strategy, mode, n, batch)
    for strategy, mode in STRATEGY_MODES
    for n in (1, 3, 4)
    for batch in (1, 2, n + 3)
]


@pytest.mark.parametrize(("strategy", "mode", "n", "batch"), PREFIX_CASES)
def test_interrupted_anywhere_resumes_and_rolls_back(strategy, mode, n, batch):
    """Stop after every step, re-plan from what is left, both forward and back: always valid."""
    fleet = fleet_of(n)
    forward = PlanSettings(n, "v2", strategy, batch, mode)
    steps = plan(fleet, forward)
    for run in (steps, merge_reloads(steps)):
        for cut in range(len(run) + 1):
            left = simulate(fleet, forward, run[:cut]).fleet
            for settings in (forward, PlanSettings(n, "v1", strategy, batch, mode)):
                validate(left, settings, merge_reloads(plan(left, settings)))


@pytest.mark.parametrize(("strategy", "mode", "n", "batch"), PREFIX_CASES)
def test_a_stop_anywhere_winds_down_to_every_slot_attached(strategy, mode, n, batch):
    """Ctrl-C or SIGTERM after any step: the rest of the batch under way leaves one attached,
    ready server in every slot, within the plan's limits, and never starts the next batch."""
    fleet = fleet_of(n)
    settings = PlanSettings(n, "v2", strategy, batch, mode)
    for run in (plan(fleet, settings), merge_reloads(plan(fleet, settings))):
        for cut in range(len(run) + 1):
            rest = wind_down(run, cut)
            end = simulate(fleet, settings, run[:cut] + rest)
            slots = sorted(s.slot for s in end.fleet)
            if REGISTRY[strategy].weighted:  # a canary rests between steps with old and new in one slot
                slots = sorted(set(slots))
            assert slots == list(range(1, n + 1)), (cut, render(run[:cut] + rest))
            assert all(s.attached for s in end.fleet) and not end.unready and not end.ghosts
            assert len({s.batch_no for s in rest}) <= 1 and all(s.action != "reattach" for s in rest)


# --------------------------------------------------------------------------- rollback


@pytest.mark.parametrize(("strategy", "mode"), STRATEGY_MODES)
@pytest.mark.parametrize("n", [1, 4, 9])
def test_rollback_after_full_roll(strategy, mode, n):
    fleet = fleet_of(n)
    forward = PlanSettings(n, "v2", strategy, 2, mode)
    rolled = simulate(fleet, forward, plan(fleet, forward)).fleet
    back = PlanSettings(n, "v1", strategy, 2, mode)
    steps = plan(rolled, back)
    validate(rolled, back, steps)
    assert {s.version for s in simulate(rolled, back, steps).fleet} == {"v1"}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (PlanSettings(3, "v2", "rolling", batch=0), "batch"),
        (PlanSettings(3, "v2", "surge", batch=-2), "batch"),
        (PlanSettings(0, "v2"), "size"),
        (PlanSettings(-1, "v2"), "size"),
        (PlanSettings(3, ""), "to_version"),  # no name
        (PlanSettings(3, "v2", "pairs"), "strategy"),  # type: ignore[arg-type]
        (PlanSettings(3, "v2", mode="sideways"), "mode"),  # type: ignore[arg-type]
        (PlanSettings(3, "v2", "surge", mode="in-place"), "mode"),
        (PlanSettings(3, "v2", "double-half", mode="in-place"), "mode"),
        (PlanSettings(3, "v2", "blue-green", mode="in-place"), "mode"),
        (PlanSettings(3, "v2", detach_lag_s=-1), "detach_lag_s"),
        (PlanSettings(3, "v2", mode="in-place", detach_lag_s=2), "detach_lag_s"),  # nothing is stopped
        (PlanSettings(3, "v2", "naive", detach_lag_s=2), "detach_lag_s"),  # it kills before it detaches
    ],
)
def test_bad_settings_name_the_field(settings, field):
    for call in (lambda: plan(fleet_of(3), settings), lambda: limits(settings)):
        with pytest.raises(PlanError, match=f"^{field}:") as info:
            call()
        assert info.value.field == field
        assert isinstance(info.value, ValueError) and isinstance(info.value, SandboxError)


def test_duplicate_container_ids_are_rejected():
    with pytest.raises(PlanError, match="twice"):
        plan([v1("a", 1), v1("a", 2)], PlanSettings(2, "v2"))


# --------------------------------------------------------------------------- the checker can fail


def _drop(steps: list[Step], action: str) -> list[Step]:
    """The plan without its first step of ``action``."""
    i = next(i for i, s in enumerate(steps) if s.action == action)
    return steps[:i] + steps[i + 1 :]


A1, NEW1 = Ref(1, "a1"), Ref(1)
TWO = PlanSettings(2, "v2")

BROKEN = [
    # (name, settings, steps (None = the correct plan for `settings`) -> broken steps, error fragment)
    ("stop while attached", TWO, lambda s: [Step("stop", (A1,), 1)] + s, "stopped while attached"),
    ("stop before drain", TWO, lambda s: _drop(s, "drain"), "before it was drained"),
    ("attach before ready", TWO, lambda s: _drop(s, "ready"), "before a 'ready' step"),
    ("never detached", TWO, lambda s: _drop(s, "detach"), "drained while still attached"),
    ("swap in replace mode", TWO, lambda s: [Step("swap", (A1,), 1)], "only for mode in-place"),
    ("kill in a graceful strategy", TWO, lambda s: [Step("kill", (A1,), 1)], "only for a strategy that does not drain"),
    ("unknown container", TWO, lambda s: [Step("detach", (Ref(1, "zz"),), 1)], "unknown container"),
    ("new container never started", TWO, lambda s: [Step("ready", (NEW1,), 1)], "no new container"),
    ("wrong slot", TWO, lambda s: [Step("detach", (Ref(2, "a1"),), 1)], "is in slot 1"),
    ("truncated", TWO, lambda s: s[:6], "does not converge"),
    ("empty plan", TWO, lambda s: [], "does not converge"),
    ("batches go backwards", TWO, lambda s: [Step(x.action, x.targets, 3 - x.batch_no) for x in s], "goes backwards"),
    ("too many down at once", PlanSettings(3, "v2", "rolling", 1),
     lambda s: plan(fleet_of(3), PlanSettings(3, "v2", "rolling", 2)), "floor is 2"),
    ("too many containers", PlanSettings(3, "v2", "surge", 1),
     lambda s: plan(fleet_of(3), PlanSettings(3, "v2", "double-half")), "ceiling is 4"),
    ("naive leaves a killed server configured", PlanSettings(1, "v2", "naive"),
     lambda s: [Step("kill", (A1,), 1), Step("start", (NEW1,), 1), Step("ready", (NEW1,), 1), Step("attach", (NEW1,), 1)],
     "still in the load balancer config"),
    ("naive in-place never readied", PlanSettings(1, "v2", "naive", mode="in-place"),
     lambda s: _drop(s, "ready"), "without passing readiness"),
]


def _first(steps: list[Step], action: str) -> int:
    return next(i for i, s in enumerate(steps) if s.action == action)


def _edit_reattach(steps: list[Step], **changes) -> list[Step]:
    """The merged plan with its first 'reattach' changed."""
    merged = merge_reloads(steps)
    i = _first(merged, "reattach")
    old = merged[i]
    fields = {"action": old.action, "targets": old.targets, "batch_no": old.batch_no, "detach": old.detach,
              "detach_batch": old.detach_batch, **changes}
    return merged[:i] + [Step(**fields)] + merged[i + 1 :]


def _reattach_early(steps: list[Step]) -> list[Step]:
    """The merged plan with its first 'reattach' moved before the 'ready' of what it attaches."""
    merged = merge_reloads(steps)
    i, ready = _first(merged, "reattach"), _first(merged, "ready")
    return merged[:ready] + [merged[i]] + merged[ready:i] + merged[i + 1 :]


THREE = PlanSettings(3, "v2")
A2, A3 = Ref(2, "a2"), Ref(3, "a3")

BROKEN += [
    ("merge detaches two at once", THREE, lambda s: _edit_reattach(s, detach=(A2, A3)), "floor is 2"),
    ("merge attaches before ready", THREE, _reattach_early, "before a 'ready' step"),
    ("merge within one batch", THREE, lambda s: _edit_reattach(s, detach_batch=1), "a later one"),
    ("merge without its detach batch", THREE, lambda s: _edit_reattach(s, detach_batch=None), "names the batch"),
    ("merge detaches nothing", THREE, lambda s: _edit_reattach(s, detach=()), "a later one"),
    ("merge detaches a detached server", THREE,
     lambda s: _edit_reattach(s, detach=(A1,)), "a1 is not attached"),
    ("detach refs on an attach", THREE,
     lambda s: [Step("attach", (A1,), 1, detach=(A2,))], "may have 'detach' refs"),
]


LAGGED = PlanSettings(2, "v2", detach_lag_s=2)

BROKEN += [
    ("term without a lag", TWO, lambda s: [Step("term", (A1,), 1)] + s, "only for a plan with a detach lag"),
    ("term on a detached server", LAGGED,
     lambda s: [Step("detach", (A1,), 1), Step("term", (A1,), 1)] + s[2:], "signalled while detached"),
    ("attached after its stop signal", LAGGED,
     lambda s: s[:2] + [Step("attach", (A1,), 1)] + s[2:], "attached after its stop signal"),
    ("signalled twice", LAGGED, lambda s: s[:1] + s, "signalled again after its stop signal"),
]


@pytest.mark.parametrize(("settings", "breaker", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_validate_catches_broken_plan(settings, breaker, fragment):
    fleet = fleet_of(settings.size)
    good = plan(fleet, settings)
    validate(fleet, settings, good)
    with pytest.raises(PlanError, match=fragment):
        validate(fleet, settings, breaker(good))


# --------------------------------------------------------------------------- any fleet at all


@pytest.mark.parametrize("seed", range(20))
def test_any_fleet_converges(seed):
    """Random fleets (duplicates in a slot, gaps, over-size, mixed versions, attachment and dead
    containers): plans validate."""
    rng = random.Random(seed)
    for _ in range(100):
        n = rng.randint(1, 7)
        fleet = [
            Server(f"c{i}", rng.randint(1, n + 2), rng.choice(["v1", "v2"]), rng.random() < 0.6, rng.random() < 0.8)
            for i in range(rng.randint(0, 2 * n + 2))
        ]
        strategy, mode = rng.choice(STRATEGY_MODES)
        lag = 2.0 if mode == "replace" and REGISTRY[strategy].graceful and rng.random() < 0.5 else 0.0
        settings = PlanSettings(n, rng.choice(["v1", "v2"]), strategy, rng.randint(1, n + 2), mode, detach_lag_s=lag)
        steps = plan(fleet, settings)
        validate(fleet, settings, steps)
        validate(fleet, settings, merge_reloads(steps))

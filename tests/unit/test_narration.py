"""`demo --narrate`: every step the planner can emit, for every strategy, has a sentence, and the
sentence says what the fleet's load balancer mode and readiness setting really do."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
from collections.abc import Iterator
from typing import get_args

import pytest

from sandbox.errors import PlanError
from sandbox.rollout import strategies
from sandbox.rollout.plan import (
    Action,
    Mode,
    PlanSettings,
    Server,
    Step,
    check_settings,
    merge_reloads,
    plan,
    simulate,
)
from sandbox.ui.progress import Progress
from sandbox.ui.state import STEP_OF_ACTION, narrate

LB_MODES = ("dynamic", "reload")


def every_plan() -> Iterator[tuple[PlanSettings, list[Step]]]:
    """What the controller runs (merged plans) for every strategy and mode, with and without a
    detach lag: fresh fleets, and fleets stopped after any step, planned on forward and back
    (resumes, rollbacks, settle batches)."""
    for strategy in strategies.NAMES:
        for mode, lag in itertools.product(get_args(Mode), (0.0, 2.0)):
            for n in (1, 3, 4, 9):
                for batch in (1, 2, n + 1):
                    settings = PlanSettings(n, "v2", strategy, batch, mode, detach_lag_s=lag)
                    try:
                        check_settings(settings)
                    except PlanError:  # in-place beside new servers, a lag where none is stopped: refused
                        continue
                    fleet = [Server(f"a{i}", i, "v1", True) for i in range(1, n + 1)]
                    steps = plan(fleet, settings)
                    yield settings, merge_reloads(steps)
                    if n == 9:
                        continue
                    for k in range(1, len(steps)):
                        left = simulate(fleet, settings, steps[:k]).fleet
                        for target in ("v2", "v1"):
                            again = dataclasses.replace(settings, to_version=target)
                            yield again, merge_reloads(plan(left, again))


PLANS = list(every_plan())


def words(settings: PlanSettings, lb_apply: str = "dynamic", ready_successes: int = 1) -> dict[str, object]:
    return {"size": settings.size, "batch": 1, "floor": settings.size - 1, "to": settings.to_version,
            "lb_apply": lb_apply, "ready_successes": ready_successes}


def test_the_walk_meets_every_action_the_planner_has() -> None:
    seen = {step.action for _, steps in PLANS for step in steps}
    assert seen == set(get_args(Action))
    assert set(get_args(Action)) <= set(STEP_OF_ACTION)  # the views' step label too


@pytest.mark.parametrize("lb_apply", LB_MODES)
def test_every_step_of_every_plan_has_a_sentence(lb_apply: str) -> None:
    for settings, steps in PLANS:
        for step in steps:
            text = narrate(step.action, [r.slot for r in step.targets], detach=[r.slot for r in step.detach],
                           **words(settings, lb_apply))  # type: ignore[arg-type]
            assert text.endswith(".") and "{" not in text and "?" not in text, (settings, step, text)


def test_narrating_every_plan_never_fails_and_speaks_at_each_step_of_the_first_batch() -> None:
    async def walk() -> None:
        for settings, steps in PLANS:
            stream = io.StringIO()
            progress = Progress(stream, narrate=True, pause_s=0)
            progress.state.configure(strategy=settings.strategy, batch=settings.batch, mode=settings.mode,
                                     to_version=settings.to_version, size=settings.size)
            progress.fleet_mode(lb_apply="reload", ready_successes=2)
            for step in steps:
                await progress.before_step(step)
            first = [s for s in steps if s.batch_no == steps[0].batch_no] if steps else []
            said = [line for line in stream.getvalue().splitlines() if "narration" in line]
            assert len(said) == (1 + len(first) if first else 0), (settings, steps, said)

    asyncio.run(walk())


def test_a_merged_reload_between_batches_is_narrated() -> None:
    """The crash of `demo --narrate` with more than one batch: batch 1 ends with a 'reattach'."""
    settings = PlanSettings(3, "v2")
    steps = merge_reloads(plan([Server(f"a{i}", i, "v1", True) for i in (1, 2, 3)], settings))
    assert [s.action for s in steps if s.batch_no == 1][-1] == "reattach"
    stream = io.StringIO()
    progress = Progress(stream, narrate=True, pause_s=0)
    progress.state.configure(strategy="one-at-a-time", size=3)

    async def walk() -> None:
        for step in steps:
            await progress.before_step(step)

    asyncio.run(walk())
    last = [line for line in stream.getvalue().splitlines() if "narration" in line][-1]
    assert "puts slot 1 back in" in last and "takes slot 2 out for the next batch" in last


def test_detach_says_what_the_lb_mode_does() -> None:
    dynamic = narrate("detach", [2], **words(PlanSettings(3, "v2")))  # type: ignore[arg-type]
    reload = narrate("detach", [2], **words(PlanSettings(3, "v2"), "reload"))  # type: ignore[arg-type]
    assert "no reload" in dynamic and "reloads" not in dynamic
    assert "reloads gracefully" in reload
    for key in ("attach", "switch"):
        assert "no reload" in narrate(key, [1], **words(PlanSettings(3, "v2")))  # type: ignore[arg-type]
        assert "reload" in narrate(key, [1], **words(PlanSettings(3, "v2"), "reload"))  # type: ignore[arg-type]


def test_readiness_says_how_many_passes_the_setting_asks_for() -> None:
    once = narrate("ready", [1], **words(PlanSettings(3, "v2")))  # type: ignore[arg-type]
    twice = narrate("ready", [1], **words(PlanSettings(3, "v2"), ready_successes=2))  # type: ignore[arg-type]
    assert "passes once" in once and "in a row" not in once
    assert "passes 2 times in a row" in twice


def test_the_rehearsal_tells_the_view_the_fleets_mode() -> None:
    progress = Progress(io.StringIO())
    progress.state.configure(strategy="rolling", batch=2, size=4)
    progress.fleet_mode(lb_apply="reload", ready_successes=3)
    run = progress.state.snapshot()["run"]
    assert (run["lb_apply"], run["ready_successes"]) == ("reload", 3)

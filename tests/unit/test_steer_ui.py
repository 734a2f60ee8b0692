"""The live views while a rollout is steered: the phase says "paused" and who paused it."""

from __future__ import annotations

from sandbox.results.records import Event
from sandbox.ui.progress import _header_lines
from sandbox.ui.state import RolloutState


def ev(phase: str, t: float, **detail: object) -> Event:
    return {"t": t, "phase": phase, "instance": None, "detail": dict(detail)}


def test_paused_shows_who_then_resumed_rolls_again() -> None:
    state = RolloutState()
    state.event(ev("rollout-start", 1.0, strategy="one-at-a-time", **{"from": "v1", "to": "v2"}))
    state.event(ev("paused", 2.0, by="alice", pid=42, reason="request"))
    snap = state.snapshot()
    assert (snap["phase"], snap["run"]["paused_by"]) == ("paused", "alice (pid 42)")
    assert "(paused by alice (pid 42))" in _header_lines(snap)[0]
    state.event(ev("resumed", 3.0, by="bob", pid=7, paused_s=1.0))
    snap = state.snapshot()
    assert snap["phase"] == "rolling" and "paused_by" not in snap["run"]


def test_the_plans_pause_and_an_abort_from_it() -> None:
    state = RolloutState()
    state.event(ev("rollout-start", 1.0))
    state.event(ev("paused", 2.0, by="the plan (--pause-after-batch)", reason="plan"))
    assert state.snapshot()["run"]["paused_by"] == "the plan (--pause-after-batch)"
    state.event(ev("abort", 3.0, by="alice", pid=42))
    assert state.snapshot()["phase"] == "aborting"
    state.event(ev("rollback-start", 4.0))
    assert state.snapshot()["phase"] == "rolling back"

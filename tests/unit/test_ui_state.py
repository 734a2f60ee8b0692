"""The live state the dashboard's /api/state returns, after each kind of event (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.results.model import Report
from sandbox.results.records import Event
from sandbox.rollout import plan as planner
from sandbox.ui.state import REMOVED_LINGER_S, SEED_STEPS, RolloutState, narrate

T0 = 1000.0


def ev(phase: str, instance: str | None = None, *, slot: int | None = None, version: str | None = None,
       batch: int | None = None, t: float = T0 + 10, **detail: Any) -> Event:
    event: Event = {"t": t, "phase": phase, "instance": instance}
    if slot is not None:
        event["slot"] = slot
    if version is not None:
        event["version"] = version
    if batch is not None:
        event["batch"] = batch
    if detail:
        event["detail"] = detail
    return event


def planned(state: RolloutState, strategy: str, batch: int, size: int, source: str = "old",
            target: str = "new") -> None:
    """Give ``state`` the plan of ``size`` servers on ``source`` to ``target``, with the plan's own figures."""
    settings = planner.PlanSettings(size=size, to_version=target, strategy=strategy, batch=batch)  # type: ignore[arg-type]
    servers = [planner.Server(id=f"s{n}", slot=n, version=source, attached=True) for n in range(1, size + 1)]
    sim = planner.simulate(servers, settings, planner.plan(servers, settings))
    state.planned(strategy=strategy, source=source, target=target, size=size, versions=(source, target),
                  floor=sim.min_serving, peak=sim.peak_containers, batches=sim.batches)


def fleet(size: int = 3) -> RolloutState:
    state = RolloutState()
    state.configure(strategy="one-at-a-time", batch=1, mode="replace", to_version="v2", size=size)
    planned(state, "one-at-a-time", 1, size, "v1", "v2")
    for n in range(1, size + 1):
        state.seed(f"app-{n}-a", n, "v1", attached=True)
    return state


def server(state: RolloutState, name: str) -> dict[str, Any]:
    snap = state.snapshot()
    found = [s for slot in snap["slots"] for s in slot["servers"] if s["name"] == name]
    assert len(found) == 1, f"{name} appears {len(found)} times"
    return found[0]


# each per-server event and what the server shows afterwards
@pytest.mark.parametrize("event, name, expected", [
    (ev("detach", "app-1-a", slot=1, version="v1", batch=1, in_flight=3), "app-1-a",
     {"state": "draining", "in_flight": 3, "version": "v1"}),
    (ev("drain", "app-1-a", slot=1, version="v1", batch=1, in_flight=3, duration_s=0.4), "app-1-a",
     {"state": "drained", "in_flight": None}),
    (ev("stop", "app-1-a", slot=1, version="v1", batch=1), "app-1-a", {"state": "removed"}),
    (ev("kill", "app-1-a", slot=1, version="v1", batch=1), "app-1-a", {"state": "removed", "killed": True}),
    (ev("start", "app-1-b", slot=1, version="v2", batch=1), "app-1-b", {"state": "starting", "version": "v2"}),
    (ev("ready", "app-1-b", slot=1, version="v2", batch=1, first_ok_s=0.8), "app-1-b", {"state": "ready"}),
    (ev("attach", "app-1-b", slot=1, version="v2", batch=1), "app-1-b", {"state": "attached", "slot": 1}),
    (ev("swap", "app-1-a", slot=1, version="v2", batch=1, **{"from": "v1"}), "app-1-a",
     {"state": "starting", "version": "v2"}),
])
def test_server_state_after_each_event(event: Event, name: str, expected: dict[str, Any]) -> None:
    state = fleet()
    state.event(event)
    shown = server(state, name)
    assert {k: shown.get(k) for k in expected} == expected
    assert state.snapshot()["batch"]["current"] == 1


# each whole-run event and what the run shows afterwards
@pytest.mark.parametrize("event, expected", [
    (ev("load-start"), {"phase": "warming up"}),
    (ev("rollout-start", version="v2", **{"from": "v1", "to": "v2", "strategy": "one-at-a-time",
                                          "kind": "roll", "instances": 3}), {"phase": "rolling"}),
    (ev("rollout-end", outcome="completed"), {"phase": "finishing", "step": None}),
    (ev("failed", reason="slot 1 was not ready"), {"phase": "waiting"}),
    (ev("rollback-start", version="v1"), {"phase": "rolling back"}),
    (ev("rollback-end", version="v1"), {"phase": "waiting"}),
    (ev("interrupted"), {"phase": "waiting"}),
    (ev("load-stop"), {"phase": "waiting"}),
])
def test_run_state_after_each_event(event: Event, expected: dict[str, Any]) -> None:
    state = fleet()
    state.step_started("detach", 1, [1], T0)
    state.event(event)
    snap = state.snapshot()
    assert {k: snap[k] for k in expected} == expected
    assert snap["log"][-1].split()[1] == event["phase"]  # every event is in the log


def test_the_run_records_what_rollout_start_and_end_and_failure_say() -> None:
    state = fleet()
    state.event(ev("rollout-start", **{"from": "v1", "to": "v2", "strategy": "one-at-a-time", "kind": "roll"}))
    state.event(ev("failed", reason="app-1-b was not ready"))
    state.event(ev("rollout-end", outcome="rolled_back"))
    run = state.snapshot()["run"]
    assert run["kind"] == "roll" and run["failure"] == "app-1-b was not ready" and run["outcome"] == "rolled_back"


def test_a_replaced_server_fades_out_then_leaves_one_card_per_slot() -> None:
    state = fleet(3)
    for event in (ev("detach", "app-1-a", slot=1, version="v1", batch=1, in_flight=0, t=T0 + 1),
                  ev("drain", "app-1-a", slot=1, version="v1", batch=1, t=T0 + 2),
                  ev("stop", "app-1-a", slot=1, version="v1", batch=1, t=T0 + 3),
                  ev("start", "app-1-b", slot=1, version="v2", batch=1, t=T0 + 4)):
        state.event(event)
    slot1 = state.snapshot()["slots"][0]
    assert [(s["name"], s["state"]) for s in slot1["servers"]] == [("app-1-a", "removed"), ("app-1-b", "starting")]
    state.traffic({"rps": {}}, now=T0 + 3 + REMOVED_LINGER_S + 0.1)
    snap = state.snapshot()
    assert [len(slot["servers"]) for slot in snap["slots"]] == [1, 1, 1]
    assert len(snap["slots"]) == 3


def test_versions_count_attached_servers_only() -> None:
    state = fleet(3)
    assert state.snapshot()["versions"] == {"v1": 3}
    state.event(ev("detach", "app-1-a", slot=1, version="v1", batch=1, in_flight=1))
    state.event(ev("start", "app-1-b", slot=1, version="v2", batch=1))
    assert state.snapshot()["versions"] == {"v1": 2}
    state.event(ev("attach", "app-1-b", slot=1, version="v2", batch=1))
    assert state.snapshot()["versions"] == {"v1": 2, "v2": 1}


@pytest.mark.parametrize("action, key, number", [
    ("detach", "detach", 2), ("drain", "drain", 3), ("stop", "replace", 4), ("start", "replace", 4),
    ("swap", "replace", 4), ("kill", "replace", 4), ("ready", "ready", 5), ("attach", "attach", 6),
    ("switch", "attach", 6),
])
def test_the_step_about_to_run_is_named_as_in_the_seed(action: str, key: str, number: int) -> None:
    state = fleet(9)
    state.step_started(action, 3, [3], T0)
    snap = state.snapshot()
    assert snap["step"]["key"] == key and snap["step"]["number"] == number
    assert snap["step"]["label"] == SEED_STEPS[number - 1][1]
    assert snap["batch"] == {"current": 3, "total": 9}


def test_stopping_marks_the_drained_server_of_that_slot_only() -> None:
    state = fleet(3)
    state.event(ev("detach", "app-2-a", slot=2, version="v1", batch=2, in_flight=0))
    state.event(ev("drain", "app-2-a", slot=2, version="v1", batch=2))
    state.step_started("stop", 2, [2], T0)
    assert server(state, "app-2-a")["state"] == "stopping"
    assert server(state, "app-1-a")["state"] == "attached"


@pytest.mark.parametrize("strategy, batch, size, floor, peak, batches", [
    ("one-at-a-time", 1, 9, 8, 9, 9),
    ("rolling", 3, 9, 6, 9, 3),
    ("surge", 2, 4, 4, 6, 2),
    ("double-half", 1, 4, 4, 8, 1),
    ("blue-green", 1, 9, 9, 18, 1),
])
def test_the_promise_comes_from_the_plan(strategy: str, batch: int, size: int, floor: int, peak: int,
                                         batches: int) -> None:
    state = RolloutState()
    state.configure(strategy=strategy, batch=batch, size=size)
    assert state.snapshot()["promise"] is None  # no plan yet, no promise
    planned(state, strategy, batch, size)
    snap = state.snapshot()
    assert {k: snap["promise"][k] for k in ("floor", "peak", "batches")} == {
        "floor": floor, "peak": peak, "batches": batches}
    assert snap["promise"]["text"] == f"capacity never below {floor} of {size}, at most {peak} containers"
    assert (snap["run"]["from"], snap["run"]["to"], snap["run"]["versions"]) == ("old", "new", ["old", "new"])


def test_a_roll_learns_its_size_and_versions_from_its_plan() -> None:
    state = RolloutState()
    state.configure(strategy="rolling", batch=2)  # roll: the fleet's size and versions are not known yet
    assert state.snapshot()["promise"] is None
    assert (state.snapshot()["run"]["from"], state.snapshot()["run"]["to"]) == (None, None)  # never guessed
    planned(state, "rolling", 2, 4)
    for n in range(1, 5):
        state.seed(f"app-{n}-a", n, "old", attached=True)
    state.event(ev("rollout-start", **{"from": "old", "to": "new", "strategy": "rolling"}))
    assert state.snapshot()["promise"]["batches"] == 2
    assert (state.snapshot()["run"]["from"], state.snapshot()["run"]["to"]) == ("old", "new")
    assert len(state.snapshot()["slots"]) == 4


def test_traffic_builds_the_share_series_and_live_figures() -> None:
    state = fleet(3)
    state.traffic({"rps": {"v1": 90.0}, "p99_ms": 12.0, "dropped": 0, "total": 180}, now=T0)
    state.traffic({"rps": {"v1": 60.0, "v2": 30.0}, "p99_ms": 14.0, "dropped": 0, "total": 360}, now=T0 + 0.5)
    state.traffic({"rps": {}, "p99_ms": None, "dropped": 1, "total": 361}, now=T0 + 1.0)  # no answers: no point
    live = state.snapshot()["live"]
    assert live["share"] == [[0.0, {"v1": 1.0}], [0.5, {"v1": 0.6667, "v2": 0.3333}]]
    assert (live["dropped"], live["total"], live["p99_ms"]) == (1, 361, None)


PASSED = {"pass": True, "checks": [{"name": "outcome", "pass": True, "value": "completed", "limit": "completed"},
                                   {"name": "dropped", "pass": True, "value": 0, "limit": 0}]}
FAILED = {"pass": False, "checks": [{"name": "dropped", "pass": False, "value": 2, "limit": 0}]}


def test_the_end_shows_the_verdict_and_the_report_figures() -> None:
    state = fleet(3)
    state.event(ev("stop", "app-1-a", slot=1, version="v1", batch=1))
    report = {"outcome": "completed", "strategy": "one-at-a-time", "duration_s": 12.5, "peak_instances": 3,
              "requests": {"total": 900, "dropped": 0, "by_version": {"v1": 400, "v2": 500}},
              "latency_ms": {"p99": 20.0}, "exposure": {"mixed_window_s": 11.0},
              "files": {"json": "/r/report.json", "chart": "/r/chart.png", "markdown": "/r/report.md"},
              "verdict": PASSED}
    state.finish(Report.from_json(report))
    snap = state.snapshot()
    assert snap["phase"] == "ended" and snap["step"] is None
    assert snap["result"]["passed"] is True and snap["result"]["verdict"] == "PASS: all 2 checks held"
    assert snap["result"]["figures"]["by_version"] == {"v1": 400, "v2": 500}
    assert snap["result"]["files"]["markdown"] == "/r/report.md"
    assert all(s["state"] != "removed" for slot in snap["slots"] for s in slot["servers"])
    state.finish(Report.from_json({**report, "requests": {"dropped": 2}, "verdict": FAILED}))
    assert state.snapshot()["result"]["verdict"] == "FAIL: dropped 2 (max 0)"


def test_compare_files_each_run_as_a_panel_then_the_table() -> None:
    state = fleet(3)
    state.finish(Report.from_json({"outcome": "completed", "strategy": "one-at-a-time", "requests": {"dropped": 0},
                                   "verdict": PASSED}))
    state.add_panel()
    state.configure(strategy="naive", batch=1, size=3)
    assert state.snapshot()["slots"] == [{"slot": n, "servers": []} for n in (1, 2, 3)]
    state.finish(Report.from_json({"outcome": "completed", "strategy": "naive", "requests": {"dropped": 7},
                                   "verdict": FAILED}))
    state.add_panel()
    state.set_table([{"strategy": "one-at-a-time", "dropped": 0}, {"strategy": "naive", "dropped": 7}])
    snap = state.snapshot()
    assert [p["strategy"] for p in snap["compare"]] == ["one-at-a-time", "naive"]
    assert [p["passed"] for p in snap["compare"]] == [True, False]
    assert snap["table"][1]["dropped"] == 7 and snap["phase"] == "ended"


def test_narration_stays_for_its_batch_only() -> None:
    state = fleet(3)
    state.step_started("detach", 1, [1], T0)
    state.say("Detach: ...", T0)
    state.step_started("drain", 1, [1], T0)
    assert state.snapshot()["narration"] == "Detach: ..."
    state.step_started("detach", 2, [2], T0)
    assert state.snapshot()["narration"] is None


@pytest.mark.parametrize("key", ["pick", "detach", "drain", "stop", "kill", "start", "swap", "ready", "attach",
                                 "switch"])
def test_every_step_has_a_sentence_naming_its_slots(key: str) -> None:
    text = narrate(key, [2, 1], size=9, batch=1, floor=8, to="v2")
    assert "1, 2" in text and text.endswith(".") and "{" not in text


def test_the_snapshot_is_json_and_a_copy() -> None:
    state = fleet(2)
    snap = state.snapshot()
    json.dumps(snap)
    snap["slots"][0]["servers"][0]["state"] = "tampered"
    snap["live"]["share"].append([0, {}])
    assert server(state, "app-1-a")["state"] == "attached" and state.snapshot()["live"]["share"] == []


def test_naive_promises_nothing() -> None:
    state = RolloutState()
    state.configure(strategy="naive", batch=1, size=3)
    planned(state, "naive", 1, 3)
    assert state.snapshot()["promise"]["text"] == "none: naive kills servers while they still get traffic"


def test_the_pick_sentence_of_a_strategy_that_starts_new_servers_first() -> None:
    assert "at least 6 of 9 keep serving" in narrate("pick", [1, 2, 3], size=9, batch=3, floor=6, to="v2")
    assert "all 9 keep serving" in narrate("pick", [1, 2, 3, 4], size=9, batch=0, floor=9, to="v2")

"""Steering a running rollout: the state machine, the plan's pause point, the control socket, and
whole rehearsals against the fakes paused, resumed, aborted, promoted and timed out; then
--min-ready-s and --progress-deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import os
import stat
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sandbox.cli import main
from sandbox.config import Settings, parse_duration
from sandbox.errors import Aborted, UsageError
from sandbox.rollout import plan as planner
from sandbox.rollout import steer
from sandbox.rollout.rehearsal import Rehearsal
from sandbox.rollout.steer import PLAN, ControlServer, Steering, Who
from sandbox.ui.progress import Progress
from tests.unit.fakes import FakeProbe
from tests.unit.test_rehearsal import World, settings

ALICE = Who("alice", 42)
STEP = planner.Step("start", (planner.Ref(1),), 1)


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until ``cond()`` holds (the fakes are fast; the bound only ends a broken test)."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)
    assert cond(), what


def recorder() -> tuple[list[tuple[str, dict[str, object]]], Callable[[str, dict[str, object]], None]]:
    seen: list[tuple[str, dict[str, object]]] = []
    return seen, lambda phase, detail: seen.append((phase, detail))


# --------------------------------------------------------------------------- the state machine
@pytest.mark.asyncio
async def test_pause_holds_the_gate_until_resume_and_says_who() -> None:
    events, emit = recorder()
    s = Steering(emit=emit)
    answer = s.pause(ALICE)
    assert (answer["ok"], answer["state"], answer["paused_by"]) == (True, "paused", {"user": "alice", "pid": 42})
    assert s.pause(Who("bob", 7))["message"] == "already paused by alice (pid 42)"
    gate = asyncio.create_task(s.gate(STEP, 0))
    await asyncio.sleep(0.05)
    assert not gate.done()  # held between steps
    assert s.resume(Who("bob", 7))["state"] == "running"
    await asyncio.wait_for(gate, 1)
    assert [p for p, _ in events] == ["paused", "resumed"]
    assert events[0][1] == {"by": "alice", "pid": 42, "reason": "request"} and events[1][1]["by"] == "bob"
    assert s.resume(ALICE) == {**s.answer(True, "not paused: running, before batch 1"), "ok": True}


@pytest.mark.asyncio
async def test_abort_from_pause_raises_aborted_at_the_gate() -> None:
    events, emit = recorder()
    s = Steering(emit=emit)
    s.pause(ALICE)
    gate = asyncio.create_task(s.gate(STEP, 0))
    await asyncio.sleep(0.02)
    assert s.abort(Who("bob", 7))["state"] == "aborting"
    with pytest.raises(Aborted, match=r"aborted by bob \(pid 7\)"):
        await asyncio.wait_for(gate, 1)
    assert [p for p, _ in events] == ["paused", "abort"]
    assert s.pause(ALICE)["ok"] is False  # nothing to pause once it goes back
    s.rolling_back()
    await s.gate(STEP, 1)  # the rollback's own steps pass
    assert s.abort(ALICE)["message"] == "already rolling-back"


@pytest.mark.asyncio
async def test_abort_while_running_stops_at_the_next_gate() -> None:
    s = Steering()
    await s.gate(STEP, 0)
    assert s.abort(ALICE)["message"].startswith("asked by alice (pid 42): rolls back")
    with pytest.raises(Aborted):
        await s.gate(STEP, 1)


@pytest.mark.asyncio
async def test_abort_of_a_rollback_stops_at_the_batchs_end_instead() -> None:
    stop = asyncio.Event()
    s = Steering(can_roll_back=False, stop=stop)
    assert s.abort(ALICE)["state"] == "stopping" and stop.is_set()
    await s.gate(STEP, 0)  # no Aborted: the executor winds the batch down


@pytest.mark.asyncio
async def test_the_plan_pauses_once_and_promote_skips_it() -> None:
    events, emit = recorder()
    said: list[str] = []
    s = Steering(pause_at=2, pause_after_batch=1, emit=emit, say=said.append)
    await s.gate(STEP, 1)
    gate = asyncio.create_task(s.gate(STEP, 2))
    await asyncio.sleep(0.02)
    assert s.state == "paused" and s.paused_by == PLAN and "paused after batch 1 as planned" in said[0]
    assert s.promote(ALICE)["message"] == "promoted by alice (pid 42): no more pauses, running to the end"
    await asyncio.wait_for(gate, 1)
    assert [p for p, _ in events] == ["paused", "promote", "resumed"]
    promoted = Steering(pause_at=0)
    promoted.promote(ALICE)
    await asyncio.wait_for(promoted.gate(STEP, 0), 1)  # promoted before the pause point: no pause
    assert promoted.state == "running"


@pytest.mark.parametrize(("then", "raises"), [("abort", True), ("resume", False)])
@pytest.mark.asyncio
async def test_a_pause_past_its_timeout_ends_as_asked(then: str, raises: bool) -> None:
    events, emit = recorder()
    s = Steering(pause_timeout_s=0.05, on_pause_timeout=then, emit=emit)
    s.pause(ALICE)
    if raises:
        with pytest.raises(Aborted, match="--pause-timeout"):
            await asyncio.wait_for(s.gate(STEP, 0), 2)
    else:
        await asyncio.wait_for(s.gate(STEP, 0), 2)
        assert s.state == "running"
    phases = [p for p, _ in events]
    assert phases == ["paused", "pause-timeout", "abort" if raises else "resumed"]
    assert events[1][1]["then"] == then and float(str(events[1][1]["paused_s"])) >= 0.05


@pytest.mark.asyncio
async def test_a_stop_request_releases_a_pause() -> None:
    stop = asyncio.Event()
    s = Steering(stop=stop)
    s.pause(ALICE)
    gate = asyncio.create_task(s.gate(STEP, 0))
    await asyncio.sleep(0.02)
    stop.set()  # Ctrl-C: the executor winds down
    await asyncio.wait_for(gate, 1)
    assert s.state == "stopping" and s.resume(ALICE)["ok"] is False


@pytest.mark.asyncio
async def test_a_plan_with_no_batch_after_n_says_it_will_not_pause() -> None:
    world = World()
    result = await world.rehearse(settings(pause_after_batch=3))
    assert result.report["outcome"] == "completed"
    assert not any(e["phase"] == "paused" for e in result.report["steps"])
    assert "--pause-after-batch 3: the plan has 3 batch(es), none after batch 3: no pause" in (
        world.stream.getvalue())


def test_unknown_command_is_refused() -> None:
    assert Steering().handle("explode", ALICE)["ok"] is False


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600.0), ("90s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25),
                                               ("30", 30.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("extra", "message"), [
    ({"pause_timeout": "soon"}, "pause_timeout: 'soon' must be a duration"),
    ({"pause_timeout": "0s"}, "must be above 0"),
    ({"pause_after_batch": 0}, "pause_after_batch: 0 must be a batch number"),
    ({"on_pause_timeout": "explode"}, "on_pause_timeout: 'explode' must be one of abort, resume"),
    ({"min_ready_s": -1}, "min_ready_s: -1 must be in [0, 3600]"),
    ({"progress_deadline_s": 5, "min_ready_s": 5}, "progress_deadline_s: 5 must be longer than min_ready_s"),
])
def test_bad_settings_are_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings(**extra)


# --------------------------------------------------------------------------- the plan's pause point
def _fleet(n: int) -> list[planner.Server]:
    return [planner.Server(id=f"a{i}", slot=i, version="v1", attached=True) for i in range(1, n + 1)]


def test_pause_point_splits_the_reattach_that_ends_the_batch() -> None:
    ps = planner.PlanSettings(size=3, to_version="v2", strategy="one-at-a-time")
    merged = planner.merge_reloads(planner.plan(_fleet(3), ps))
    steps, at = planner.pause_point(merged, 1)
    assert at is not None and len(steps) == len(merged) + 1
    assert (steps[at - 1].action, steps[at - 1].batch_no) == ("attach", 1)  # batch 1 attached ...
    assert (steps[at].action, steps[at].batch_no) == ("detach", 2)  # ... before batch 2 starts
    planner.simulate(_fleet(3), ps, steps)  # still a valid plan
    assert planner.pause_point(merged, None) == (merged, None)
    assert planner.pause_point(merged, 3)[1] is None  # no batch after the last: no pause


def test_pause_point_of_unmerged_batches() -> None:
    ps = planner.PlanSettings(size=4, to_version="v2", strategy="surge", batch=2)
    steps = planner.merge_reloads(planner.plan(_fleet(4), ps))
    out, at = planner.pause_point(steps, 1)
    assert at is not None and out[at].batch_no == 2 and all(s.batch_no == 1 for s in out[:at])


# --------------------------------------------------------------------------- the socket
@pytest.mark.asyncio
async def test_the_socket_is_private_and_names_the_sender_by_its_credentials() -> None:
    s = Steering()
    async with ControlServer("shop", s) as server:
        assert server.problem is None
        assert stat.S_IMODE(os.stat(steer.socket_path("shop")).st_mode) == 0o600
        answer = await steer.send("shop", "pause")
        assert answer["state"] == "paused"
        assert answer["paused_by"] == {"user": getpass.getuser(), "pid": os.getpid()}
        assert (await steer.query("shop") or {})["state"] == "paused"
    assert not steer.socket_path("shop").exists()  # removed when the rollout ends
    with pytest.raises(UsageError, match=r"^project 'shop': no rollout is running \(nothing to resume\)$"):
        await steer.send("shop", "resume")
    assert await steer.query("shop") is None


@pytest.mark.asyncio
async def test_a_dead_controllers_socket_is_no_running_rollout() -> None:
    import socket

    path = steer.socket_path("gone")
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: a controller that was SIGKILLed
    with pytest.raises(UsageError, match="no rollout is running"):
        await steer.send("gone", "pause")
    async with ControlServer("gone", Steering()) as server:  # the next controller takes its place
        assert server.problem is None and (await steer.send("gone", "state"))["state"] == "running"


def test_the_cli_on_a_project_with_no_rollout_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("pause", "resume", "abort", "promote"):
        assert main([command, "--project", "idle"]) == 2
        err = capsys.readouterr().err
        assert err == f"sandbox: error: project 'idle': no rollout is running (nothing to {command})\n"


# --------------------------------------------------------------------------- whole rehearsals
async def _rolling(world: World, s: Settings, then: Callable[[World], Awaitable[None]]) -> Any:
    """Rehearse with ``s`` while ``then`` steers it from 'another terminal' (the socket)."""
    task = asyncio.create_task(world.rehearse(s))
    await then(world)
    return await asyncio.wait_for(task, 10)


async def _paused(world: World) -> dict[str, Any]:
    answers: list[dict[str, Any]] = []

    async def is_paused() -> None:
        while True:
            answer = await steer.query("p")
            if answer is not None and answer["state"] == "paused":
                answers.append(answer)
                return
            await asyncio.sleep(0.005)

    await asyncio.wait_for(is_paused(), 10)
    return answers[0]


@pytest.mark.asyncio
async def test_pause_after_batch_holds_a_mixed_fleet_then_resume_completes() -> None:
    world = World()

    async def steer_it(world: World) -> None:
        answer = await _paused(world)
        assert answer["paused_by"]["user"] == PLAN.user and answer["batch"] == 2
        held = dict(Counter(u.version for u in world.balancer.state.upstreams))
        assert held == {"v1": 2, "v2": 1}  # batch 1 attached, batch 2 not started: every slot serves
        applied = len(world.balancer.applied)
        await asyncio.sleep(0.05)
        assert len(world.balancer.applied) == applied  # nothing moves while paused
        assert (await steer.send("p", "resume"))["state"] == "running"

    result = await _rolling(world, settings(pause_after_batch=1), steer_it)
    assert result.report["outcome"] == "completed" and world.attached_versions() == {"v2"}
    steps = result.report["steps"]
    paused = next(e for e in steps if e["phase"] == "paused")
    resumed = next(e for e in steps if e["phase"] == "resumed")
    assert paused["detail"]["reason"] == "plan" and resumed["detail"]["by"] == getpass.getuser()
    assert resumed["detail"]["pid"] == os.getpid()
    out = world.stream.getvalue()
    assert "paused after batch 1 as planned" in out and "resumed" in out


@pytest.mark.asyncio
async def test_abort_from_pause_rolls_back_with_the_same_care() -> None:
    world = World()

    async def steer_it(world: World) -> None:
        await _paused(world)
        answer = await steer.send("p", "abort")
        assert answer["state"] == "aborting" and answer["ok"]

    result = await _rolling(world, settings(pause_after_batch=1, auto_rollback=False), steer_it)
    assert result.report["outcome"] == "rolled_back" and world.attached_versions() == {"v1"}
    assert len(world.balancer.state.upstreams) == 3
    assert "aborted by" in result.message and getpass.getuser() in result.message
    phases = [e["phase"] for e in result.report["steps"]]
    assert phases.index("paused") < phases.index("abort") < phases.index("rollback-start")
    assert phases.count("drain") >= 2  # the v2 server was drained before it went, as the roll drained v1


@pytest.mark.asyncio
async def test_a_pause_asked_during_a_step_holds_before_the_next_one() -> None:
    world = World()
    rehearsal = Rehearsal(settings(), runtime=world.runtime, progress=Progress(world.stream), deps=world.deps,
                          install_sigint=False)
    await rehearsal.repair()
    await rehearsal.prepare()
    asked: list[dict[str, Any]] = []

    def pause_now(*args: Any) -> None:  # `sandbox pause` while the first 'stop' runs
        if not asked and rehearsal.steering is not None:
            asked.append(rehearsal.steering.pause(ALICE))

    world.runtime.before["stop"] = pause_now
    task = asyncio.create_task(rehearsal.run())
    answer = await _paused(world)
    assert answer["paused_by"] == {"user": "alice", "pid": 42}
    await asyncio.sleep(0.05)
    assert [c for c in world.runtime.log if c.startswith(("stop", "start"))] == ["stop a1"]  # the start waits
    assert (await steer.send("p", "promote"))["promoted"] is True
    ran = await asyncio.wait_for(task, 10)
    assert ran.outcome == "completed" and world.attached_versions() == {"v2"}


@pytest.mark.asyncio
async def test_a_pause_past_its_timeout_aborts_by_default() -> None:
    world = World()

    async def wait(world: World) -> None:
        return None

    result = await _rolling(world, settings(pause_after_batch=1, pause_timeout="50ms"), wait)
    assert result.report["outcome"] == "rolled_back" and world.attached_versions() == {"v1"}
    phases = [e["phase"] for e in result.report["steps"]]
    assert "pause-timeout" in phases and "aborted by --pause-timeout" in result.message


# --------------------------------------------------------------------------- --min-ready-s, --progress-deadline
class Flaky(FakeProbe):
    """v2 servers pass ``passes`` checks each, then fail every one."""

    def __init__(self, *args: Any, passes: int) -> None:
        super().__init__(*args)
        self.passes = passes
        self.seen: Counter[str] = Counter()

    async def ready(self, address: str, version: str | None = None, path: str = "/healthz") -> bool:
        ok = await super().ready(address, version, path)
        if version == "v2":
            self.seen[address] += 1
            return ok and self.seen[address] <= self.passes
        return ok


@pytest.mark.asyncio
async def test_min_ready_keeps_checking_and_a_server_that_fails_meanwhile_fails_the_rollout() -> None:
    world = World()
    world.probe = Flaky(world.runtime, passes=3)
    world.deps = dataclasses.replace(world.deps, probe=world.probe.factory())
    result = await world.rehearse(settings(min_ready_s=0.2, ready_timeout=5))
    assert result.report["outcome"] == "rolled_back" and world.attached_versions() == {"v1"}
    assert "within --min-ready-s 0.2" in result.message
    assert not any(e["phase"] == "attach" and e.get("version") == "v2" for e in result.report["steps"])


@pytest.mark.asyncio
async def test_min_ready_holds_a_healthy_server_that_long_before_it_counts() -> None:
    world = World(n=1)
    result = await world.rehearse(settings(min_ready_s=0.1))
    assert result.report["outcome"] == "completed"
    steps = result.report["steps"]
    start = next(e for e in steps if e["phase"] == "start")
    ready = next(e for e in steps if e["phase"] == "ready")
    assert ready["t"] - start["t"] >= 0.099  # a lower bound (times rounded to ms): slowness only adds
    assert world.probe.paths.count("/healthz") > 2  # it kept checking after the first pass


@pytest.mark.asyncio
async def test_no_progress_within_the_deadline_fails_and_rolls_back() -> None:
    world = World(unready=frozenset({"v2"}))  # readiness would wait its full 30 s
    result = await world.rehearse(settings(progress_deadline_s=0.2, ready_timeout=30))
    assert result.report["outcome"] == "rolled_back" and world.attached_versions() == {"v1"}
    assert "no progress for 0.2 s (--progress-deadline): step ready of batch 1" in result.message
    deadline = next(e for e in result.report["steps"] if e["phase"] == "deadline")
    assert deadline["detail"]["action"] == "ready"


@pytest.mark.asyncio
async def test_time_paused_does_not_count_against_the_deadline() -> None:
    world = World()

    async def steer_it(world: World) -> None:
        await _paused(world)
        await asyncio.sleep(0.3)  # longer than the deadline
        await steer.send("p", "resume")

    result = await _rolling(world, settings(pause_after_batch=1, progress_deadline_s=0.25), steer_it)
    assert result.report["outcome"] == "completed"


# --------------------------------------------------------------------------- what people see
@pytest.mark.asyncio
async def test_the_cli_answers_one_line_or_json_with_the_state_it_left(capsys: pytest.CaptureFixture[str]) -> None:
    async with ControlServer("shop", Steering()):
        assert await asyncio.to_thread(main, ["pause", "--project", "shop"]) == 0
        line = capsys.readouterr().out
        assert line == f"shop: paused: by {getpass.getuser()} (pid {os.getpid()}), holding before the first step\n"
        assert await asyncio.to_thread(main, ["promote", "--project", "shop", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert (answer["state"], answer["promoted"], answer["ok"]) == ("running", True, True)
        assert await asyncio.to_thread(main, ["abort", "--project", "shop"]) == 0
        assert capsys.readouterr().out.startswith("shop: aborting: asked by ")
        assert await asyncio.to_thread(main, ["pause", "--project", "shop"]) == 1  # refused: it is going back
        assert capsys.readouterr().out.startswith("shop: aborting: cannot pause: aborting (asked by ")


@pytest.mark.asyncio
async def test_the_dry_run_shows_where_the_plan_pauses() -> None:
    world = World()
    rehearsal = Rehearsal(settings(pause_after_batch=2), runtime=world.runtime, progress=Progress(world.stream),
                          deps=world.deps, install_sigint=False)
    prepared = await rehearsal.prepare()
    lines = prepared.describe().splitlines()
    pause = next(i for i, line in enumerate(lines) if line.startswith("  -- pause"))
    assert lines[pause] == ("  -- pause (--pause-after-batch 2): `sandbox resume` or `sandbox promote` goes on, "
                            "`sandbox abort` rolls back")
    assert lines[pause - 1].split()[:3] == ["batch", "2", "attach"] and lines[pause + 1].split()[:3] == [
        "batch", "3", "detach"]
    assert prepared.as_json()["pause_at"] == pause - 1  # the first line is the heading

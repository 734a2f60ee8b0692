"""The rehearsal's phases against the fakes: outcomes, load balancer records, rollback, Ctrl-C, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.errors import NotFoundError, UsageError
from sandbox.fleet.engine import Engine
from sandbox.fleet.images import ImageSet
from sandbox.fleet.nginx_log import to_row
from sandbox.load.run import LoadEnd
from sandbox.results.junit import junit_xml
from sandbox.results.model import Report
from sandbox.results.records import new_load_rid
from sandbox.rollout.rehearsal import (
    FIRST_CTRL_C,
    FIRST_SIGTERM,
    Deps,
    Interrupts,
    Rehearsal,
    died_servers,
    error_ratio_problem,
    lb_outages,
    rehearse,
    rollout_record,
    unchanged_text,
)
from sandbox.ui.progress import Progress
from tests.unit.fakes import IMAGES, FakeBalancer, FakeLoad, FakeProbe, FakeRuntime, row
from tests.unit.test_executor import FAST


async def _images(runtime: Engine) -> ImageSet:
    return IMAGES


class World:
    """A fake fleet of ``n`` servers on ``version``, attached, and what a rehearsal needs to reach it."""

    def __init__(self, n: int = 3, version: str = "v1", *, unready: frozenset[str] = frozenset(),
                 rollout: dict[str, Any] | None = None, feed: Any = None) -> None:
        self.runtime = FakeRuntime()
        self.runtime.up(n, version)
        self.balancer = FakeBalancer(self.runtime)
        self.balancer.attach_all()
        self.balancer.state.rollout = rollout
        self.balancer.state.app_env = {"FLEET": "1"}
        self.probe = FakeProbe(self.runtime, unready)
        self.loads: list[FakeLoad] = []
        self.stream = io.StringIO()

        def load(url: str, settings: Any, path: Any) -> FakeLoad:
            self.loads.append(FakeLoad(url, settings, path, feed=feed))
            return self.loads[-1]

        self.deps = Deps(balancer=lambda runtime, project, port: self.balancer,
                         load=load, images=_images, probe=self.probe.factory(), timing=FAST,  # type: ignore[arg-type]
                         tick_s=0.001)

    async def rehearse(self, settings: Settings, **kw: Any) -> Any:
        return await rehearse(settings, runtime=self.runtime, progress=Progress(self.stream),
                              deps=self.deps, install_sigint=kw.pop("install_sigint", False), **kw)

    def attached_versions(self) -> set[str]:
        return {u.version for u in self.balancer.state.upstreams}

    def records(self) -> list[dict[str, Any]]:
        """The rollout records the load balancer's state went through, in order."""
        out: list[dict[str, Any]] = []
        for state in self.balancer.applied:
            if state.rollout and (not out or out[-1] != state.rollout):
                out.append(state.rollout)
        return out


def settings(**extra: Any) -> Settings:
    base: dict[str, Any] = {"project": "p", "load": False, "warmup_s": 0.01, "cooldown_s": 0, "settle_s": 0,
                            "ready_timeout": 0.05, "drain_timeout": 1, "set_env": {"NEW": "1"}}
    return Settings(**{**base, **extra})


RUNNING = {"kind": "roll", "from": "v1", "to": "v2", "strategy": "one-at-a-time", "status": "running"}

OUTCOMES = [
    # (name, settings, unready versions, balancer rejects v2, outcome, exit code, last record, attached, message)
    ("completes", {}, set(), False, "completed", 0,
     {**RUNNING, "status": "completed"}, {"v2"}, ""),
    ("never ready: rolls back", {}, {"v2"}, False, "rolled_back", 1,
     {"kind": "rollback", "from": "v2", "to": "v1", "strategy": "one-at-a-time", "status": "completed"}, {"v1"},
     "rolled back to v1: "),
    ("never ready, no auto rollback: stops", {"auto_rollback": False}, {"v2"}, False, "failed", 1,
     {**RUNNING, "status": "failed"}, {"v1"}, "`sandbox rollback --project p` reverts it"),
    ("config rejected: rolls back", {}, set(), True, "rolled_back", 1,
     {"kind": "rollback", "from": "v2", "to": "v1", "strategy": "one-at-a-time", "status": "completed"}, {"v1"},
     "nginx -t rejected"),
    ("rollback fails too", {}, {"v1", "v2"}, False, "failed", 1,
     {**RUNNING, "status": "failed"}, {"v1"}, "and so did the rollback"),
    ("rolling 2 in place, never ready: rolls back", {"strategy": "rolling", "batch": 2, "mode": "in-place"}, {"v2"},
     False, "rolled_back", 1,
     {"kind": "rollback", "from": "v2", "to": "v1", "strategy": "rolling", "status": "completed"}, {"v1"},
     "rolled back"),
]


@pytest.mark.parametrize(("extra", "unready", "reject", "outcome", "code", "record", "attached", "message"),
                         [c[1:] for c in OUTCOMES], ids=[c[0] for c in OUTCOMES])
@pytest.mark.asyncio
async def test_outcomes(extra: dict[str, Any], unready: set[str], reject: bool, outcome: str, code: int,
                        record: dict[str, Any], attached: set[str], message: str) -> None:
    world = World(unready=frozenset(unready))
    if reject:
        world.balancer.reject = lambda ups, changes: "v2 refused" if any(u.version == "v2" for u in ups) else None
    result = await world.rehearse(settings(**extra))
    assert (result.report["outcome"], result.exit_code) == (outcome, code)
    assert message in result.message
    records = world.records()
    assert records[0] == {**RUNNING, "strategy": record["strategy"]} and records[-1] == record
    assert world.attached_versions() == attached
    # every slot serves again, or (stopped) all but the one whose new server failed
    assert len(world.balancer.state.upstreams) == (3 if outcome in ("completed", "rolled_back") else 2)
    phases = [s["phase"] for s in result.report["steps"]]
    assert phases[0] == "rollout-start" and phases[-1] == "rollout-end"
    assert ("rollback-end" in phases) == (outcome == "rolled_back")


@pytest.mark.asyncio
async def test_phases_one_by_one() -> None:
    world = World()
    world.runtime.vanish("a2")  # a crash left its upstream configured
    rehearsal = Rehearsal(settings(), runtime=world.runtime, progress=Progress(world.stream),
                          deps=world.deps, install_sigint=False)
    await rehearsal.prepare()  # only reads: the stale upstream stays
    assert world.runtime.log == [] and world.stream.getvalue() == ""
    await rehearsal.repair()
    assert world.runtime.log == ["lb -a2"]  # only the stale upstream was taken out
    assert "took a2 out of the load balancer" in world.stream.getvalue()
    prepared = await rehearsal.prepare()  # the repaired fleet's plan
    assert world.runtime.log == ["lb -a2"]
    assert (prepared.source, prepared.target, prepared.size) == ("v1", "v2", 3)
    plan_text = prepared.describe()  # printable before anything runs
    assert plan_text.splitlines()[:4] == [
        "roll v1 -> v2 with one-at-a-time: 13 steps in 3 batches; "
        "at most 3 containers, at least 2 of 3 servers serving",
        "  batch 1   start    new server in slot 2",  # the empty slot first: it costs no availability
        "  batch 1   ready    new server in slot 2",
        "  batch 1   reattach new server in slot 2; detach a1 (batch 2)",
    ]
    ran = await rehearsal.run()
    assert ran.outcome == "completed" and ran.peak == 3 and not ran.load
    assert world.runtime.log[1:] == ["lb rollout=running", "start 2 v2", "lb +n2 -a1", "stop a1", "start 1 v2",
                                     "lb +n1 -a3", "stop a3", "start 3 v2", "lb +n3", "lb rollout=completed"]
    collected = await rehearsal.collect()
    assert collected.rows == [] and collected.nginx_rows == []
    assert [e["phase"] for e in collected.events][:2] == ["rollout-start", "start"]


@pytest.mark.asyncio
async def test_rollback_reverts_the_recorded_roll_with_the_fleets_own_env() -> None:
    world = World(version="v2", rollout={**RUNNING, "status": "completed"})
    result = await world.rehearse(settings(), kind="rollback")
    assert result.exit_code == 0
    assert (result.report["from_version"], result.report["to_version"]) == ("v2", "v1")
    assert world.records()[-1] == {"kind": "rollback", "from": "v2", "to": "v1", "strategy": "one-at-a-time",
                                   "status": "completed"}
    assert world.runtime.env["n1"] == {"APP_STOP_DELAY": "0", "FLEET": "1"}  # no --set-env for the old version


@pytest.mark.asyncio
async def test_a_roll_gives_the_new_servers_the_fleet_env_and_set_env() -> None:
    world = World()
    await world.rehearse(settings())
    assert world.runtime.env["n1"] == {"APP_STOP_DELAY": "0", "FLEET": "1", "NEW": "1"}


@pytest.mark.asyncio
async def test_a_bad_batch_is_refused_before_a_stopped_lb_is_started_again() -> None:
    world = World(n=2)
    world.runtime.lbs["p"] = replace(world.runtime.lbs["p"], state="exited")
    with pytest.raises(UsageError, match=r"^batch: 5 must be smaller than the fleet \(2 servers\)"):
        await world.rehearse(settings(strategy="rolling", batch=5))
    assert world.runtime.lbs["p"].state == "exited" and world.runtime.log == []
    await world.rehearse(settings(strategy="rolling", batch=1))  # a good batch: started again, then rolled
    assert world.runtime.log[0] == "start_again p-lb" and world.attached_versions() == {"v2"}


@pytest.mark.parametrize(("rollout", "version", "error", "fragment"), [
    (None, "v1", UsageError, "nothing to roll back"),
    ({"kind": "rollback", "from": "v2", "to": "v1", "status": "completed"}, "v1", UsageError, "nothing to roll back"),
])
@pytest.mark.asyncio
async def test_bad_rollbacks_touch_nothing(rollout: Any, version: str, error: type, fragment: str) -> None:
    world = World(version=version, rollout=rollout)
    with pytest.raises(error, match=fragment):
        await world.rehearse(settings(), kind="rollback")
    assert world.runtime.log == []


@pytest.mark.asyncio
async def test_no_fleet_is_not_found() -> None:
    world = World()
    world.runtime.lbs.clear()
    with pytest.raises(NotFoundError, match="has no fleet"):
        await world.rehearse(settings())


@pytest.mark.asyncio
async def test_a_converged_fleet_has_nothing_to_do(tmp_path: Path) -> None:
    world = World(version="v2")
    world.balancer.state.rollout = {"kind": "roll", "from": "v1", "to": "v2", "status": "completed"}
    result = await world.rehearse(settings(), report_dir=tmp_path)
    assert (result.exit_code, result.message, result.rehearsed) == (0, "already on v2: nothing to do", False)
    assert result.report["outcome"] == "completed" and result.report["peak_instances"] == 3
    assert world.runtime.log == []
    # what is shown and written says nothing was rehearsed, not "v1 -> v2 completed, PASS"
    assert (result.report["from_version"], result.report["to_version"], result.report["rehearsed"]) == (
        "v2", "v2", False)
    assert json.loads((tmp_path / "report.json").read_text())["rehearsed"] is False
    text = unchanged_text(result.report)
    assert "already on v2" in text and "NOT RUN: nothing was rehearsed" in text and "v1" not in text
    # and its verdict judged nothing: every check NOT_RUN, saying so; a JUnit case per check, each skipped
    report = Report.from_json(result.report)
    assert {(c.status, c.reason) for c in report.verdict.checks} == {("NOT_RUN", "nothing was rehearsed")}
    assert report.verdict.line().startswith("NOT RUN: none of the 12 checks was judged")
    xml = ET.fromstring(junit_xml(report))
    cases = xml.findall(".//testcase")
    assert len(cases) == 12 and all(c.find("skipped") is not None for c in cases)
    assert (xml.get("failures"), xml.get("skipped")) == ("0", "12")


@pytest.mark.asyncio
async def test_the_error_ratio_under_load_rolls_back() -> None:
    def feed() -> list[Any]:
        now = time.time()
        return [row(now, status=500, user=f"u{i}", rid=f"{now}-{i}") for i in range(40)]

    world = World(feed=feed)
    result = await world.rehearse(settings(load=True, max_error_ratio=0.05))
    assert (result.report["outcome"], result.exit_code) == ("rolled_back", 1)
    failed = [s for s in result.report["steps"] if s["phase"] == "failed"]
    assert "error ratio 100.0%" in str(failed[0]["detail"])
    phases = [s["phase"] for s in result.report["steps"]]
    assert phases[0] == "load-start" and phases[-1] == "load-stop"
    (load,) = world.loads
    assert load.started == 1 and load.stopped >= 1
    assert result.report["requests"]["dropped"] > 0 and result.report["users"] == 20
    assert world.attached_versions() == {"v1"}


@pytest.mark.asyncio
async def test_locust_exiting_as_asked_is_no_death() -> None:
    world = World(feed=lambda: [row(time.time(), user=f"u{i}", rid=f"{time.time()}-{i}") for i in range(60)])
    original = world.deps.load

    def load(url: str, s: Any, path: Any) -> FakeLoad:
        made = original(url, s, path)
        made.stop_s = 0.05  # many ticks of the traffic ticker while its processes exit
        return made

    world.deps = replace(world.deps, load=load, tick_s=0.001)  # type: ignore[arg-type]
    result = await world.rehearse(settings(load=True, max_p99_ratio=1000, cooldown_s=0.01))
    assert [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]] == []
    assert "load-died" not in [s["phase"] for s in result.report["steps"]]


@pytest.mark.parametrize("dies", [False, True])
@pytest.mark.asyncio
async def test_a_load_generator_that_dies_mid_rollout_is_said_and_fails_the_verdict(dies: bool) -> None:
    def feed() -> list[Any]:
        now = time.time()
        return [row(now, user=f"u{i}", rid=f"{now}-{i}") for i in range(60)]

    world = World(feed=feed)
    world.deps = replace(world.deps, timing=replace(FAST, poll_s=0.005))  # a few ticks per step
    original = world.deps.load

    def load(url: str, s: Any, path: Any) -> FakeLoad:
        made = original(url, s, path)
        made.dies = dies
        return made

    world.deps = replace(world.deps, load=load)  # type: ignore[arg-type]
    result = await world.rehearse(settings(load=True, max_p99_ratio=1000))
    assert result.report["outcome"] == "completed"  # the rollout itself went on safely
    assert world.attached_versions() == {"v2"}
    failed = [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]]
    assert failed == (["load_alive"] if dies else [])
    assert result.exit_code == (1 if dies else 0)
    assert ("load-died" in [s["phase"] for s in result.report["steps"]]) is dies
    assert ("the load generator died" in world.stream.getvalue()) is dies


@pytest.mark.parametrize(("how", "failed"), [
    ("whole", []),
    ("killed", ["load_alive"]),  # SIGKILLed at stop: rows in flight may be lost
    ("rows lost", ["rows_lost"]),  # sent 5 more than reached the file
    ("unrecorded", ["unrecorded"]),  # NGINX answered a load request that has no row
])
@pytest.mark.asyncio
async def test_every_request_is_accounted_for(how: str, failed: list[str]) -> None:
    def feed() -> list[Any]:
        now = time.time()
        return [row(now, user=f"u{i}", rid=new_load_rid()) for i in range(60)]

    world = World()

    def load(url: str, s: Any, path: Any) -> FakeLoad:
        made = FakeLoad(url, s, path, feed=feed)

        async def stop(grace_s: float = 10) -> None:
            made.stopping = True
            sent = len(made.rows) + (5 if how == "rows lost" else 0)
            made.end = LoadEnd(0, False, None, how == "killed", how == "killed", sent=sent, written=sent)
            if how == "unrecorded":
                world.balancer.nginx_rows = [{"time": time.time(), "rid": new_load_rid(), "status": 200,
                                              "servers": []}]

        made.stop = stop  # type: ignore[method-assign]
        return made

    world.deps = replace(world.deps, load=load)  # type: ignore[arg-type]
    result = await world.rehearse(settings(load=True, max_p99_ratio=1000))
    assert [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]] == failed
    assert result.report["rows_lost"] == (5 if how == "rows lost" else 0)
    assert result.report["unrecorded"] == (1 if how == "unrecorded" else 0)
    assert result.report["load_generator"]["sent"] >= 60


@pytest.mark.asyncio
async def test_a_stale_report_is_removed_when_a_run_starts_and_a_full_disk_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "report.json").write_text('{"stale": true}')
    world = World()
    seen: list[bool] = []
    import sandbox.rollout.rehearsal as rehearsal_module

    def full(report: Any, directory: Path) -> Any:
        seen.append((directory / "report.json").exists())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rehearsal_module, "write_report_dir", full)
    result = await world.rehearse(settings(), report_dir=tmp_path)
    assert seen == [False]  # gone before the new run's files were written
    assert result.write_error == f"could not write the report files to {tmp_path}: No space left on device"
    assert result.report["outcome"] == "completed" and "files" not in result.report  # the summary still has it


# --------------------------------------------------------------------------- Ctrl-C


def _sigint(times: int) -> Any:
    def send(*args: Any) -> None:
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
    return send


@pytest.mark.parametrize(("at", "times", "last_call", "drains", "attached"), [
    ("stop", 1, "start 1 v2", 1, {"v1": 2, "v2": 1}),  # first Ctrl-C: batch 1 finishes, batch 2 never starts
    ("start", 2, "start 1 v2", 1, {"v1": 2}),  # second: the current step (start) is cut short
], ids=["first-finishes-the-batch", "second-cuts-it-short"])
@pytest.mark.asyncio
async def test_ctrl_c(at: str, times: int, last_call: str, drains: int, attached: dict[str, int]) -> None:
    world = World()
    world.runtime.before[at] = _sigint(times)
    result = await world.rehearse(settings(), install_sigint=True)
    assert (result.report["outcome"], result.exit_code) == ("interrupted", 130)
    assert "`sandbox roll --to v2 --project p` resumes, `sandbox rollback --project p` reverts" in result.message
    assert FIRST_CTRL_C in world.stream.getvalue()
    assert [c for c in world.runtime.log if not c.startswith("lb")][-1] == last_call
    assert world.records()[-1] == {**RUNNING, "status": "interrupted"}
    phases = [s["phase"] for s in result.report["steps"]]
    assert "interrupted" in phases and phases.count("drain") == drains
    assert dict(Counter(u.version for u in world.balancer.state.upstreams)) == attached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed afterwards


@pytest.mark.asyncio
async def test_sigterm_is_a_first_ctrl_c_the_batch_finishes_and_the_report_is_written(tmp_path: Path) -> None:
    """A cancelled CI job: the batch under way finishes, every server ends attached, the report is written."""
    world = World()
    world.runtime.before["stop"] = lambda *args: os.kill(os.getpid(), signal.SIGTERM)
    result = await world.rehearse(settings(), install_sigint=True, report_dir=tmp_path)
    assert (result.report["outcome"], result.exit_code) == ("interrupted", 130)
    assert FIRST_SIGTERM in world.stream.getvalue()
    assert dict(Counter(u.version for u in world.balancer.state.upstreams)) == {"v1": 2, "v2": 1}
    assert (tmp_path / "report.json").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed afterwards


@pytest.mark.parametrize(("presses", "cuttable", "stopped", "cancelled"), [
    (1, True, True, False),
    (2, True, True, True),
    (2, False, True, False),  # outside a step (warmup, cooldown) a second Ctrl-C cuts nothing
    (3, True, True, True),
])
@pytest.mark.asyncio
async def test_interrupts(presses: int, cuttable: bool, stopped: bool, cancelled: bool) -> None:
    said: list[str] = []
    interrupts = Interrupts(asyncio.Event(), said.append)

    async def body() -> None:
        with interrupts.installed(on_sigint=False):
            if cuttable:
                with interrupts.cutting():
                    for _ in range(presses):
                        interrupts()
                    await asyncio.sleep(0)
            else:
                for _ in range(presses):
                    interrupts()
                await asyncio.sleep(0)

    task = asyncio.create_task(body())
    with pytest.raises(asyncio.CancelledError) if cancelled else contextlib.nullcontext():
        await task
    assert interrupts.stop.is_set() == stopped
    assert said == [FIRST_CTRL_C]


# --------------------------------------------------------------------------- pure parts




@pytest.mark.parametrize(("kind", "outcome", "expected"), [
    ("roll", "completed", {"kind": "roll", "from": "v1", "to": "v2", "status": "completed"}),
    ("roll", "interrupted", {"kind": "roll", "from": "v1", "to": "v2", "status": "interrupted"}),
    ("roll", "rolled_back", {"kind": "rollback", "from": "v2", "to": "v1", "status": "completed"}),
    ("rollback", "failed", {"kind": "rollback", "from": "v1", "to": "v2", "status": "failed"}),
])
def test_rollout_record(kind: str, outcome: str, expected: dict[str, str]) -> None:
    assert rollout_record(kind, "v1", "v2", outcome) == expected


@pytest.mark.parametrize(("total", "failed", "problem"), [
    (29, 29, None), (30, 1, None), (30, 2, "error ratio 6.7% (2 of 30 requests) is above max_error_ratio 5.0%"),
])
def test_error_ratio_problem(total: int, failed: int, problem: str | None) -> None:
    assert error_ratio_problem(total, failed, 0.05) == problem


def test_requests_lost_to_a_dead_server_are_counted_against_it() -> None:
    events = [{"t": 100.0, "phase": "died", "instance": "app-3", "address": "10.0.0.3:8000",
               "detail": {"exit": "state exited, exit code 137"}},
              {"t": 101.0, "phase": "attach", "instance": "app-1", "address": "10.0.0.9:8000"}]
    nginx = [to_row({"time": 99.0, "status": 502, "upstream_addr": "10.0.0.3:8000"}),  # lost to the kill
             to_row({"time": 99.5, "status": 504, "upstream_addr": "10.0.0.9:8000, 10.0.0.3:8000"}),  # lost too
             to_row({"time": 99.6, "status": 200, "upstream_addr": "10.0.0.3:8000"}),  # answered before it died
             to_row({"time": 99.7, "status": 502, "upstream_addr": "10.0.0.4:8000"}),  # another server's
             to_row({"time": 10.0, "status": 502, "upstream_addr": "10.0.0.3:8000"})]  # long before: not this fault
    faults = died_servers(events, nginx)  # type: ignore[arg-type]
    assert faults == [{"fault": "died", "instance": "app-3", "address": "10.0.0.3:8000", "t": 100.0,
                       "exit": "state exited, exit code 137", "lost_requests": 2}]


class _SlowToStop(FakeLoad):
    """Locust asked to stop: gone from the process table at once, the stop call returns later."""

    async def stop(self, grace_s: float = 10) -> None:
        self.stopped += 1
        self.dies = True
        await asyncio.sleep(0.1)  # several ticks of the rehearsal's ticker


@pytest.mark.asyncio
async def test_a_load_generator_that_exits_when_asked_is_no_death() -> None:
    def feed() -> list[Any]:
        now = time.time()
        return [row(now, user=f"u{i}", rid=f"{now}-{i}") for i in range(60)]

    world = World(feed=feed)
    world.deps = replace(world.deps, load=_SlowToStop, tick_s=0.005)  # type: ignore[arg-type]
    result = await world.rehearse(settings(load=True, max_p99_ratio=1000))
    assert "load-died" not in [s["phase"] for s in result.report["steps"]]
    assert "load_alive" not in [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]]


def test_a_load_balancer_outage_is_a_fault_with_its_window_and_the_requests_it_cost() -> None:
    events: list[Any] = [{"t": 12.0, "phase": "lb-exited", "instance": None,
                          "detail": {"exit_code": 137, "down_since": 10.0}},
                         {"t": 13.5, "phase": "lb-restored", "instance": None, "detail": {"outage_s": 3.5}}]
    # cut in flight when it died, refused while it was down, answered 5xx: counted; before, after, 200: not
    rows = [row(9.0), row(9.95, status=0), row(9.995, status=0), row(11.0, status=0), row(13.0, status=502),
            row(12.0), row(14.0, status=0)]
    assert lb_outages(events, rows) == [{"fault": "lb_exited", "t": 10.0, "restored_t": 13.5, "outage_s": 3.5,
                                         "exit": 137, "lost_requests": 3}]


@pytest.mark.asyncio
async def test_a_removed_load_balancer_is_created_again_before_a_rollback() -> None:
    world = World(version="v2", rollout={**RUNNING, "status": "completed"})
    world.runtime.state_volumes["p"] = {"port": str(world.runtime.port)}
    world.runtime.lbs.pop("p")  # docker rm -f: the project's state volume stays
    result = await world.rehearse(settings(), kind="rollback")
    assert "recreate_lb p" in world.runtime.log and result.exit_code == 0
    assert "created it again from the fleet's record" in world.stream.getvalue()
    assert world.attached_versions() == {"v1"}


@pytest.mark.asyncio
async def test_a_project_with_neither_load_balancer_nor_state_volume_has_no_fleet() -> None:
    world = World()
    world.runtime.lbs.pop("p")
    with pytest.raises(NotFoundError, match="has no fleet"):
        await world.rehearse(settings())
    assert not any(line.startswith("recreate_lb") for line in world.runtime.log)


@pytest.mark.asyncio
async def test_a_plan_of_a_fleet_whose_load_balancer_is_gone_says_so_and_creates_nothing() -> None:
    world = World()
    world.runtime.state_volumes["p"] = {"port": str(world.runtime.port)}
    world.runtime.lbs.pop("p")
    rehearsal = Rehearsal(settings(), runtime=world.runtime, progress=Progress(world.stream),
                          deps=world.deps, install_sigint=False)
    with pytest.raises(NotFoundError, match=r"its load balancer container is gone; `sandbox roll --project p`"):
        await rehearsal.prepare()  # --dry-run reads only
    assert not any(line.startswith("recreate_lb") for line in world.runtime.log)

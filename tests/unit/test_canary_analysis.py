"""The canary's analysis rule (pass, fail, inconclusive) and its hold (extended, bounded, promoted, aborted)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.errors import AnalysisFailed
from sandbox.fleet.loadbalancer import LbState, Upstream
from sandbox.results.analysis import FAILED, INCONCLUSIVE, PASSED, analyse, table_row
from sandbox.results.model import CanaryStep, MixedRecord
from sandbox.results.verdict import Limits
from sandbox.rollout.canary import CanaryRun
from sandbox.rollout.plan import Step
from sandbox.rollout.steer import Steering, Who

LIMITS = Limits(min_latency_samples=200, max_p99_ms=250.0, max_p99_ratio=3.0, max_violations=0)
_ids = itertools.count()


def rows(version: str, n: int, *, latency: float = 20.0, failed: int = 0, violations: int = 0,
         t: float = 100.0) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        status = 502 if i < failed else 200
        out.append({"t": t, "t_end": t + 0.02, "user": f"u{i % 20}", "rid": f"r{next(_ids)}", "method": "GET",
                    "name": "/api/items/[id]", "status": status, "version": version, "instance": None,
                    "session": None, "latency_ms": latency, "error": None,
                    "contract": "violation" if i < violations else "ok"})
    return out


def judge(data: list[dict[str, Any]], **kw: Any) -> tuple[str, CanaryStep]:
    return analyse(data, old="v1", new="v2", step=1, weight=5, limits=LIMITS, max_error_ratio=0.05, **kw)


def status(record: CanaryStep) -> dict[str, str]:
    return {c.name: c.status for c in record.criteria}


def test_enough_answers_and_nothing_wrong_passes_with_the_observed_share() -> None:
    outcome, record = judge(rows("v2", 250) + rows("v1", 4750))
    assert outcome == PASSED and record.status == PASSED
    assert record.observed_share == 0.05 and record.samples == {"v2": 250, "v1": 4750}
    assert status(record) == {"error_ratio": "PASS", "p99_ratio": "PASS", "contract_violations": "PASS",
                              "mixed_checks": "SKIP"}
    assert table_row(record, "v2", "v1")[:4] == ("1", "5 %", "5.0 %", "250/4750")


def test_too_few_answers_is_inconclusive_never_passed() -> None:
    outcome, record = judge(rows("v2", 40) + rows("v1", 900))
    assert outcome == INCONCLUSIVE
    assert status(record)["error_ratio"] == "INCONCLUSIVE" and status(record)["p99_ratio"] == "INCONCLUSIVE"
    assert "too few answers: 40 v2, 900 v1 (min 200" in (record.reason or "")


def test_a_contract_violation_fails_however_few_the_answers() -> None:
    outcome, record = judge(rows("v2", 10, violations=1) + rows("v1", 900))
    assert outcome == FAILED and status(record)["contract_violations"] == "FAIL"
    assert record.reason == "contract_violations: 1 in answers from v2, 0 from v1"


def test_errors_of_the_new_version_above_the_limit_and_the_old_fail() -> None:
    assert judge(rows("v2", 300, failed=30) + rows("v1", 900))[0] == FAILED
    # the old version as bad over the same window: the fleet's noise, not the canary's
    assert judge(rows("v2", 300, failed=30) + rows("v1", 900, failed=120))[0] == PASSED
    # under the limit
    assert judge(rows("v2", 300, failed=6) + rows("v1", 900))[0] == PASSED


def test_latency_fails_only_above_the_absolute_bound() -> None:
    slow = judge(rows("v2", 300, latency=600.0) + rows("v1", 900, latency=30.0))
    assert slow[0] == FAILED and status(slow[1])["p99_ratio"] == "FAIL"
    noisy = judge(rows("v2", 300, latency=200.0) + rows("v1", 900, latency=20.0))  # 10x, yet under 250 ms
    assert noisy[0] == PASSED


def test_a_failed_mixed_check_fails_the_step() -> None:
    ok = MixedRecord("mixed_check_1", "true", "passed", 0, 0.1)
    bad = MixedRecord("mixed_check_2", "false", "failed", 1, 0.1)
    data = rows("v2", 250) + rows("v1", 900)
    assert judge(data, mixed=[ok])[0] == PASSED
    assert judge(data, mixed=[ok, bad])[0] == FAILED


# --------------------------------------------------------------------------- the hold


class FakeBalancer:
    dynamic = True

    def __init__(self) -> None:
        self.state = LbState(upstreams=[Upstream("n1", "10.0.0.9:8000", "v2"), Upstream("a1", "10.0.0.2:8000", "v1")],
                             lb_apply="dynamic")
        self.weights: list[object] = []

    async def apply(self, upstreams: list[Upstream], **changes: Any) -> LbState:
        self.weights.append(changes.get("canary", {}).get("weight") if changes.get("canary") else None)
        self.state = LbState(upstreams=upstreams, canary=changes.get("canary"), lb_apply="dynamic")
        return self.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def canary_run(settings: Settings, steering: Steering, clock: Clock) -> tuple[CanaryRun, FakeBalancer, list[str]]:
    balancer = FakeBalancer()
    said: list[str] = []
    steps = [Step("attach", (), 1), Step("detach", (), 2), Step("detach", (), 3)]
    run = CanaryRun(settings, balancer, steps=steps, size=3, old="v1", new="v2",  # type: ignore[arg-type]
                    steering=steering, emit=lambda *a: None, say=said.append, mixed=lambda: (),
                    clock=clock, look_s=0.001)
    return run, balancer, said


async def feed(run: CanaryRun, clock: Clock, per_look: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """The load: rows sent now, and the clock moving on a second per look."""
    while not stop.is_set():
        run.add_rows([{**r, "t": clock.now} for r in per_look])
        clock.now += 1.0
        await asyncio.sleep(0.002)


async def hold(settings: Settings, per_look: list[dict[str, Any]], steering: Steering | None = None,
               during: Any = None) -> tuple[CanaryRun, FakeBalancer, list[str], BaseException | None]:
    steering = steering or Steering()
    clock = Clock()
    run, balancer, said = canary_run(settings, steering, clock)
    await run.after_step(Step("attach", (), 1))  # step 1's weight set
    stop = asyncio.Event()
    feeder = asyncio.create_task(feed(run, clock, per_look, stop))
    extra = asyncio.create_task(during(steering)) if during else None
    error: BaseException | None = None
    try:
        await asyncio.wait_for(run.gate(Step("detach", (), 2), 5), timeout=20)
    except AnalysisFailed as exc:
        error = exc
    finally:
        stop.set()
        await feeder
        if extra:
            await extra
    return run, balancer, said, error


SETTINGS = {"strategy": "canary", "steps": "10,50,100", "step_pause": "5s", "max_step_extensions": 2}


def test_a_step_with_enough_answers_passes_after_its_pause() -> None:
    per_look = rows("v2", 60) + rows("v1", 540)
    run, balancer, _, error = asyncio.run(hold(Settings(**SETTINGS), per_look))
    assert error is None and balancer.weights == [10]
    [record] = run.records
    assert (record.status, record.extensions, record.weight) == ("passed", 0, 10)
    assert record.window_s >= 5 and record.observed_share == 0.1


def test_an_inconclusive_step_is_extended_then_fails_at_the_bound() -> None:
    per_look = rows("v2", 2) + rows("v1", 18)  # far too few answers of v2 per second
    run, _, said, error = asyncio.run(hold(Settings(**SETTINGS), per_look))
    assert isinstance(error, AnalysisFailed) and "still inconclusive after 2 extension(s)" in str(error)
    [record] = run.records
    assert (record.status, record.extensions) == ("failed", 2)
    assert record.window_s >= 15  # the pause, then two more
    assert sum("extended by 5 s" in line for line in said) == 2


def test_an_inconclusive_step_that_gathers_enough_answers_passes_extended() -> None:
    per_look = rows("v2", 15) + rows("v1", 135)  # 200 answers of v2 after about 14 s
    run, _, _, error = asyncio.run(hold(Settings(**SETTINGS), per_look))
    assert error is None
    assert (run.records[0].status, run.records[0].extensions) == ("passed", 2)


def test_a_violation_aborts_at_once() -> None:
    per_look = rows("v2", 5, violations=1) + rows("v1", 45)
    run, _, _, error = asyncio.run(hold(Settings(**SETTINGS), per_look))
    assert isinstance(error, AnalysisFailed) and "contract_violations" in str(error)
    assert run.records[0].status == "failed" and run.records[0].window_s < 5


def test_manual_waits_for_a_promote_and_each_promote_ends_one_step() -> None:
    async def promote_later(steering: Steering) -> None:
        await asyncio.sleep(0.05)
        steering.promote(Who("alice", 42))

    per_look = rows("v2", 2) + rows("v1", 18)  # inconclusive all along: manual does not extend
    run, _, _, error = asyncio.run(hold(Settings(**{**SETTINGS, "step_pause": "manual"}), per_look,
                                        during=promote_later))
    assert error is None and run.records[0].status == "promoted" and run.records[0].extensions == 0


def test_an_abort_during_the_hold_ends_it_for_the_gate_to_roll_back() -> None:
    async def abort_later(steering: Steering) -> None:
        await asyncio.sleep(0.05)
        steering.abort(Who("alice", 42))

    run, _, _, error = asyncio.run(hold(Settings(**{**SETTINGS, "step_pause": "manual"}), rows("v1", 10),
                                        during=abort_later))
    assert error is None and run.records[0].status == "aborted"


def test_finish_records_the_last_step_and_clears_the_weights() -> None:
    async def go() -> tuple[CanaryRun, FakeBalancer]:
        clock = Clock()
        run, balancer, _ = canary_run(Settings(**{**SETTINGS, "steps": "100"}), Steering(), clock)
        await run.after_step(Step("attach", (), 1))
        await run.finish()
        return run, balancer

    run, balancer = asyncio.run(go())
    assert [r.status for r in run.records] == ["done"] and balancer.weights == [100, None]


def test_a_rollback_sends_everything_to_the_old_version_first() -> None:
    async def go() -> FakeBalancer:
        run, balancer, _ = canary_run(Settings(**SETTINGS), Steering(), Clock())
        await run.after_step(Step("attach", (), 1))
        await run.to_old()
        await run.after_step(Step("attach", (), 2))  # the rollback's own attach: no weight
        await run.gate(Step("detach", (), 3), 7)  # nor a hold
        await run.clear()
        return balancer

    assert asyncio.run(go()).weights == [10, 0, None]


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_step_of_maps_batches_to_steps(batch: int) -> None:
    run, _, _ = canary_run(Settings(**SETTINGS), Steering(), Clock())
    assert run.step_of(batch) == batch - 1 and run.step_of(0) is None and run.step_of(4) is None


def test_a_pause_during_the_hold_stretches_it_and_times_out_as_the_steering_says() -> None:
    async def pause_then_time_out(steering: Steering) -> None:
        await asyncio.sleep(0.02)
        steering.pause(Who("alice", 42))

    steering = Steering(pause_timeout_s=0.05, on_pause_timeout="abort")
    run, _, _, error = asyncio.run(hold(Settings(**{**SETTINGS, "step_pause": "manual"}), rows("v2", 60)
                                        + rows("v1", 540), steering=steering, during=pause_then_time_out))
    assert error is None and steering.state == "aborting"  # the gate rolls back next
    assert run.records[0].status == "aborted"


def test_the_live_state_has_the_weight_and_each_steps_analysis() -> None:
    from sandbox.ui.state import RolloutState

    state = RolloutState()
    state.event({"t": 1.0, "phase": "rollout-start", "instance": None, "detail": {"strategy": "canary"}})
    state.event({"t": 2.0, "phase": "canary-weight", "instance": None, "batch": 1, "detail": {"weight": 5}})
    state.event({"t": 9.0, "phase": "canary-analysis", "instance": None, "batch": 1,
                 "detail": {"step": 1, "weight": 5, "status": "passed", "observed_share": 0.05}})
    run = state.snapshot()["run"]
    assert run["canary_weight"] == 5 and run["canary"] == [
        {"step": 1, "weight": 5, "status": "passed", "observed_share": 0.05}]

"""sandbox doctor's pure parts: the lag bisection, each finding's verdict from measured numbers,
the snippets (each parsed), the outputs, and the command line's bad input."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from typing import Any

import hcl2
import pytest
import yaml

from sandbox import cli
from sandbox.config import load_settings
from sandbox.doctor import findings as F
from sandbox.doctor.lab import memory_limit_bytes
from sandbox.doctor.measure import (
    MAX_LAG_S,
    Capacity,
    Failure,
    KeepAlive,
    LagTrial,
    LongLived,
    Measurements,
    Readiness,
    StopRun,
    next_lag,
    shell_pid1,
    tolerated_lag,
)
from sandbox.doctor.output import Diagnosis, junit, markdown, text
from sandbox.doctor.run import doctor
from sandbox.doctor.snippets import Recommendation, all_snippets
from sandbox.errors import EXIT_USAGE, UsageError
from tests.unit.fakes import FakeRuntime

DROP = [Failure(0.3, "GET / -> 502")]


def measurements(**changes: Any) -> Measurements:
    """A healthy app's measurements, with ``changes``."""
    base = Measurements(
        stop_signal="SIGTERM", stop_timeout_s=20.0, health_path="/healthz", app_port=8000,
        pid1="python3 -m app",
        stop=StopRun("SIGTERM", in_flight=8, finished=8, failures=[], exit_s=0.7, exit_code=0),
        lag=[LagTrial(MAX_LAG_S, 500, [])],
        readiness=Readiness(ready_s=0.8, sent=900, failures=[], serves_after_s=0.0),
        keepalive=KeepAlive(app_idle_s=None, lb_idle_s=30.0),
        longest_request_s=0.2, long_lived=[],
        capacity=Capacity(boots_s=[0.8, 1.0, 1.9], idle_mib=25.0, loaded_mib=27.0, limit_mib=128.0, rps=1000.0,
                          p99_ms=40.0, offered_rps=150.0, size=3))
    return dataclasses.replace(base, **changes)


def finding(m: Measurements, name: str) -> F.Finding:
    return next(f for f in F.judge(m) if f.name == name)


def simulate(tolerance: float) -> tuple[list[float], float | None]:
    """The lags the bisection rehearses for an app that keeps serving ``tolerance`` s after the signal."""
    trials: list[LagTrial] = []
    while (lag := next_lag(trials)) is not None:
        trials.append(LagTrial(lag, 100, DROP if lag > tolerance else []))
    return [t.lag_s for t in trials], tolerated_lag(trials)


@pytest.mark.parametrize(("tolerance", "lags", "tolerated"), [
    (60.0, [5.0], 5.0),  # keeps serving: one trial, needs nothing
    (-1.0, [5.0, 0.0], None),  # drops even with no lag
    (0.7, [5.0, 0.0, 2.5, 1.0, 0.5], 0.5),
    (3.0, [5.0, 0.0, 2.5, 4.0, 3.0, 3.5], 3.0),
])
def test_the_lag_bisection_finds_the_tolerated_lag_to_half_a_second(
        tolerance: float, lags: list[float], tolerated: float | None) -> None:
    assert simulate(tolerance) == (lags, tolerated)


def test_a_healthy_app_passes_every_finding_and_exits_0() -> None:
    found = F.judge(measurements())
    assert [f.status for f in found] == ["PASS"] * len(found)
    assert [f.name for f in found] == ["sigterm", "pid1", "endpoint_lag", "readiness", "keepalive",
                                       "long_requests", "capacity"]
    assert F.exit_code(found) == 0


def test_an_app_that_ignores_sigterm_fails_and_a_shell_pid1_is_named() -> None:
    m = measurements(pid1="/bin/sh -c python3 -m app", stop=StopRun("SIGTERM", 4, 4, [], None, 137))
    assert finding(m, "sigterm").status == "FAIL"
    pid1 = finding(m, "pid1")
    assert pid1.status == "FAIL" and "/bin/sh -c" in pid1.summary and pid1.evidence["shell"] is True
    assert F.exit_code(F.judge(m)) == 1


def test_in_flight_requests_cut_by_the_signal_fail_with_when() -> None:
    m = measurements(stop=StopRun("SIGTERM", 8, 5, [Failure(0.01, "GET / -> ServerDisconnectedError")] * 3, 0.02, 143))
    f = finding(m, "sigterm")
    assert f.status == "FAIL" and f.evidence["cut"] == 3 and "+0.01" in f.summary and len(f.failures) == 3


def test_an_app_that_dies_of_the_signal_itself_is_a_warning() -> None:
    m = measurements(stop=StopRun("SIGTERM", 8, 8, [], 0.05, 143))
    f = finding(m, "sigterm")
    assert f.status == "WARN" and "143" in f.summary


def test_shell_pid1() -> None:
    assert shell_pid1("/bin/sh -c exec app") and shell_pid1("bash -c 'app'")
    assert not shell_pid1("python3 -m app") and not shell_pid1("/bin/sh") and not shell_pid1("")


@pytest.mark.parametrize(("trials", "status", "sleep"), [
    ([LagTrial(5.0, 100, [])], "PASS", 0),
    ([LagTrial(5.0, 100, DROP), LagTrial(0.0, 100, DROP)], "FAIL", 5),
    ([LagTrial(5.0, 100, DROP), LagTrial(0.0, 100, []), LagTrial(2.5, 100, DROP), LagTrial(1.0, 100, DROP),
      LagTrial(0.5, 100, [])], "FAIL", 5),
    ([LagTrial(5.0, 100, DROP), LagTrial(0.0, 100, []), LagTrial(2.5, 100, [])], "WARN", 3),
])
def test_the_endpoint_lag_verdict_and_the_pre_stop_sleep(trials: list[LagTrial], status: str, sleep: int) -> None:
    m = measurements(lag=trials)
    f = finding(m, "endpoint_lag")
    assert (f.status, f.evidence["pre_stop_sleep_s"], F.pre_stop_sleep_s(m)) == (status, sleep, sleep)
    assert (f"preStop sleep {sleep} s" in f.fix) == (status != "PASS")


def test_readiness_that_passes_too_early_fails_with_how_long_it_really_takes() -> None:
    m = measurements(readiness=Readiness(0.8, 300, [Failure(0.1, "GET / -> 503")] * 40, serves_after_s=3.2))
    f = finding(m, "readiness")
    assert f.status == "FAIL" and f.evidence["serves_after_s"] == 3.2 and len(f.failures) == F.SHOWN_FAILURES
    assert Recommendation.of(m).min_ready_s == 4


@pytest.mark.parametrize(("app_idle", "status"), [(None, "PASS"), (75.0, "PASS"), (30.0, "FAIL"), (2.0, "FAIL")])
def test_keepalive_fails_when_the_app_closes_idle_connections_first(app_idle: float | None, status: str) -> None:
    f = finding(measurements(keepalive=KeepAlive(app_idle, 30.0, 112, DROP, 112, [])), "keepalive")
    assert f.status == status
    if status == "FAIL":
        assert f.evidence["race_failed"] == 1 and f.evidence["fixed_failed"] == 0 and "1 of 112" in f.summary


@pytest.mark.parametrize(("longest", "status"), [(0.2, "PASS"), (12.0, "WARN"), (20.0, "FAIL"), (45.0, "FAIL")])
def test_long_requests_against_the_stop_timeout(longest: float, status: str) -> None:
    assert finding(measurements(longest_request_s=longest), "long_requests").status == status


@pytest.mark.parametrize(("outcome", "code", "status"), [
    ("closed", 1001, "PASS"), ("cut", 1006, "FAIL"), ("open", None, "FAIL"), ("refused", None, "FAIL")])
def test_long_lived_connections_need_a_close_frame(outcome: Any, code: int | None, status: str) -> None:
    m = measurements(long_lived=[LongLived("ws", "/ws", outcome, code, 0.6)])
    assert finding(m, "websocket /ws").status == status


def test_capacity_gives_the_batch_the_rehearsed_load_allows() -> None:
    tight = dataclasses.replace(measurements().capacity, rps=100.0, offered_rps=150.0)
    assert (F.safe_batch(tight), F.safe_surge(tight)) == (0, 1)
    assert finding(measurements(capacity=tight), "capacity").status == "WARN"
    roomy = measurements().capacity
    assert (F.safe_batch(roomy), F.safe_surge(roomy)) == (2, 2)
    full = dataclasses.replace(roomy, loaded_mib=120.0)
    assert finding(measurements(capacity=full), "capacity").status == "WARN"


@pytest.mark.parametrize("m", [measurements(), measurements(
    health_path="", lag=[LagTrial(5.0, 1, DROP), LagTrial(0.0, 1, [])], stop=StopRun("SIGINT", 1, 1, [], None, 137),
    capacity=dataclasses.replace(measurements().capacity, rps=10.0))])
def test_every_snippet_parses_and_carries_the_measured_settings(m: Measurements) -> None:
    r = Recommendation.of(m)
    snippets = all_snippets(r)
    k8s = yaml.safe_load(snippets["kubernetes"])["spec"]
    assert k8s["strategy"]["rollingUpdate"] == {"maxSurge": r.max_surge, "maxUnavailable": r.max_unavailable}
    pod = k8s["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == r.grace_s
    probe = pod["containers"][0]["readinessProbe"]
    assert ("httpGet" in probe) == bool(m.health_path) and ("tcpSocket" in probe) != bool(m.health_path)
    assert pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0) \
        == r.pre_stop_sleep_s
    compose = yaml.safe_load(snippets["compose"])["services"]["app"]
    assert compose["stop_signal"] == m.stop_signal and compose["stop_grace_period"] == f"{r.grace_s}s"
    assert compose["deploy"]["update_config"]["order"] in ("start-first", "stop-first")
    nomad = hcl2.loads(snippets["nomad"])["group"][0]['"app"']  # python-hcl2 8 keeps strings' quotes
    assert nomad["shutdown_delay"].strip('"') == f"{r.pre_stop_sleep_s}s"
    assert nomad["task"][0]['"app"']["kill_timeout"].strip('"') == f"{r.grace_s}s"
    kamal = yaml.safe_load(snippets["kamal"])
    assert kamal["drain_timeout"] == r.grace_s and kamal["boot"]["limit"] >= 1


def test_grace_covers_the_pre_stop_sleep_the_exit_and_the_longest_request() -> None:
    m = measurements(lag=[LagTrial(5.0, 1, DROP), LagTrial(0.0, 1, [])], longest_request_s=7.5)
    assert Recommendation.of(m).grace_s == 5 + 8 + 5


def test_outputs_render_every_finding() -> None:
    m = measurements(readiness=Readiness(0.8, 300, [Failure(0.1, "GET / -> 503")], serves_after_s=1.2))
    d = Diagnosis.of("shop:1", m)
    assert d.exit_code == 1
    assert "FAIL  readiness" in text(d) and "GET / -> 503 at +0.10 s" in text(d)
    md = markdown(d)
    assert "## readiness: FAIL" in md and "```hcl" in md and md.count("| PASS |") == 6
    root = ET.fromstring(junit(d))
    assert root.get("tests") == "7" and root.get("failures") == "1"
    assert [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None] == ["readiness"]
    assert json.loads(json.dumps(d.as_json()))["findings"][3]["failures"] == [{"at_s": 0.1, "what": "GET / -> 503"}]


@pytest.mark.parametrize(("text_", "size"), [("128m", 128 * 2**20), ("1g", 2**30), ("512000", 512000), ("x", None)])
def test_memory_limit_bytes(text_: str, size: int | None) -> None:
    assert memory_limit_bytes(text_) == size


@pytest.mark.parametrize(("argv", "named"), [
    (["doctor", "--ws-path", "ws"], "--ws-path"),
    (["doctor", "--sse-path", "/a b"], "--sse-path"),
    (["doctor", "--stop-timeout", "0"], "--stop-timeout"),
    (["doctor", "--path", "nope"], "--path"),
    (["doctor", "--size", "0"], "--size"),
    (["doctor", "--engine", "swarm"], "engine"),
])
def test_bad_doctor_input_exits_2_naming_the_flag(argv: list[str], named: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


def test_doctor_takes_the_app_contract_flags_of_up() -> None:
    doctor, up = cli.setting_flags("doctor"), cli.setting_flags("up")
    assert {name for name in up if cli.SETTINGS[name].spec.group == "app"} <= set(doctor)
    assert {"paths", "size", "users", "think_ms"} <= set(doctor)


@pytest.mark.asyncio
async def test_doctor_refuses_an_engine_that_is_not_plain_docker_before_touching_it() -> None:
    runtime = FakeRuntime()
    with pytest.raises(UsageError, match=r"^engine: "):
        await doctor(load_settings({}), runtime=runtime, say=print)
    assert runtime.log == [] and runtime.containers == {}


def test_your_locustfile_s_longest_request_is_judged_and_shown() -> None:
    from sandbox.doctor.measure import LocustfileRun
    locust = LocustfileRun("my.py", 15.0, requests=40, failed=1, longest_s=21.5, longest_name="POST /export")
    f = finding(measurements(longest_request_s=21.5, locustfile=locust), "long_requests")
    assert f.status == "FAIL" and f.evidence["longest_request_s"] == 21.5
    assert "your locustfile: 40 requests in 15 s, 1 failed, the longest POST /export 21.50 s" in f.summary
    assert f.evidence["locustfile"]["longest_name"] == "POST /export"

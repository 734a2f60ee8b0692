"""sandbox.results.verdict: every check, from reports built out of hand-made rows and events."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.results.measure import measure
from sandbox.results.records import Event, RequestRow
from sandbox.results.report import build_report, compare_json, compare_text, summary_text
from sandbox.results.verdict import (
    DEFAULT_LIMITS,
    Limits,
    compare_exit_code,
    exit_code,
    failed_names,
    verdict,
)

T0 = 1_700_000_000.0
WARMUP_END, ROLLOUT_END, LOAD_END = 3.0, 13.0, 16.0


def row(t: float, *, latency: float = 10.0, user: str = "u0", status: int = 200, answered_at: float | None = None,
        version: str = "v1", contract: str | None = None) -> RequestRow:
    end = T0 + answered_at if answered_at is not None else T0 + t + latency / 1000
    out: dict[str, Any] = {
        "t": T0 + t, "t_end": end, "user": user, "rid": f"{user}-{t}", "method": "GET", "name": "/",
        "status": status, "version": version, "instance": None, "session": None,
        "latency_ms": (end - T0 - t) * 1000, "error": None if status < 500 else "502",
    }
    if contract:
        out["contract"] = contract
    return out  # type: ignore[return-value]


def events(*, timed_out: bool = False) -> list[Event]:
    out: list[dict[str, Any]] = [
        {"t": T0, "phase": "load-start", "instance": None},
        {"t": T0 + WARMUP_END, "phase": "rollout-start", "instance": None, "version": "v2",
         "detail": {"instances": 2}},
        {"t": T0 + 4.0, "phase": "detach", "instance": "app-1"},
        {"t": T0 + 5.0, "phase": "drain", "instance": "app-1",
         "detail": {"duration_s": 1.0, "in_flight": 1, "timed_out": timed_out}},
        {"t": T0 + 12.0, "phase": "attach", "instance": "app-1b"},
        {"t": T0 + ROLLOUT_END, "phase": "rollout-end", "instance": None},
        {"t": T0 + LOAD_END, "phase": "load-stop", "instance": None},
    ]
    return out  # type: ignore[return-value]


def steady(step: float = 0.05, latency: float = 10.0, until: float = LOAD_END) -> list[RequestRow]:
    """Four users, one request every ``step`` seconds in all, answered in ``latency`` ms."""
    n = int(until / step)
    return [row(i * step, latency=latency, user=f"u{i % 4}", version="v1" if i * step < 8 else "v2")
            for i in range(n)]


def report_of(rows: list[RequestRow], *, limits: Limits = DEFAULT_LIMITS, timed_out: bool = False,
              **meta: Any) -> dict[str, Any]:
    evs = events(timed_out=timed_out)
    meta = {"strategy": "one-at-a-time", "outcome": "completed", "load": True, **meta}
    return build_report(meta=meta, measured=measure(rows, evs), steps=evs, limits=limits)


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["verdict"]["checks"] if c["name"] == name)


def test_a_steady_run_passes_every_check() -> None:
    report = report_of(steady())
    assert report["verdict"]["pass"] is True, report["verdict"]
    assert failed_names(report) == []
    assert check(report, "requests_measured")["value"] == 320
    assert check(report, "p99_ratio")["value"] == 1.0
    assert exit_code(report) == 0


def test_a_five_second_freeze_fails_the_stall_check() -> None:
    # every request sent during the freeze is answered when it ends, 5 s later: no error, no drop
    rows = [r if not 6.0 <= r["t"] - T0 < 11.0 else row(r["t"] - T0, user=r["user"], answered_at=11.0)
            for r in steady()]
    report = report_of(rows)
    assert report["requests"]["dropped"] == 0
    stall = check(report, "stall_s")
    assert stall["pass"] is False and stall["value"] == pytest.approx(5.0, abs=0.06) and stall["limit"] == 1.0
    assert "stall_s" in failed_names(report)
    assert "slow" in failed_names(report)  # the first requests of the freeze waited more than 2 s
    assert exit_code(report) == 1
    assert "FAIL stall_s" in summary_text(report)
    # allowed a 6 s stall and slow requests, the same run passes the stall check
    lenient = report_of(rows, limits=Limits(max_stall_s=6.0, max_slow=1000, max_p99_ratio=1000))
    assert lenient["verdict"]["pass"] is True


def test_fewer_requests_than_the_minimum_fail() -> None:
    rows = [row(i * 0.2, user=f"u{i % 2}") for i in range(80)]  # 80 < 100, answered every 0.2 s
    report = report_of(rows)
    assert failed_names(report) == ["requests_measured"]
    assert check(report, "requests_measured") == {"name": "requests_measured", "pass": False, "value": 80,
                                                  "limit": 100}
    assert report_of(rows, limits=Limits(min_requests=80))["verdict"]["pass"] is True


def test_load_on_and_nothing_measured_is_never_a_pass() -> None:
    report = build_report(meta={"outcome": "completed"}, measured=measure([], []), steps=[])
    assert report["verdict"]["pass"] is False
    assert "requests_measured" in failed_names(report)
    assert verdict(report, Limits(min_requests=0)).passed is True  # only because nothing was asked


def test_a_load_generator_that_died_fails() -> None:
    report = report_of(steady(), load_alive=False)
    assert failed_names(report) == ["load_alive"]
    assert check(report, "load_alive")["note"] == "the load generator died during the run"
    assert report_of(steady(), load_alive=None)["verdict"]["pass"] is True  # unknown: alive


def test_a_timed_out_drain_fails() -> None:
    report = report_of(steady(), timed_out=True)
    assert failed_names(report) == ["drains_timed_out"]
    assert check(report, "drains_timed_out")["value"] == 1


def test_p99_ratio_against_the_warmup() -> None:
    rows = steady()  # 10 ms everywhere; the rollout's slowest 2% answer in 40 ms
    slow_ones = {id(r) for r in rows if WARMUP_END <= r["t"] - T0 < ROLLOUT_END}
    rows = [row(r["t"] - T0, user=r["user"], latency=40.0) if id(r) in slow_ones and int((r["t"] - T0) * 20) % 25 == 0
            else r for r in rows]
    report = report_of(rows)
    ratio = check(report, "p99_ratio")
    assert ratio["value"] == 4.0 and ratio["pass"] is False
    assert ratio["note"] == "rollout p99 40.0 ms, warmup p99 10.0 ms"
    assert report_of(rows, limits=Limits(max_p99_ratio=4.0))["verdict"]["pass"] is True


def test_p99_ratio_without_a_warmup_cannot_be_measured() -> None:
    rows = [r for r in steady() if r["t"] - T0 >= WARMUP_END]
    ratio = check(report_of(rows), "p99_ratio")
    assert ratio["pass"] is True and ratio["value"] is None
    assert ratio["note"] == "no warmup answers to compare with"


def test_contract_violations_and_outcome() -> None:
    rows = [*steady(), row(9.0, version="v2", contract="violation")]
    assert failed_names(report_of(rows)) == ["contract_violations"]
    assert report_of(rows, limits=Limits(max_violations=1))["verdict"]["pass"] is True
    rolled = report_of(steady(), outcome="rolled_back")
    assert failed_names(rolled) == ["outcome"]
    assert check(rolled, "outcome") == {"name": "outcome", "pass": False, "value": "rolled_back",
                                        "limit": "completed"}


def test_dropped_within_the_limit() -> None:
    rows = [*steady(), row(9.0, status=502)]
    assert failed_names(report_of(rows)) == ["dropped"]
    assert report_of(rows, limits=Limits(max_dropped=1))["verdict"]["pass"] is True


def test_without_load_only_the_rollout_itself_is_checked() -> None:
    evs = events()
    report = build_report(meta={"outcome": "completed", "load": False}, measured=measure([], evs), steps=evs)
    assert report["stall_s"] > 1  # nothing answered: the whole window, but nobody was asking
    assert report["verdict"]["pass"] is True
    traffic = [c for c in report["verdict"]["checks"] if c["name"] not in ("outcome", "drains_timed_out")]
    assert all(c["value"] is None and c["note"] == "not measured: no load" for c in traffic)


def test_the_settings_and_the_limits_share_their_defaults() -> None:
    assert Limits.from_settings(Settings()) == DEFAULT_LIMITS
    assert Limits.from_settings(Settings(max_stall_s=2.5, min_requests=7)) == Limits(max_stall_s=2.5, min_requests=7)


def test_exit_code() -> None:
    passing, failing = report_of(steady()), report_of(steady(), load_alive=False)
    assert (exit_code(passing), exit_code(failing)) == (0, 1)
    assert exit_code(failing, "interrupted") == exit_code(report_of(steady(), outcome="interrupted")) == 130
    bare = {k: v for k, v in passing.items() if k != "verdict"}  # an older report: default limits
    assert exit_code(bare) == 0
    assert exit_code({**bare, "requests": {**bare["requests"], "dropped": 1}}) == 1


def test_compare_exit_code_ignores_only_naive() -> None:
    good, bad = report_of(steady()), report_of([*steady(), row(9.0, status=502)])
    naive_bad = {**bad, "strategy": "naive"}
    assert compare_exit_code([good, naive_bad]) == 0
    assert compare_exit_code([good, {**bad, "strategy": "blue-green"}, naive_bad]) == 1
    assert compare_exit_code([]) == 1  # nothing ran: nothing shown to pass
    assert compare_exit_code([good, {**good, "outcome": "interrupted"}]) == 130


def test_compare_table_shows_each_verdict() -> None:
    good = report_of(steady())
    bad = report_of([*steady(), row(9.0, status=502)], strategy="naive")
    lines = compare_json([good, bad])["rows"]
    assert [(line["pass"], line["verdict"]) for line in lines] == [(True, "PASS"), (False, "FAIL: dropped")]
    assert [line["failed_checks"] for line in lines] == [[], ["dropped"]]
    assert [line["requests"] for line in lines] == [good["requests"]["total"], bad["requests"]["total"]]
    assert lines[1]["requests"] == lines[0]["requests"] + 1  # the one 502 more
    text = compare_text([good, bad]).splitlines()
    assert text[0].rstrip().endswith("verdict")
    assert text[1].rstrip().endswith("PASS") and text[2].rstrip().endswith("FAIL: dropped")

"""sandbox.results.verdict: every check, from reports built out of hand-made rows and events, and
the p99 rule from a table of cases."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.fleet.loadbalancer import LbRow
from sandbox.results.compare import compare_json
from sandbox.results.measure import measure
from sandbox.results.model import P99, LatencySample, LikeForLike, Report, Rollout, Status
from sandbox.results.records import Event, RequestRow, new_load_rid
from sandbox.results.report import build_report
from sandbox.results.text import compare_text, summary_text
from sandbox.results.verdict import (
    DEFAULT_LIMITS,
    NO_LOAD,
    Limits,
    compare_exit_code,
    exit_code,
    p99_check,
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


# steady() sends 60 requests in the warmup: the p99 check needs fewer samples to judge them
LIMITS = dataclasses.replace(DEFAULT_LIMITS, min_latency_samples=50)


def limits(**changes: Any) -> Limits:
    return dataclasses.replace(LIMITS, **changes)


def report_of(rows: list[RequestRow], *, limits: Limits = LIMITS, timed_out: bool = False,
              sent: int | None = -1, nginx: list[LbRow] | None = None, **meta: Any) -> Report:
    """A run of ``rows``: the load generator alive, its count ``sent`` (all the rows by default),
    the LB's log ``nginx`` (read and empty by default)."""
    evs = events(timed_out=timed_out)
    meta = {"strategy": "one-at-a-time", "outcome": "completed", "load": True, "load_alive": True, **meta}
    figures = measure(rows, evs, nginx=[] if nginx is None else nginx, sent=len(rows) if sent == -1 else sent)
    return build_report(run=Rollout(**meta), figures=figures, steps=evs, limits=limits)


def check(report: Report, name: str) -> dict[str, Any]:
    """The check as ``report.json`` has it."""
    return next(c for c in report.to_json()["verdict"]["checks"] if c["name"] == name)


def failed_names(report: Report) -> list[str]:
    return report.verdict.failed_names


def test_a_steady_run_passes_every_check() -> None:
    report = report_of(steady())
    assert report.passed is True, report.verdict
    assert failed_names(report) == []
    assert check(report, "requests_measured")["value"] == 320
    assert check(report, "p99_ratio")["value"] == 1.0
    assert exit_code(report) == 0


def test_a_five_second_freeze_fails_the_stall_check() -> None:
    # every request sent during the freeze is answered when it ends, 5 s later: no error, no drop
    rows = [r if not 6.0 <= r["t"] - T0 < 11.0 else row(r["t"] - T0, user=r["user"], answered_at=11.0)
            for r in steady()]
    report = report_of(rows)
    assert report.figures.requests.dropped == 0
    stall = check(report, "stall_s")
    assert stall["pass"] is False and stall["value"] == pytest.approx(5.0, abs=0.06) and stall["limit"] == 1.0
    assert "stall_s" in failed_names(report)
    assert "slow" in failed_names(report)  # the first requests of the freeze waited more than 2 s
    assert exit_code(report) == 1
    assert "FAIL stall_s" in summary_text(report)
    assert "p99_ratio" in failed_names(report)  # a 5 s wait is a rise users feel
    # allowed a 6 s stall, slow requests and a 10 s p99, the same run passes
    lenient = report_of(rows, limits=limits(max_stall_s=6.0, max_slow=1000, max_p99_ms=10_000))
    assert lenient.passed is True


def test_fewer_requests_than_the_minimum_fail() -> None:
    rows = [row(i * 0.2, user=f"u{i % 2}") for i in range(80)]  # 80 < 100, answered every 0.2 s
    report = report_of(rows)
    assert failed_names(report) == ["requests_measured"]
    assert check(report, "requests_measured").items() >= {"name": "requests_measured", "pass": False, "value": 80,
                                                          "limit": 100, "status": "FAIL"}.items()
    assert report_of(rows, limits=limits(min_requests=80)).passed is True


def test_load_on_and_nothing_measured_is_never_a_pass() -> None:
    report = build_report(run=Rollout(outcome="completed"), figures=measure([], []), steps=[])
    assert report.passed is False
    assert "requests_measured" in failed_names(report)
    # not even when nothing was asked: with the load on, 0 requests never pass
    lenient = verdict(report.run, report.figures, Limits(min_requests=0))
    assert lenient.failed_names == ["requests_measured", "load_alive"] and lenient.checks[8].limit == 1


def test_a_load_generator_that_died_fails() -> None:
    report = report_of(steady(), load_alive=False)
    assert failed_names(report) == ["load_alive"]
    assert check(report, "load_alive")["note"] == "the load generator died during the run"
    unknown = report_of(steady(), load_alive=None)  # no PASS without evidence: unknown is not alive
    assert failed_names(unknown) == ["load_alive"]
    assert check(unknown, "load_alive")["note"] == "unknown whether the load generator ran for the whole run"


def test_a_timed_out_drain_fails() -> None:
    report = report_of(steady(), timed_out=True)
    assert failed_names(report) == ["drains_timed_out"]
    assert check(report, "drains_timed_out")["value"] == 1


def slower_rollout(latency: float, *, every: int = 25, name: str = "/") -> list[RequestRow]:
    """steady(), with one rollout request in ``every`` answered in ``latency`` ms (and named ``name``)."""
    out = []
    for r in steady():
        t = r["t"] - T0
        if WARMUP_END <= t < ROLLOUT_END and int(t * 20) % every == 0:
            r = {**row(t, user=r["user"], latency=latency), "name": name}  # type: ignore[assignment]
        out.append(r)
    return out


def test_a_rise_users_cannot_feel_passes_whatever_its_ratio() -> None:
    ratio = check(report_of(slower_rollout(40.0)), "p99_ratio")  # 10 ms -> 40 ms: 4x, far under 500 ms
    assert (ratio["value"], ratio["pass"], ratio["status"]) == (4.0, True, "PASS")
    assert ratio["note"] == "steady p99 10.0 ms; 200 rollout and 60 steady answers of the same requests"
    assert (ratio["rollout_p99_ms"], ratio["steady_p99_ms"], ratio["max_p99_ms"]) == (40.0, 10.0, 500.0)
    assert ratio["samples"] == {"steady": 60, "rollout": 200}


def test_a_rise_users_feel_fails() -> None:
    report = report_of(slower_rollout(800.0))
    assert failed_names(report) == ["p99_ratio"]
    assert summary_text(report).splitlines()[-1] == (
        "FAIL: p99_ratio 800.0 ms, 80.00x steady (max 500 ms; 3.00x if steady was over it)")
    assert report_of(slower_rollout(800.0), limits=limits(max_p99_ms=1000)).passed is True


def test_p99_compares_the_same_requests_only() -> None:
    # the slow answers are of a path the warmup never asked: nothing to compare them with
    report = report_of(slower_rollout(800.0, name="/report"))
    assert report.figures.phases["rollout"].latency.p99 == 800.0  # the phase itself shows them
    ratio = check(report, "p99_ratio")
    assert (ratio["status"], ratio["rollout_p99_ms"]) == ("PASS", 10.0)
    assert ratio["samples"] == {"steady": 60, "rollout": 184}
    assert report.figures.like_for_like.classes == 1


def test_p99_without_a_warmup_is_skipped_not_passed() -> None:
    rows = [r for r in steady() if r["t"] - T0 >= WARMUP_END]
    ratio = check(report_of(rows), "p99_ratio")
    assert (ratio["status"], ratio["pass"], ratio["skipped"], ratio["value"]) == ("SKIP", True, True, None)
    assert ratio["note"] == ("too few answers to compare: 0 steady, 0 rollout of the same requests "
                             "(min 50, --min-latency-samples)")
    assert summary_text(report_of(rows)).splitlines()[-1] == "PASS: all 12 checks held (1 not run: p99_ratio)"


def like(steady_ms: float | None, rollout_ms: float | None, steady_n: int = 1000, rollout_n: int = 1000) -> LikeForLike:
    return LikeForLike(LatencySample(steady_ms, steady_n), LatencySample(rollout_ms, rollout_n), classes=1)


@pytest.mark.parametrize(("figures", "load", "status"), [
    (like(2.0, 20.0, 199, 1000), True, "SKIP"),  # too few steady answers: not a figure
    (like(2.0, 800.0, 1000, 199), True, "SKIP"),  # too few rollout answers
    (like(None, None, 0, 0), True, "SKIP"),  # nothing answered
    (like(2.0, 20.0), True, "PASS"),  # 10x, but 20 ms: a rise nobody feels (servers booting on 2 cores)
    (like(20.0, 331.0), True, "PASS"),  # 16x: 9 containers created at once on 2 cores (bench/SOAK_DEFAULT_9.md)
    (like(10.0, 500.0), True, "PASS"),  # at the bound
    (like(5.0, 800.0), True, "FAIL"),  # 800 ms: users feel it
    (like(200.0, 520.0), True, "FAIL"),  # over the bound from a steady fleet under it, though only 2.6x
    (like(600.0, 1600.0), True, "PASS"),  # the fleet was over the bound already; the rollout did not triple it
    (like(600.0, 2000.0), True, "FAIL"),  # ... and now it did
    (like(2.0, 800.0), False, "PASS"),  # no load: nothing measured, and it says so
])
def test_the_p99_rule(figures: LikeForLike, load: bool, status: Status) -> None:
    check = p99_check(figures, DEFAULT_LIMITS, load=load)
    assert isinstance(check, P99) and check.status == status
    assert check.reason == NO_LOAD if not load else check.reason
    assert check.passed is (status != "FAIL") and check.skipped is (status == "SKIP")


def test_contract_violations_and_outcome() -> None:
    rows = [*steady(), row(9.0, version="v2", contract="violation")]
    assert failed_names(report_of(rows)) == ["contract_violations"]
    assert report_of(rows, limits=limits(max_violations=1)).passed is True
    rolled = report_of(steady(), outcome="rolled_back")
    assert failed_names(rolled) == ["outcome"]
    assert check(rolled, "outcome").items() >= {"name": "outcome", "pass": False, "value": "rolled_back",
                                                "limit": "completed", "status": "FAIL"}.items()


def test_dropped_within_the_limit() -> None:
    rows = [*steady(), row(9.0, status=502)]
    assert failed_names(report_of(rows)) == ["dropped"]
    assert report_of(rows, limits=limits(max_dropped=1)).passed is True


def test_without_load_only_the_rollout_itself_is_checked() -> None:
    evs = events()
    report = build_report(run=Rollout(outcome="completed", load=False), figures=measure([], evs), steps=evs)
    assert (report.figures.stall_s or 0) > 1  # nothing answered: the whole window, but nobody was asking
    assert report.passed is True
    traffic = [c for c in report.to_json()["verdict"]["checks"] if c["name"] not in ("outcome", "drains_timed_out")]
    assert all(c["value"] is None and c["note"] == "not measured: no load" for c in traffic)


def test_the_settings_and_the_limits_share_their_defaults() -> None:
    assert Limits.from_settings(Settings()) == DEFAULT_LIMITS
    assert Limits.from_settings(Settings(max_stall_s=2.5, min_requests=7)) == Limits(max_stall_s=2.5, min_requests=7)


def test_exit_code() -> None:
    passing, failing = report_of(steady()), report_of(steady(), load_alive=False)
    assert (exit_code(passing), exit_code(failing)) == (0, 1)
    assert exit_code(failing, "interrupted") == exit_code(report_of(steady(), outcome="interrupted")) == 130
    # a report read back from its JSON keeps the verdict it was judged with, never judges again
    assert exit_code(Report.from_json(passing.to_json())) == 0
    assert exit_code(Report.from_json(failing.to_json())) == 1


def test_compare_exit_code_ignores_only_naive() -> None:
    good, bad = report_of(steady()), report_of([*steady(), row(9.0, status=502)])
    def strategy(report: Report, name: str) -> Report:
        return dataclasses.replace(report, run=dataclasses.replace(report.run, strategy=name))

    naive_bad = strategy(bad, "naive")
    assert compare_exit_code([good, naive_bad]) == 0
    assert compare_exit_code([naive_bad]) == compare_exit_code([strategy(good, "naive")]) == 1  # nothing judged
    assert compare_exit_code([good, strategy(bad, "blue-green"), naive_bad]) == 1
    assert compare_exit_code([]) == 1  # nothing ran: nothing shown to pass
    interrupted = dataclasses.replace(good, run=dataclasses.replace(good.run, outcome="interrupted"))
    assert compare_exit_code([good, interrupted]) == 130


def test_compare_table_shows_each_verdict() -> None:
    good = report_of(steady())
    bad = report_of([*steady(), row(9.0, status=502)], strategy="naive")
    lines = compare_json([good, bad])["rows"]
    assert [(line["pass"], line["verdict"]) for line in lines] == [(True, "PASS"), (False, "FAIL: dropped")]
    assert [line["failed_checks"] for line in lines] == [[], ["dropped"]]
    assert [line["requests"] for line in lines] == [good.figures.requests.total, bad.figures.requests.total]
    assert lines[1]["requests"] == lines[0]["requests"] + 1  # the one 502 more
    text = compare_text([good, bad]).splitlines()
    assert text[0].rstrip().endswith("verdict")
    assert text[1].rstrip().endswith("PASS") and text[2].rstrip().endswith("FAIL: dropped")


def test_a_404_or_410_from_the_rollout_on_fails_not_found() -> None:
    warmup_404 = [*steady(), row(1.0, status=404)]  # before the rollout: not a version's break
    assert failed_names(report_of(warmup_404)) == []
    removed = [*steady(), row(9.0, status=404), row(14.0, status=410), row(10.0, status=400)]
    report = report_of(removed)
    assert failed_names(report) == ["not_found"]
    assert check(report, "not_found").items() >= {"value": 2, "limit": 0, "status": "FAIL"}.items()
    assert report.figures.requests.errors_4xx == 3  # every 4xx still counted apart (the 400 too)
    assert report_of(removed, limits=limits(max_not_found=2)).passed is True


def test_rows_the_load_generator_sent_but_never_wrote_fail_rows_lost() -> None:
    rows = steady()
    report = report_of(rows, sent=len(rows) + 3)  # three rows never reached the file (full disk, SIGKILL)
    assert failed_names(report) == ["rows_lost"]
    assert (report.figures.rows_lost, report.to_json()["rows_lost"]) == (3, 3)
    unknown = check(report_of(rows, sent=None), "rows_lost")  # no count: said, never a silent PASS
    assert (unknown["status"], unknown["note"]) == ("SKIP", "the load generator left no count of what it sent")


def test_load_requests_nginx_answered_without_a_row_fail_unrecorded() -> None:
    rows = steady()
    logged = [{"time": T0 + 5.0, "rid": r["rid"], "status": 200, "servers": []} for r in rows[:3]]
    lost = {"time": T0 + 6.0, "rid": new_load_rid(), "status": 200, "servers": []}
    probe = {"time": T0 + 6.0, "rid": "a" * 32, "status": 200, "servers": []}  # NGINX's own id: not the load's
    earlier = {"time": T0 - 30.0, "rid": new_load_rid(), "status": 200, "servers": []}  # before this load
    report = report_of(rows, nginx=[*logged, lost, probe, earlier])  # type: ignore[list-item]
    assert failed_names(report) == ["unrecorded"]
    assert (report.figures.unrecorded, check(report, "unrecorded")["value"]) == (1, 1)
    assert report_of(rows, nginx=[*logged, probe]).to_json()["unrecorded"] == 0  # type: ignore[list-item]
    unread = measure(rows, events(), sent=len(rows))  # the LB's log not read: unknown, said
    assert unread.unrecorded is None


def test_a_drain_that_could_not_tell_counts_as_timed_out_and_says_why() -> None:
    evs = events()
    evs[3]["detail"] = {"duration_s": 0.0, "in_flight": 0, "timed_out": True,
                        "reason": "skipped: the app has no /metrics to drain by"}
    report = build_report(run=Rollout(outcome="completed", load=True, load_alive=True),
                          figures=measure(steady(), evs, nginx=[], sent=len(steady())), steps=evs, limits=LIMITS)
    assert failed_names(report) == ["drains_timed_out"]
    assert check(report, "drains_timed_out")["note"] == "skipped: the app has no /metrics to drain by"


def test_every_check_not_run_passes_nothing_and_says_so() -> None:
    from sandbox.results.verdict import not_run
    judged = report_of(steady()).verdict
    skipped = not_run(judged, "nothing was rehearsed")
    assert {c.status for c in skipped.checks} == {"NOT_RUN"} and skipped.judged is False
    assert skipped.line() == "NOT RUN: none of the 12 checks was judged: nothing was rehearsed"

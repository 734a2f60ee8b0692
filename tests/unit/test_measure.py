"""sandbox.results.measure from hand-built rows and events: every number checked by hand."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from sandbox.fleet import nginx_log
from sandbox.fleet.loadbalancer import LbRow
from sandbox.results.measure import (
    MeasureSettings,
    RolloutSummary,
    address_history_from_events,
    agreement,
    attribute_versions,
    measure,
    mixed_fleet_window,
    percentile,
    rollout_summary,
)
from sandbox.results.records import Event, RequestRow

T0 = 1_700_000_000.0


def measured(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure`'s figures as ``report.json`` holds them."""
    return measure(*args, **kwargs).to_json()


def row(
    t: float,
    *,
    user: str = "u1",
    version: str | None = "v1",
    status: int = 200,
    latency: float | None = 10.0,
    rid: str | None = None,
    instance: str | None = None,
    unanswered: bool = False,
    contract: str | None = None,
    t_end: float | None = None,
) -> RequestRow:
    """A request sent at T0 + t, answered ``latency`` ms later (unless unanswered)."""
    end = None if unanswered else (t_end if t_end is not None else T0 + t + (latency or 0) / 1000)
    out: dict[str, Any] = {
        "t": T0 + t,
        "t_end": end,
        "user": user,
        "rid": rid or f"r-{user}-{t}",
        "method": "GET",
        "name": "/api/items/[id]",
        "status": 0 if unanswered else status,
        "version": None if unanswered or status == 0 else version,
        "instance": instance,
        "session": None,
        "latency_ms": None if unanswered else latency,
        "error": None if 200 <= status < 400 and not unanswered else "error",
    }
    if unanswered:
        out["unanswered"] = True
    if contract is not None:
        out["contract"] = contract
    return out  # type: ignore[return-value]


def event(t: float, phase: str, instance: str | None = None, **extra: Any) -> Event:
    return {"t": T0 + t, "phase": phase, "instance": instance, **extra}  # type: ignore[typeddict-item]


def nginx(rid: str, t: float, upstream: str, status: int = 200) -> LbRow:
    """The neutral row of one NGINX access-log line, read as the load balancer reads it."""
    return nginx_log.to_row({
        "time": T0 + t,
        "rid": rid,
        "method": "GET",
        "uri": "/",
        "status": status,
        "upstream_addr": upstream,
        "upstream_status": str(status),
        "request_time": 0.01,
        "upstream_response_time": "0.010",
    })


ROLLOUT = [event(2.0, "rollout-start", version="v2"), event(6.0, "rollout-end")]
# the same rollout whose fleet changes span every row of the exposure tests below
MIXED = [event(0.0, "rollout-start", version="v2"), event(0.0, "detach", "app-1"),
         event(6.5, "attach", "app-1b"), event(7.0, "rollout-end")]


# --------------------------------------------------------------------------- plain runs


def test_v1_only_run() -> None:
    rows = [row(float(i), user=f"u{i % 3}", latency=10.0 + i) for i in range(10)]
    m = measured(rows, [])
    req = m["requests"]
    assert req["total"] == 10
    assert req["ok"] == 10
    assert req["dropped"] == req["errors_4xx"] == req["unanswered"] == req["slow"] == 0
    assert req["by_version"] == {"v1": 10, "v2": 0, "unknown": 0}
    assert m["latency_ms"] == {"p50": 14.0, "p95": 19.0, "p99": 19.0, "max": 19.0}
    exp = m["exposure"]
    assert exp["mixed_window_s"] == 0
    assert exp["users_total"] == 3
    assert exp["users_saw_both"] == exp["downgrades"] == exp["users_downgraded"] == 0
    assert list(m["phases"]) == ["all"]
    assert m["phases"]["all"]["requests"] == 10
    assert rollout_summary([]) == RolloutSummary(duration_s=None, peak_instances=0)
    # answers every second, each 10-19 ms after the send: longest gap just over 1 s
    assert m["stall_s"] == pytest.approx(1.001, abs=1e-3)
    json.dumps(m)  # JSON-able


def test_empty_inputs() -> None:
    m = measured([], [])
    assert m["requests"]["total"] == 0
    assert m["latency_ms"] == {"p50": None, "p95": None, "p99": None, "max": None}
    assert m["stall_s"] == 0
    assert m["exposure"]["timeline"] == []
    assert m["exposure"]["users_total"] == 0
    assert m["drains"] == []
    json.dumps(m)


def test_rows_missing_optional_fields_are_tolerated() -> None:
    bare = [
        {"t": T0, "t_end": T0 + 0.01, "user": "u", "rid": "a", "status": 200},
        {"t": T0 + 1, "user": "u", "rid": "b", "status": 0},
    ]
    m = measured(bare, [])  # type: ignore[arg-type]
    assert m["requests"]["total"] == 2
    assert m["requests"]["by_version"]["unknown"] == 1
    assert m["requests"]["unanswered"] == 1  # no t_end: still waiting at stop
    assert m["latency_ms"]["p50"] == pytest.approx(10.0, abs=0.1)  # from t_end - t


@pytest.mark.parametrize(
    ("p", "expected"),
    [(50, 5), (95, 10), (99, 10), (100, 10), (10, 1), (11, 2), (1, 1)],
)
def test_percentile_is_nearest_rank(p: float, expected: float) -> None:
    assert percentile([float(v) for v in range(10, 0, -1)], p) == expected


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


# --------------------------------------------------------------------------- exposure


def test_clean_switch_has_no_mixed_window() -> None:
    rows = [row(float(i), user=f"u{i % 2}", version="v1") for i in range(5)]
    rows += [row(5.0 + i, user=f"u{i % 2}", version="v2") for i in range(5)]
    m = measured(rows, MIXED)
    exp = m["exposure"]
    assert exp["mixed_window_s"] == 0
    assert exp["users_saw_both"] == 2  # both users crossed over, never back
    assert exp["downgrades"] == exp["users_downgraded"] == 0
    assert m["requests"]["by_version"] == {"v1": 5, "v2": 5, "unknown": 0}


def test_interleaved_versions() -> None:
    rows = [
        row(0.0, user="a", version="v1"),
        row(1.0, user="a", version="v2"),  # first v2 answer at 1.01
        row(2.0, user="a", version="v1"),  # downgrade
        row(3.0, user="a", version="v1"),  # downgrade
        row(1.5, user="b", version="v1"),
        row(2.5, user="b", version="v1"),
        row(3.5, user="b", version="v2"),  # b never goes back
        row(4.0, user="c", version="v2"),
        row(5.0, user="c", version="v1"),  # downgrade, last v1 answer at 5.01
        row(6.0, user="d", version="v1"),  # only v1 before: not a downgrade
    ]
    # d's v1 answer at 6.01 is the last v1 answer
    exp = measured(rows, MIXED)["exposure"]
    assert exp["mixed_window_s"] == pytest.approx(5.0, abs=1e-3)
    assert exp["users_total"] == 4
    assert exp["users_saw_both"] == 3
    assert exp["users_saw_both_share"] == 0.75
    assert exp["downgrades"] == 3
    assert exp["users_downgraded"] == 2


def test_downgrades_follow_answer_order_not_send_order() -> None:
    # sent v2 first but its answer arrived last: no downgrade
    rows = [
        row(0.0, user="a", version="v2", latency=500.0),
        row(0.1, user="a", version="v1", latency=10.0),
    ]
    assert measured(rows, MIXED)["exposure"]["downgrades"] == 0


def test_failed_answers_do_not_count_as_versions() -> None:
    rows = [
        row(0.0, user="a", version="v2"),
        row(1.0, user="a", version="v1", status=503),
    ]
    exp = measured(rows, MIXED)["exposure"]
    assert exp["downgrades"] == 0
    assert exp["users_saw_both"] == 0


def _shuffled_case() -> tuple[list[RequestRow], list[Event], list[LbRow]]:
    rnd = random.Random(7)
    rows = []
    for i in range(200):
        t = i * 0.05
        version = "v1" if rnd.random() < 1 - t / 10 else "v2"
        status = rnd.choice([200, 200, 200, 200, 404, 502, 0])
        rows.append(
            row(
                t,
                user=f"u{i % 7}",
                version=version,
                status=status,
                latency=rnd.uniform(5, 90),
                instance=f"app-{i % 3}/n",
                rid=f"r{i}",
            )
        )
    rows.append(row(9.99, user="u1", unanswered=True, rid="late"))
    events = [
        event(1.0, "rollout-start", version="v2", detail={"instances": 3}),
        event(3.0, "stop", "app-1"),
        event(3.1, "start", "app-1b"),
        event(9.0, "rollout-end"),
        event(10.0, "load-stop"),
    ]
    logs = [nginx("r3", 0.2, "10.0.0.1:8000, 10.0.0.2:8000")]
    return rows, events, logs


def test_out_of_order_rows_give_the_same_result() -> None:
    rows, events, logs = _shuffled_case()
    expected = measure(rows, events, nginx=logs)
    mixed_rows, mixed_events = rows[:], events[:]
    random.Random(1).shuffle(mixed_rows)
    random.Random(2).shuffle(mixed_events)
    assert measure(mixed_rows, mixed_events, nginx=logs) == expected


def test_no_v2_answer_at_all() -> None:
    rows = [row(float(i), version="v1") for i in range(4)]
    rows.append(row(4.0, version="v2", status=502))  # v2 only failed
    m = measured(rows, MIXED)
    assert m["exposure"]["mixed_window_s"] == 0
    assert m["exposure"]["users_saw_both"] == 0
    assert m["requests"]["by_version"]["v2"] == 0
    assert m["requests"]["dropped"] == 1


def test_every_request_failed() -> None:
    rows = [row(float(i), status=0, latency=5.0) for i in range(5)]
    rows.append(row(5.0, unanswered=True))
    events = [event(8.0, "load-stop")]
    m = measured(rows, events)
    assert m["requests"]["dropped"] == m["requests"]["total"] == 6
    assert m["requests"]["ok"] == 0
    assert m["stall_s"] == pytest.approx(8.0)  # the whole window: first send to load-stop
    assert m["latency_ms"] == {"p50": None, "p95": None, "p99": None, "max": None}
    assert m["exposure"]["mixed_window_s"] == 0


def test_stall_finds_the_longest_gap_and_the_edges() -> None:
    rows = [row(0.0), row(1.0), row(1.5), row(9.0)]  # answers at .01, 1.01, 1.51, 9.01
    m = measured(rows, [event(10.0, "load-stop")])
    assert m["stall_s"] == pytest.approx(7.5)
    m = measured(rows[:3], [event(10.0, "load-stop")])
    assert m["stall_s"] == pytest.approx(10.0 - 1.51)  # tail edge: nothing after 1.51


def test_single_user() -> None:
    rows = [
        row(0.0, user="solo", version="v1"),
        row(1.0, user="solo", version="v2"),
        row(2.0, user="solo", version="v1"),
    ]
    exp = measured(rows, MIXED)["exposure"]
    assert (exp["users_total"], exp["users_saw_both"]) == (1, 1)
    assert (exp["downgrades"], exp["users_downgraded"]) == (1, 1)


def test_unanswered_rows_are_dropped_and_slow() -> None:
    rows = [row(0.0), row(1.0, unanswered=True), row(2.0, unanswered=True)]
    req = measured(rows, [])["requests"]
    assert req["dropped"] == 2
    assert req["unanswered"] == 2
    assert req["slow"] == 2


def test_slow_uses_the_budget() -> None:
    rows = [
        row(0.0, latency=1500.0),
        row(1.0, latency=2500.0),
        row(2.0, latency=900.0),
        row(3.0, status=0, latency=30_000.0),
    ]  # a client timeout after 30 s
    assert measured(rows, [])["requests"]["slow"] == 2
    settings = MeasureSettings(slow_ms=1000.0)
    assert measured(rows, [], settings=settings)["requests"]["slow"] == 3


def test_4xx_counted_apart() -> None:
    rows = [row(0.0), row(1.0, status=404), row(2.0, status=429), row(3.0, status=500)]
    req = measured(rows, [])["requests"]
    assert req["errors_4xx"] == 2
    assert req["dropped"] == 1
    assert req["ok"] == 1
    assert req["by_version"]["v1"] == 1


def test_nginx_retried_rows() -> None:
    logs = [
        nginx("a", 0.1, "10.0.0.1:8000"),
        nginx("b", 0.2, "10.0.0.1:8000, 10.0.0.2:8000"),
        nginx("c", 0.3, "10.0.0.1:8000, 10.0.0.2:8000, 10.0.0.3:8000"),
        nginx("d", 0.4, "10.0.0.2:8000 : 10.0.0.3:8000"),
        nginx("e", 0.5, "-"),
        nginx("f", 0.6, ""),
    ]
    assert measured([row(0.0)], [], nginx=logs)["requests"]["retried"] == 3


def test_contract_violations() -> None:
    rows = [
        row(0.0, contract="ok"),
        row(1.0, contract="violation", version="v2"),
        row(2.0, contract="violation", version="v2"),
        row(3.0),
    ]
    assert measured(rows, [])["exposure"]["contract_violations"] == 2


def test_sessions_lost_on_stop_kill_and_swap() -> None:
    rows = [
        row(0.0, user="a", instance="app-1/aaa"),  # app-1 stopped at 3: lost
        row(0.5, user="b", instance="app-2/bbb"),  # app-2 killed at 4: lost
        row(1.0, user="c", instance="app-3/ccc"),  # app-3 swapped at 5: lost
        row(6.0, user="d", instance="app-3/ddd"),  # after the swap: kept
        row(1.0, user="e", instance="app-10/eee"),  # app-10 is not app-1
        row(1.5, user="f", instance="app-1/aaa", status=502),  # failed: no session
        row(2.0, user="a", instance="app-1/aaa"),  # same user twice counts once
    ]
    events = [
        event(3.0, "stop", "app-1"),
        event(4.0, "kill", "app-2"),
        event(5.0, "swap", "app-3"),
        event(5.5, "detach", "app-10"),
    ]
    assert measured(rows, events)["exposure"]["sessions_lost"] == 3


def test_peak_instances_from_events() -> None:
    events = [
        event(0.0, "start", "old-extra"),  # before rollout-start: not counted
        event(1.0, "rollout-start", version="v2", detail={"instances": 3}),
        event(2.0, "start", "n1"),
        event(2.5, "start", "n2"),  # 5
        event(3.0, "stop", "o1"),
        event(3.5, "kill", "o2"),
        event(4.0, "start", "n3"),  # 4
        event(5.0, "stop", "o3"),
        event(6.0, "rollout-end"),
    ]
    assert rollout_summary(events) == RolloutSummary(duration_s=5.0, peak_instances=5)


def test_peak_instances_without_instances_detail() -> None:
    events = [event(0.0, "rollout-start"), event(1.0, "stop", "a"), event(2.0, "start", "b")]
    assert rollout_summary(events).peak_instances == 0


def test_drains_from_events() -> None:
    events = [
        event(1.0, "drain", "app-1", detail={"duration_s": 0.4, "in_flight": 2}),
        event(2.0, "drain", "app-2"),
        event(3.0, "drain", "app-3", detail={"duration_s": 30.0, "in_flight": 4, "timed_out": True}),
        event(4.0, "drain", "app-4", detail={"duration_s": 0.9, "in_flight": 0, "long_lived": 5,
                                             "long_lived_close_s": 0.31, "long_lived_left": 0}),
    ]
    no_ll = {"long_lived": None, "long_lived_close_s": None, "long_lived_left": None}
    assert measured([], events)["drains"] == [
        {"instance": "app-1", "duration_s": 0.4, "in_flight": 2, "timed_out": False, "reason": None, **no_ll},
        {"instance": "app-2", "duration_s": None, "in_flight": None, "timed_out": False, "reason": None, **no_ll},
        {"instance": "app-3", "duration_s": 30.0, "in_flight": 4, "timed_out": True, "reason": None, **no_ll},
        {"instance": "app-4", "duration_s": 0.9, "in_flight": 0, "timed_out": False, "reason": None,
         "long_lived": 5, "long_lived_close_s": 0.31, "long_lived_left": 0},
    ]


def test_timeline_buckets() -> None:
    rows = [
        row(0.0, version="v1", latency=10.0),  # the window starts here
        row(0.2, version="v1", latency=20.0),
        row(0.95, version="v2", latency=100.0),  # sent in second 0, answered in second 1
        row(1.5, status=0, latency=5.0),  # dropped, sent in second 1
        row(2.2, unanswered=True),  # dropped, sent in second 2
        row(2.5, status=404, latency=30.0),  # answered, not ok
    ]
    tl = measured(rows, [event(3.5, "load-stop")])["exposure"]["timeline"]
    assert [b["t"] for b in tl] == [0, 1, 2, 3]
    assert tl[0] == {"t": 0, "v1": 2, "v2": 0, "dropped": 0, "p99_ms": 20.0}
    assert tl[1] == {"t": 1, "v1": 0, "v2": 1, "dropped": 1, "p99_ms": 100.0}
    assert tl[2] == {"t": 2, "v1": 0, "v2": 0, "dropped": 1, "p99_ms": 30.0}
    assert tl[3] == {"t": 3, "v1": 0, "v2": 0, "dropped": 0, "p99_ms": None}


def test_phases_split_at_rollout_events() -> None:
    rows = [
        row(0.0),
        row(1.0),
        row(2.5, status=502),
        row(3.0, status=404),
        row(4.0),
        row(7.0),
        row(8.0, latency=30.0),
    ]
    ph = measured(rows, [*ROLLOUT, event(10.0, "load-stop")])["phases"]
    assert list(ph) == ["warmup", "rollout", "cooldown"]
    assert ph["warmup"]["duration_s"] == 2.0
    assert ph["warmup"]["requests"] == 2
    assert ph["warmup"]["rps"] == 1.0
    assert ph["rollout"]["duration_s"] == 4.0
    assert (ph["rollout"]["requests"], ph["rollout"]["dropped"]) == (3, 1)
    assert ph["rollout"]["errors_4xx"] == 1
    assert ph["cooldown"]["duration_s"] == 4.0
    assert ph["cooldown"]["requests"] == 2
    assert ph["cooldown"]["latency_ms"] == {"p50": 10.0, "p95": 30.0, "p99": 30.0}
    assert rollout_summary([*ROLLOUT, event(10.0, "load-stop")]).duration_s == 4.0


def test_like_for_like_compares_only_requests_and_users_seen_in_both_phases() -> None:
    rows = [
        row(0.5, latency=2.0), row(1.0, latency=4.0), row(1.5, user="u2", latency=3.0),  # warmup
        row(3.0, latency=20.0), row(4.0, latency=10.0),  # rollout, u1 on the same path: compared
        {**row(4.5, latency=900.0), "name": "/report"},  # a path the warmup never asked
        row(5.0, user="u3", latency=700.0),  # a user the warmup never had
        row(5.5, status=0, unanswered=True),  # no answer: no latency
    ]
    m = measured(rows, [*ROLLOUT, event(8.0, "load-stop")])  # type: ignore[list-item]
    assert m["like_for_like"] == {"steady": {"p99_ms": 4.0, "samples": 2},
                                  "rollout": {"p99_ms": 20.0, "samples": 2}, "classes": 1}
    assert m["phases"]["rollout"]["latency_ms"]["p99"] == 900.0  # the phase itself counts them all
    no_rollout = measured(rows, [event(8.0, "load-stop")])["like_for_like"]
    assert no_rollout["steady"]["samples"] == no_rollout["rollout"]["samples"] == 0


def test_rollout_without_end_runs_to_the_end_of_the_load() -> None:
    rows = [row(0.0), row(3.0), row(5.0)]
    ph = measured(rows, [event(2.0, "rollout-start"), event(9.0, "load-stop")])["phases"]
    assert ph["rollout"]["duration_s"] == 7.0
    assert ph["rollout"]["requests"] == 2
    assert ph["cooldown"]["duration_s"] == 0.0


# --------------------------------------------------------------------------- rollback direction


def test_rollback_direction_v2_to_v1() -> None:
    events = [event(0.0, "rollout-start", version="v1"), event(0.0, "detach", "app-1"),
              event(5.0, "attach", "app-1b"), event(6.0, "rollout-end")]
    rows = [
        row(0.0, user="a", version="v2"),
        row(1.0, user="a", version="v1"),  # first "to" (v1) answer at 1.01
        row(2.0, user="a", version="v2"),  # downgrade: v2 after v1
        row(3.0, user="b", version="v2"),  # last "from" (v2) answer at 3.01
        row(4.0, user="b", version="v1"),
    ]
    exp = measured(rows, events)["exposure"]
    assert (exp["from_version"], exp["to_version"]) == ("v2", "v1")
    assert exp["mixed_window_s"] == pytest.approx(2.0, abs=1e-3)
    assert exp["downgrades"] == 1
    assert exp["users_downgraded"] == 1
    assert exp["users_saw_both"] == 2
    # the same rows read as a v1 -> v2 rollout give other numbers
    forward = measured(rows, MIXED)["exposure"]
    assert forward["mixed_window_s"] == pytest.approx(4.0, abs=1e-3)  # 0.01 .. 4.01
    assert forward["downgrades"] == 2  # a: v1 at 1 after v2 at 0; b: v1 at 4 after v2 at 3


def test_rollout_direction_from_detail() -> None:
    events = [event(0.0, "rollout-start", detail={"from": "v2", "to": "v1"})]
    exp = measured([row(0.0)], events)["exposure"]
    assert (exp["from_version"], exp["to_version"]) == ("v2", "v1")


# ------------------------------------------------------------- versions from the NGINX log

A1, A2, A3 = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"

HISTORY_EVENTS = [
    event(0.0, "start", "app-1", address=A1, version="v1"),
    event(0.0, "start", "app-2", address=A2, version="v1"),
    event(5.0, "stop", "app-1"),  # no address on the event: found by instance
    event(5.5, "start", "app-1b", address=A3, version="v2"),
    event(6.0, "swap", "app-2", address=A2, version="v2"),  # in place: same address
    event(7.0, "kill", "app-9", address="10.0.0.9:8000", version="v1"),  # predates events
]


def test_address_history_from_events() -> None:
    history = address_history_from_events(HISTORY_EVENTS)
    assert sorted(history, key=lambda h: (h[0], h[2])) == sorted(
        [
            (A1, "v1", T0, T0 + 5.0),
            (A2, "v1", T0, T0 + 6.0),
            (A3, "v2", T0 + 5.5, None),
            (A2, "v2", T0 + 6.0, None),
            ("10.0.0.9:8000", "v1", 0.0, T0 + 7.0),
        ],
        key=lambda h: (h[0], h[2]),
    )


def _header_and_log_case() -> tuple[list[RequestRow], list[LbRow]]:
    rows = [
        row(1.0, version="v1", rid="a"),
        row(2.0, version="v1", rid="b"),
        row(5.8, version="v2", rid="c"),
        row(6.5, version="v2", rid="d"),
        row(7.0, version="v1", rid="e"),
    ]
    logs = [
        nginx("a", 1.01, A1),
        nginx("b", 2.01, A2),
        nginx("c", 5.81, f"{A1}, {A3}"),  # retried: the last address answered
        nginx("d", 6.51, A2),  # A2 after the swap: v2
        nginx("e", 7.01, "10.0.0.99:8000"),  # unknown address
    ]
    return rows, logs


def test_attribute_versions_fills_missing_versions() -> None:
    rows, logs = _header_and_log_case()
    stripped = [{**r, "version": None} for r in rows]
    history = address_history_from_events(HISTORY_EVENTS)
    filled = attribute_versions(stripped, logs, history)  # type: ignore[arg-type]
    assert [r["version"] for r in filled] == ["v1", "v1", "v2", "v2", None]
    assert all(r["version"] is None for r in stripped)  # inputs untouched
    kept = attribute_versions(rows, [], history)
    assert [r["version"] for r in kept] == [r["version"] for r in rows]


def test_header_and_log_versions_agree() -> None:
    rows, logs = _header_and_log_case()
    history = address_history_from_events(HISTORY_EVENTS)
    assert agreement(rows, logs, history) == 1.0  # "e" has no log version: not compared
    rows[0] = {**rows[0], "version": "v2"}
    assert agreement(rows, logs, history) == 0.75
    assert agreement(rows, [], history) == 0.0


def test_measure_uses_the_log_when_the_header_is_missing() -> None:
    rows, logs = _header_and_log_case()
    stripped = [{**r, "version": None} for r in rows]
    req = measured(stripped, HISTORY_EVENTS, nginx=logs)["requests"]  # type: ignore[arg-type]
    assert req["by_version"] == {"v1": 2, "v2": 2, "unknown": 1}


def test_users_hit_counts_users_with_a_dropped_request() -> None:
    base = {"method": "GET", "name": "/", "version": "v1", "instance": "a/1", "session": "resumed",
            "latency_ms": 5.0, "error": None, "contract": None, "unanswered": False}
    rows = [
        {**base, "t": 1.0, "t_end": 1.1, "user": "u1", "rid": "r1", "status": 200},
        {**base, "t": 1.2, "t_end": 1.3, "user": "u1", "rid": "r2", "status": 502, "error": "HTTP 502"},
        {**base, "t": 1.4, "t_end": None, "user": "u2", "rid": "r3", "status": 0, "unanswered": True,
         "latency_ms": None},
        {**base, "t": 1.5, "t_end": 1.6, "user": "u3", "rid": "r4", "status": 404},
        {**base, "t": 1.7, "t_end": 1.8, "user": "u4", "rid": "r5", "status": 200},
    ]
    exp = measured(rows, [])["exposure"]  # type: ignore[arg-type]
    assert exp["users_hit"] == 2 and exp["users_total"] == 4  # a 4xx is not a drop


# --------------------------------------------------------------------------- exposure by strategy
# Three servers, four users each sending every 0.2 s, routed in turn over what the load
# balancer has attached when the request is sent. The same load under two strategies.

Fleet = list[tuple[float, list[tuple[str, str]]]]  # (from t, attached [(instance, version)])

ONE_AT_A_TIME_FLEET: Fleet = [
    (0.0, [("a1", "v1"), ("a2", "v1"), ("a3", "v1")]),
    (3.0, [("a2", "v1"), ("a3", "v1")]),  # a1 detached
    (5.0, [("b1", "v2"), ("a3", "v1")]),  # b1 attached, a2 detached: both versions serve
    (7.0, [("b1", "v2"), ("b2", "v2")]),
    (9.0, [("b1", "v2"), ("b2", "v2"), ("b3", "v2")]),
]
V1, V2 = {"version": "v1"}, {"version": "v2"}
ONE_AT_A_TIME_EVENTS = [
    event(2.0, "rollout-start", version="v2"),
    event(3.0, "detach", "a1", **V1), event(3.5, "stop", "a1"), event(3.6, "start", "b1"),
    event(5.0, "attach", "b1", **V2), event(5.0, "detach", "a2", **V1), event(5.5, "stop", "a2"),
    event(5.6, "start", "b2"),
    event(7.0, "attach", "b2", **V2), event(7.0, "detach", "a3", **V1), event(7.5, "stop", "a3"),
    event(7.6, "start", "b3"),
    event(9.0, "attach", "b3", **V2), event(9.5, "rollout-end"), event(12.0, "load-stop"),
]
BLUE_GREEN_FLEET: Fleet = [
    (0.0, [("a1", "v1"), ("a2", "v1"), ("a3", "v1")]),
    (5.0, [("b1", "v2"), ("b2", "v2"), ("b3", "v2")]),  # one switch
]
BLUE_GREEN_EVENTS = [
    event(2.0, "rollout-start", version="v2"),
    *(event(2.5, "start", f"b{i}") for i in (1, 2, 3)),
    *(event(5.0, "attach", f"b{i}", **V2) for i in (1, 2, 3)),
    *(event(5.0, "detach", f"a{i}", **V1) for i in (1, 2, 3)),
    event(5.0, "switch"),
    *(event(6.0, "stop", f"a{i}") for i in (1, 2, 3)),
    event(6.5, "rollout-end"), event(12.0, "load-stop"),
]


def routed_rows(fleet: Fleet, *, sessions: str) -> list[RequestRow]:
    """The rows of the load above; ``sessions`` "memory" (each server its own) or "shared"."""
    rows, seen = [], set()
    for k in range(60):
        for u in range(4):
            t = 0.013 + 0.05 * u + 0.2 * k
            attached = [servers for since, servers in fleet if since <= t][-1]
            name, version = attached[(k + u) % len(attached)]
            user = f"u{u}"
            key = (user, name) if sessions == "memory" else user
            r = row(t, user=user, version=version, instance=f"{name}/boot")
            r["session"] = "resumed" if key in seen else "new"
            seen.add(key)
            rows.append(r)
    return rows


def test_one_at_a_time_and_blue_green_expose_users_differently() -> None:
    rolling = measured(routed_rows(ONE_AT_A_TIME_FLEET, sessions="memory"), ONE_AT_A_TIME_EVENTS)["exposure"]
    switch = measured(routed_rows(BLUE_GREEN_FLEET, sessions="memory"), BLUE_GREEN_EVENTS)["exposure"]
    assert rolling["rollout_window"]["duration_s"] == 6.0  # first detach (3) to last attach (9)
    assert switch["rollout_window"]["duration_s"] == 0.0  # one switch
    assert (rolling["users_total"], switch["users_total"]) == (4, 4)
    assert rolling["users_saw_both"] == 4 and switch["users_saw_both"] == 0
    assert (rolling["users_saw_both_share"], switch["users_saw_both_share"]) == (1.0, 0.0)
    # both versions attached from b1's attach (5) to a3's detach (7); never for blue-green
    assert (rolling["mixed_fleet_s"], switch["mixed_fleet_s"]) == (2.0, 0.0)
    assert rolling["users_exposed_share"] == 1.0 and switch["users_exposed_share"] == 0.0
    assert rolling["requests_exposed"] == 40 and rolling["requests_exposed_share"] == pytest.approx(40 / 240, abs=1e-4)
    assert switch["requests_exposed"] == 0
    assert rolling["downgrades"] > 0 and switch["downgrades"] == 0
    assert rolling["version_flips"] > rolling["users_saw_both"] and switch["version_flips"] == 0
    # over the whole load every user saw both versions in either case: that told them apart not at all
    assert switch["mixed_window_s"] == pytest.approx(0.0, abs=0.2)


def test_sessions_lost_only_without_a_shared_store() -> None:
    for fleet, events in ((ONE_AT_A_TIME_FLEET, ONE_AT_A_TIME_EVENTS), (BLUE_GREEN_FLEET, BLUE_GREEN_EVENTS)):
        memory = measured(routed_rows(fleet, sessions="memory"), events)["exposure"]
        shared = measured(routed_rows(fleet, sessions="shared"), events)["exposure"]
        assert (memory["sessions_lost"], shared["sessions_lost"]) == (4, 0)


def test_a_session_counts_only_if_used_during_the_rollout_and_then_restarted() -> None:
    def answer(t: float, user: str, instance: str, session: str) -> RequestRow:
        r = row(t, user=user, instance=instance)
        r["session"] = session
        return r

    rows = [
        answer(1.0, "warm", "a1/x", "new"),  # used a1 in the warmup only
        answer(8.0, "warm", "b1/y", "new"),
        answer(2.5, "lost", "a1/x", "new"),  # used a1 during the rollout, then started again
        answer(8.0, "lost", "b1/y", "new"),
        answer(2.5, "kept", "a1/x", "new"),  # used a1 during the rollout, session found again
        answer(8.0, "kept", "b1/y", "resumed"),
        answer(2.6, "gone", "a1/x", "new"),  # never came back
    ]
    events = [event(2.0, "rollout-start", version="v2"), event(3.5, "stop", "a1")]
    assert measured(rows, events)["exposure"]["sessions_lost"] == 1


def test_exposure_without_a_fleet_change_counts_nothing() -> None:
    rows = [row(float(i), user="a", version="v1" if i % 2 else "v2") for i in range(6)]
    exp = measured(rows, [event(0.0, "rollout-start", version="v2"), event(6.0, "rollout-end")])["exposure"]
    assert exp["rollout_window"] is None
    assert exp["users_saw_both"] == exp["downgrades"] == exp["version_flips"] == exp["requests_exposed"] == 0
    assert exp["mixed_window_s"] > 0  # the answers themselves still show both versions


def test_the_stall_says_when_it_began() -> None:
    rows = [row(0.0), row(1.0), row(1.5), row(9.0)]  # answers at .01, 1.01, 1.51, 9.01
    m = measured(rows, [event(10.0, "load-stop")])
    assert (m["stall_s"], m["stall_at_s"]) == (pytest.approx(7.5), pytest.approx(1.51))
    assert measured([], [])["stall_at_s"] == 0.0


@pytest.mark.parametrize(("events", "expected"), [
    # rolling, two batches of two: the new half is attached in the reload that detaches the old half
    ([event(0.0, "rollout-start"), event(1.0, "detach", "a1", **V1), event(1.0, "detach", "a2", **V1),
      event(4.0, "attach", "b1", **V2), event(4.0, "attach", "b2", **V2), event(4.0, "detach", "a3", **V1),
      event(4.0, "detach", "a4", **V1), event(7.0, "attach", "b3", **V2), event(7.0, "attach", "b4", **V2)],
     (4.0, 4.0)),
    # double-half: the new fleet attached, then the old one detached
    ([event(0.0, "rollout-start"), event(3.0, "attach", "b1", **V2), event(3.6, "detach", "a1", **V1)], (3.0, 3.6)),
    # rolled back: the new server goes out again, last
    ([event(0.0, "rollout-start"), event(1.0, "detach", "a1", **V1), event(2.0, "attach", "b1", **V2),
      event(2.0, "detach", "a2", **V1), event(5.0, "failed"), event(6.0, "detach", "b1", **V2),
      event(8.0, "attach", "a1b", **V1)], (2.0, 6.0)),
    # in place: swaps change the version of attached servers
    ([event(0.0, "rollout-start"), event(1.0, "swap", "a1", detail={"from": "v1"}, **V2),
      event(2.0, "swap", "a2", detail={"from": "v1"}, **V2)], (1.0, 2.0)),
    # interrupted with both versions attached: mixed until the load ended
    ([event(0.0, "rollout-start"), event(1.0, "detach", "a1", **V1), event(2.0, "attach", "b1", **V2)], (2.0, 10.0)),
    # nothing of v2 ever served
    ([event(0.0, "rollout-start"), event(1.0, "detach", "a1", **V1)], None),
])
def test_mixed_fleet_window(events: list[Event], expected: tuple[float, float] | None) -> None:
    window = mixed_fleet_window(events, "v1", "v2", T0 + 10.0)
    assert window == (None if expected is None else (T0 + expected[0], T0 + expected[1]))


def test_the_first_dropped_requests_are_kept_earliest_first_and_read_back() -> None:
    from sandbox.results.model import Dropped, Requests
    rows = [row(float(t), status=200) for t in range(5)]
    rows += [row(3.5, status=502, instance="app-2"), row(1.5, unanswered=True)]
    rows += [row(4.0 + i / 100, status=0) for i in range(12)]
    req = measure(rows, ROLLOUT).requests
    assert req.dropped == 14 and len(req.dropped_first) == 10
    first, second = req.dropped_first[:2]
    assert (first.t, first.status, first.error) == (T0 + 1.5, 0, "error")  # unanswered, sent first
    assert (second.status, second.instance, second.path) == (502, "app-2", "/api/items/[id]")
    assert second.describe(T0) == "+3.5 s GET /api/items/[id]: HTTP 502 error (from app-2)"
    assert Requests.from_json(req.to_json()) == req
    assert Dropped(T0, "POST", "/api/cart", 0, "", None).describe(None) == "POST /api/cart: no answer"

"""unavoidable_s / overhead_ratio from the executor's events."""

from __future__ import annotations

from sandbox.results.overhead import overhead, overhead_ratio, unavoidable_s
from sandbox.results.report import build_report
from sandbox.results.text import summary_text


def _ev(phase: str, batch: int, **detail: float) -> dict:
    return {"t": 1.0, "phase": phase, "instance": "x", "batch": batch, "detail": detail}


EVENTS = [
    _ev("start", 1), _ev("ready", 1, first_ok_s=0.5), _ev("ready", 1, first_ok_s=0.8),
    _ev("drain", 1, idle_s=0.2), _ev("drain", 1, idle_s=0.1),
    _ev("ready", 2, first_ok_s=0.6), _ev("drain", 2, idle_s=0.4),
]


def test_longest_wait_per_batch_summed() -> None:
    assert unavoidable_s(EVENTS) == 0.8 + 0.2 + 0.6 + 0.4


def test_stops_count_longest_per_batch() -> None:
    stops = [*EVENTS, _ev("stop", 1, stop_s=0.3), _ev("stop", 1, stop_s=0.3), _ev("stop", 2, stop_s=0.25),
             _ev("stop", 2)]  # a stop without a duration (an older report) adds nothing
    assert unavoidable_s(stops) == round(2.0 + 0.3 + 0.25, 3)


def test_the_detach_lag_counts_as_a_wait_per_batch() -> None:
    lagged = [*EVENTS, _ev("term", 1, lag_s=2.0), _ev("term", 1, lag_s=2.0), _ev("term", 2, lag_s=2.0)]
    assert unavoidable_s(lagged) == round(2.0 + 2.0 + 2.0, 3)


def test_no_waits_is_unknown() -> None:
    assert unavoidable_s([_ev("start", 1), {"t": 2.0, "phase": "ready", "detail": {"first_ok_s": None}}]) is None
    assert overhead(5.0, []) == {"unavoidable_s": None, "overhead_ratio": None}


def test_ratio() -> None:
    assert overhead_ratio(4.0, 2.0) == 2.0
    assert overhead_ratio(None, 2.0) is None
    assert overhead_ratio(4.0, 0.0) is None
    assert overhead(4.0, EVENTS) == {"unavoidable_s": 2.0, "overhead_ratio": 2.0}


def test_garbage_detail_counts_as_zero() -> None:
    assert unavoidable_s([_ev("ready", 1, first_ok_s=0.5), {"phase": "drain", "batch": 1,
                                                            "detail": {"idle_s": "?"}}]) == 0.5


def test_report_carries_and_shows_it() -> None:
    report = build_report(meta={"strategy": "one-at-a-time", "duration_s": 5.0, "load": False},
                          measured={}, steps=EVENTS)  # type: ignore[arg-type]
    assert report.to_json()["unavoidable_s"] == 2.0
    assert report.to_json()["overhead_ratio"] == 2.5
    text = summary_text(report)
    assert "ratio 2.50" in text and "2.00 s unavoidable" in text

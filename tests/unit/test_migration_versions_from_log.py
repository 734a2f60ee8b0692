"""The report's ``migration`` block for your own image (e.g. examples/alembic-orders), whose rows carry no
version (``collect`` clears any header: your version names are yours): the answers after the migration
are counted by the version NGINX's log says served them, as every other figure of the report is, so
``migration_errors`` judges them."""

from __future__ import annotations

from typing import Any

from sandbox.config import Settings
from sandbox.fleet import nginx_log
from sandbox.fleet.loadbalancer import LbRow, LbState
from sandbox.results.measure import address_history_from_events
from sandbox.results.records import Event, RequestRow
from sandbox.rollout import migrate
from sandbox.rollout.rehearsal import Collected, Prepared, Ran, rollout_report

T0 = 1_700_000_000.0
OLD, NEW = "10.0.0.1:8000", "10.0.0.2:8000"
EVENTS: list[Event] = [
    {"t": T0, "phase": "start", "instance": "app-1", "address": OLD, "version": "v1"},  # type: ignore[typeddict-item]
    {"t": T0 + 5, "phase": "start", "instance": "app-2", "address": NEW, "version": "v2"},  # type: ignore[typeddict-item]
]


def _row(t: float, status: int, rid: str) -> RequestRow:
    """A request answered with no version header: only the load balancer's log can say who served it."""
    return {"t": T0 + t, "t_end": T0 + t + 0.01, "user": "u1", "rid": rid, "method": "GET", "name": "/api/orders",
            "status": status, "version": None, "instance": None, "session": None, "latency_ms": 10.0,
            "error": None if status < 400 else "error"}


def _logged(rid: str, t: float, upstream: str, status: int) -> LbRow:
    return nginx_log.to_row({"time": T0 + t + 0.01, "rid": rid, "method": "GET", "uri": "/api/orders",
                             "status": status, "upstream_addr": upstream, "upstream_status": str(status),
                             "request_time": 0.01, "upstream_response_time": "0.010"})


def _report(nginx_rows: list[LbRow]) -> dict[str, Any]:
    rows = [_row(1, 200, "a"), _row(3, 200, "b"), _row(4, 409, "c"), _row(6, 200, "d")]
    ran = Ran(outcome="completed", message="", started=T0, t_start=T0 + 2, t_end=T0 + 7, peak=2, load=True,
              mixed_checks=(migrate.record("alembic upgrade head", 0, "Running upgrade 0001 -> 0002", 1.0,
                                           batch=0, timeout_s=300),),
              migration_end=T0 + 2)
    prepared = Prepared(kind="roll", source="v1", target="v2", strategy="one-at-a-time", size=1, env={},
                        instances=[], steps=[], migrate="alembic upgrade head")
    collected = Collected(rows=rows, nginx_rows=nginx_rows, events=EVENTS,
                          history=address_history_from_events(EVENTS), lb=LbState())
    return rollout_report(Settings(), prepared, ran, collected).to_json()


def test_answers_after_the_migration_are_counted_by_the_version_the_log_names() -> None:
    logged = [_logged("a", 1, OLD, 200), _logged("b", 3, OLD, 200), _logged("c", 4, OLD, 409),
              _logged("d", 6, NEW, 200)]
    report = _report(logged)
    # "a" was sent before the migration ended: not counted; v1's 409 is the migration's incompatibility
    assert report["migration"]["by_version_after"] == {"v1": {"answers": 2, "errors": 1},
                                                       "v2": {"answers": 1, "errors": 0}}
    [judged] = [c for c in report["verdict"]["checks"] if c["name"] == "migration_errors"]
    assert (judged["status"], judged["value"]) == ("FAIL", 1)


def test_without_the_log_there_is_nothing_to_judge_and_it_says_so() -> None:
    report = _report([])
    assert report["migration"]["by_version_after"] == {}
    [judged] = [c for c in report["verdict"]["checks"] if c["name"] == "migration_errors"]
    assert judged["status"] == "NOT_RUN"

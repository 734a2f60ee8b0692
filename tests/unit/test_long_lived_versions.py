"""Long-lived connections per version: open at each second of the timeline, and the users whose
reconnection landed on the other version mid-session."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sandbox.results.long_lived import long_lived, open_per_second, version_switches
from sandbox.results.measure import measure
from sandbox.results.model import Second
from sandbox.results.records import LongLivedRow
from tests.unit.test_measure import T0
from tests.unit.test_measure import row as http_row


def conn(user: str, n: int, version: str | None, t_open: float | None, t_end: float) -> LongLivedRow:
    return {"kind": "ws", "user": user, "conn": n, "rid": f"ll-{user}-{n}", "t": (t_open or t_end) - 0.01,
            "t_open": t_open, "t_end": t_end, "status": 101 if t_open else 0, "version": version,
            "instance": None, "messages": 1, "first": 1, "last": 1, "lost": 0, "duplicated": 0,
            "close": "clean" if t_open else "failed", "code": "1001" if t_open else "HTTP 502",
            "reconnect_ms": None, "retry_ms": None}


def test_users_who_reconnected_to_the_other_version_and_back() -> None:
    rows = [
        conn("stays", 1, "v1", 1.0, 5.0), conn("stays", 2, "v1", 5.5, 9.0),
        conn("moves", 1, "v1", 1.0, 5.0), conn("moves", 2, "v2", 5.5, 9.0), conn("moves", 3, "v2", 9.5, 12.0),
        conn("back", 1, "v1", 1.0, 5.0), conn("back", 2, "v2", 5.5, 6.0), conn("back", 3, "v1", 6.5, 9.0),
        # a failed attempt (no handshake, no version) between two v2 connections is no switch
        conn("failed", 1, "v2", 1.0, 5.0), conn("failed", 2, None, None, 5.2), conn("failed", 3, "v2", 5.9, 9.0),
        conn("new", 1, "v2", 7.0, 9.0),
    ]
    assert version_switches(rows) == {"users_switched": 2, "users_switched_back": 1}
    # the rows' order does not matter: each user's connections are taken in the order they opened
    assert version_switches(list(reversed(rows))) == version_switches(rows)
    figures = long_lived(rows)
    assert (figures.users_switched, figures.users_switched_back) == (2, 1)
    assert ("versions", "2 users reconnected to the other version, 1 of them back again") in figures.rows()
    assert type(figures).from_json(json.loads(json.dumps(figures.to_json()))) == figures


def test_open_connections_per_second_count_those_open_at_its_end() -> None:
    rows = [
        conn("a", 1, "v1", 100.2, 102.5),  # open at the ends of seconds 0 and 1 (100.0 + 1, + 2)
        conn("a", 2, "v2", 102.9, 104.0),  # at the end of second 2 (103.0); it ended at 104.0 exactly: not 3
        conn("b", 1, "v1", 100.5, 100.9),  # opened and closed within second 0: never open at an end
        conn("c", 1, None, 101.0, 103.5),  # no version in its handshake; opened at 101.0 exactly: counted there
        conn("d", 1, "v1", None, 101.0),  # never opened
    ]
    assert open_per_second(rows, 100.0, 5) == [
        {"v1": 1, "?": 1}, {"v1": 1, "?": 1}, {"v2": 1, "?": 1}, {}, {},
    ]
    assert open_per_second([], 100.0, 2) == [{}, {}]


def test_the_timeline_counts_open_connections_per_version_only_when_some_ran() -> None:
    http = [http_row(t, version="v1" if t < 3 else "v2") for t in (0.1, 1.1, 2.1, 3.1, 4.1)]
    events: list[dict[str, Any]] = [
        {"t": T0 + 1.5, "phase": "rollout-start", "instance": None},
        {"t": T0 + 3.5, "phase": "rollout-end", "instance": None},
    ]
    plain = measure(http, events)
    assert plain.exposure.timeline and all(not s.long_lived_open for s in plain.exposure.timeline)
    assert all("long_lived_open" not in s.to_json() for s in plain.exposure.timeline)
    start = plain.window.start if plain.window else T0
    ll = [conn("u", 1, "v1", start + 0.5, start + 2.5), conn("u", 2, "v2", start + 2.7, start + 9.0)]
    with_ll = measure(http, events, long_lived_rows=ll)
    opened = [dict(s.long_lived_open) for s in with_ll.exposure.timeline]
    assert opened[:4] == [{"v1": 1, "v2": 0}, {"v1": 1, "v2": 0}, {"v1": 0, "v2": 1}, {"v1": 0, "v2": 1}], opened
    # the rest of the figures are the same as without
    assert replace(with_ll.exposure, timeline=()) == replace(plain.exposure, timeline=())
    assert with_ll.long_lived.users_switched == 1
    second = with_ll.exposure.timeline[0]
    assert Second.from_json(json.loads(json.dumps(second.to_json()))) == second
    assert second.to_json()["long_lived_open"] == {"v1": 1, "v2": 0}

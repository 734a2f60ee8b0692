"""What the users of the fleet saw, as numbers: pure functions, no I/O.

Inputs are the records of :mod:`sandbox.results.records`: one ``RequestRow`` per request
the load generator started, the controller's ``Event`` list and, optionally, the
load balancer's access-log rows (:class:`~sandbox.fleet.loadbalancer.LbRow`: each names the
servers tried, the last one answered). :func:`measure` turns them into the typed
:class:`~sandbox.results.model.Figures` that the verdict judges and every output renders.

Conventions used throughout (DESIGN.md, "What is measured"):

* **ok**: an HTTP answer with status 200-399.
* **dropped**: status 0 (connection error, reset, timeout, or still unanswered
  when the load stopped) or status >= 500. 4xx answers are counted apart.
* **answered**: the request got an HTTP answer (status > 0, not unanswered);
  latency percentiles are taken over answered requests of any status.
* **slow**: the request waited longer than ``slow_ms``: answered or failed after
  more than that, or still unanswered when the load stopped.
* **rollout window**: from the first change to the load balancer's servers after
  ``rollout-start`` (a detach, an attach, a switch or an in-place swap) to the
  last one: while it lasts both versions may serve. A request is *in* it when
  it was sent within it. Exposure figures (users who saw both versions,
  downgrades, version flips, the exposed shares) count only such requests:
  warmup and cooldown alone would make every user see both.
* Percentiles use the **nearest-rank** method: the value at rank
  ``ceil(p / 100 * n)`` of the ``n`` sorted values (always a measured value).
* Every input list may be unsorted and rows may lack optional fields; rows are
  sorted by ``t`` (then ``rid``) and events by ``t`` before anything is counted.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sandbox.fleet.loadbalancer import LbRow
from sandbox.fleet.versions import TOY_VERSIONS
from sandbox.results.model import (
    Drain,
    Dropped,
    Exposure,
    Figures,
    Latency,
    LatencySample,
    LikeForLike,
    Phase,
    Requests,
    Second,
    Span,
    opt_float,
    opt_int,
)
from sandbox.results.records import Event, LongLivedRow, RequestRow, is_load_rid

HistoryEntry = tuple[str, str, float, float | None]
"""``(address, version, t_from, t_to)``: ``version`` held ``address`` in that span."""
AddressHistory = list[HistoryEntry]

VANISH_PHASES = frozenset({"stop", "kill", "swap"})
"""Event phases after which the server's in-memory state is gone."""

@dataclass(frozen=True)
class MeasureSettings:
    """Knobs of the measurement itself."""

    slow_ms: float = 2000.0


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0-100] of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


R = TypeVar("R", bound=Mapping[str, Any])  # a request row or an event, kept as its own type by the sorts


def _sorted_rows(rows: Iterable[R]) -> list[R]:
    return sorted(rows, key=lambda r: (float(r.get("t") or 0.0), str(r.get("rid") or "")))


def _sorted_events(events: Iterable[R]) -> list[R]:
    # stable sort: events with equal t keep the controller's order
    return sorted(events, key=lambda e: float(e.get("t") or 0.0))


def _status(row: Mapping[str, Any]) -> int:
    return int(row.get("status") or 0)


def is_unanswered(row: Mapping[str, Any]) -> bool:
    """True when the request was still waiting when the load stopped."""
    return bool(row.get("unanswered")) or row.get("t_end") is None


def is_ok(row: Mapping[str, Any]) -> bool:
    """True for a successful answer (2xx/3xx)."""
    return not is_unanswered(row) and 200 <= _status(row) < 400


def is_dropped(row: Mapping[str, Any]) -> bool:
    """True for status 0 (no HTTP answer), 5xx, or a request unanswered at stop."""
    status = _status(row)
    return is_unanswered(row) or status == 0 or status >= 500


def is_4xx(row: Mapping[str, Any]) -> bool:
    """True for a 4xx answer (counted apart from dropped)."""
    return not is_unanswered(row) and 400 <= _status(row) < 500


def is_answered(row: Mapping[str, Any]) -> bool:
    """True when the request got an HTTP answer (any status > 0)."""
    return not is_unanswered(row) and _status(row) > 0


def latency_ms(row: Mapping[str, Any]) -> float | None:
    """The row's latency in ms: ``latency_ms``, else ``t_end - t``; None if unknown."""
    value = row.get("latency_ms")
    if value is not None:
        return float(value)
    t_end = row.get("t_end")
    if t_end is None or row.get("t") is None:
        return None
    return (float(t_end) - float(row["t"])) * 1000.0


def _end(row: Mapping[str, Any]) -> float:
    """When the answer arrived (``t_end``), or when it was sent if unknown."""
    t_end = row.get("t_end")
    return float(t_end if t_end is not None else row.get("t") or 0.0)


def _latency_summary(rows: Iterable[Mapping[str, Any]], *, with_max: bool) -> Latency:
    values = [v for r in rows if is_answered(r) and (v := latency_ms(r)) is not None]
    return Latency(p50=_round(percentile(values, 50), 1), p95=_round(percentile(values, 95), 1),
                   p99=_round(percentile(values, 99), 1), max=_round(max(values), 1) if values and with_max else None)


def _first_event(events: Sequence[Mapping[str, Any]], phase: str) -> Mapping[str, Any] | None:
    return next((e for e in events if e.get("phase") == phase), None)


def _last_event(events: Sequence[Mapping[str, Any]], phase: str) -> Mapping[str, Any] | None:
    return next((e for e in reversed(events) if e.get("phase") == phase), None)


# --------------------------------------------------------------------------- window


def load_window(
    rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> tuple[float, float]:
    """``(start, end)`` of the load: first row's ``t`` to the last ``t_end``/``t``
    or the ``load-stop`` event, whichever is later.

    Without rows, the ``load-start``/``load-stop`` events (or the first/last
    event) bound it; with nothing at all it is ``(0.0, 0.0)``.
    """
    stop = _last_event(events, "load-stop")
    if rows:
        start = min(float(r.get("t") or 0.0) for r in rows)
        ends = [_end(r) for r in rows] + [float(r.get("t") or 0.0) for r in rows]
        if stop is not None:
            ends.append(float(stop["t"]))
        return start, max(ends)
    if not events:
        return 0.0, 0.0
    begin = _first_event(events, "load-start") or events[0]
    finish = stop or events[-1]
    start = float(begin["t"])
    return start, max(start, float(finish["t"]))


def longest_stall(rows: Sequence[Mapping[str, Any]], window: tuple[float, float]) -> tuple[float, float]:
    """``(start, length)`` of the longest stretch of ``window`` with no successful answer
    completing (the first such stretch when several are as long)."""
    start, end = window
    marks = sorted(min(max(_end(r), start), end) for r in rows if is_ok(r))
    points = [start, *marks, end]
    return max(((a, b - a) for a, b in itertools.pairwise(points)), key=lambda gap: gap[1], default=(start, 0.0))


def stall_seconds(rows: Sequence[Mapping[str, Any]], window: tuple[float, float]) -> float:
    """Longest stretch of ``window`` with no successful answer completing."""
    return longest_stall(rows, window)[1]


# --------------------------------------------------------------------------- requests


GONE_STATUSES = frozenset({404, 410})
"""What a removed endpoint answers. Only these count in ``not_found``: the default users never get a
4xx by design (valid items, well-formed carts, a fresh session for an unknown cookie), while your own
users may get 400, 401, 403, 409 or 429 on purpose; a 404 or 410 during a rollout is one version
lacking what the other serves."""


def not_found(rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> int:
    """404 and 410 answers to requests sent from the rollout's start on (every row without one)."""
    began = _first_event(events, "rollout-start")
    since = float(began["t"]) if began is not None else -math.inf
    return sum(1 for r in rows if _status(r) in GONE_STATUSES and not is_unanswered(r)
               and float(r.get("t") or 0.0) >= since)


def unrecorded(rows: Sequence[Mapping[str, Any]], nginx: Sequence[LbRow], window: tuple[float, float]) -> int:
    """Requests of the load generator (its request id format) that NGINX answered within the load
    window (a second either side) and that have no row: answers the count would otherwise miss."""
    seen = {str(r.get("rid")) for r in rows}
    start, end = window
    return sum(1 for n in nginx if is_load_rid(n["rid"]) and n["rid"] not in seen and start - 1 <= n["time"] <= end + 1)


def request_counts(
    rows: Sequence[Mapping[str, Any]],
    nginx: Sequence[Mapping[str, Any]],
    settings: MeasureSettings,
    versions: Sequence[str] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> Requests:
    """The requests of :func:`measure`, by how they ended; ``by_version`` names each of ``versions``
    (the rollout's), even at 0."""
    budget_ms = settings.slow_ms
    by_version: dict[str, int] = {v: 0 for v in versions}
    by_version["unknown"] = 0
    for row in rows:
        if is_ok(row):
            key = row.get("version") or "unknown"
            by_version[key] = by_version.get(key, 0) + 1
    return Requests(
        total=len(rows),
        ok=sum(1 for r in rows if is_ok(r)),
        dropped=sum(1 for r in rows if is_dropped(r)),
        errors_4xx=sum(1 for r in rows if is_4xx(r)),
        unanswered=sum(1 for r in rows if is_unanswered(r)),
        slow=sum(1 for r in rows if _is_slow(r, budget_ms)),
        retried=sum(1 for n in nginx if len(n.get("servers") or ()) > 1),
        not_found=not_found(rows, events),
        by_version=by_version,
        dropped_first=tuple(_dropped(r) for r in sorted((r for r in rows if is_dropped(r)),
                                                       key=lambda r: float(r.get("t") or 0.0))[:DROPPED_SHOWN]),
    )


DROPPED_SHOWN = 10  # dropped requests kept in the report, the earliest first


def _dropped(row: Mapping[str, Any]) -> Dropped:
    error = str(row.get("error") or ("unanswered when the load stopped" if is_unanswered(row) else ""))
    return Dropped(t=float(row.get("t") or 0.0), method=str(row.get("method") or ""),
                   path=str(row.get("name") or ""), status=_status(row), error=error[:200],
                   instance=str(row["instance"]) if row.get("instance") else None)


def _is_slow(row: Mapping[str, Any], budget_ms: float) -> bool:
    if is_unanswered(row):
        return True
    value = latency_ms(row)
    return value is not None and value > budget_ms


# --------------------------------------------------------------------------- exposure


def rollout_direction(events: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``(from, to)`` versions of the rollout.

    Taken from the ``rollout-start`` event: ``detail["from"]``/``detail["to"]``
    when given, else its ``version`` field is the target and the other of the
    toy app's versions the origin. Without such an event: the toy app's.
    """
    old, new = TOY_VERSIONS
    start = _first_event(events, "rollout-start")
    if start is None:
        return old, new
    detail = start.get("detail") or {}
    to = detail.get("to") or start.get("version") or new
    return str(detail.get("from") or (new if to == old else old)), str(to)


def mixed_window_s(rows: Sequence[Mapping[str, Any]], from_v: str, to_v: str) -> float:
    """Seconds from the first successful ``to_v`` answer to the last ``from_v`` one."""
    to_ends = [_end(r) for r in rows if is_ok(r) and r.get("version") == to_v]
    from_ends = [_end(r) for r in rows if is_ok(r) and r.get("version") == from_v]
    if not to_ends or not from_ends:
        return 0.0
    return max(0.0, max(from_ends) - min(to_ends))


FLEET_CHANGE_PHASES = frozenset({"attach", "detach", "switch", "swap"})
"""Event phases that change which servers (or versions) the load balancer sends to."""


def rollout_window(events: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """``(start, end)`` of the rollout window, or None when the fleet never changed.

    From the first fleet change (:data:`FLEET_CHANGE_PHASES`) at or after the
    first ``rollout-start`` (any time without one) to the last: a detach to an
    attach for rolling strategies, an attach to a detach for double-half, one
    instant for blue-green's single switch.
    """
    began = _first_event(events, "rollout-start")
    since = float(began["t"]) if began is not None else -math.inf
    times = [float(e["t"]) for e in events
             if e.get("phase") in FLEET_CHANGE_PHASES and float(e.get("t") or 0.0) >= since]
    return (min(times), max(times)) if times else None


def _enters(event: Mapping[str, Any], version: str) -> bool:
    phase = event.get("phase")
    return phase in ("attach", "swap") and event.get("version") == version


def _leaves(event: Mapping[str, Any], version: str) -> bool:
    phase, detail = event.get("phase"), event.get("detail") or {}
    return (phase == "detach" and event.get("version") == version) or (
        phase == "swap" and detail.get("from") == version)


def mixed_fleet_window(
    events: Sequence[Mapping[str, Any]], from_v: str, to_v: str, load_end: float
) -> tuple[float, float] | None:
    """``(start, end)`` while the load balancer sent to both versions, or None if it never did.

    From the first server of ``to_v`` put in service (an attach, or an in-place
    swap to it) to the last server of either version taken out after that (a
    detach, or a swap away from it): the old version's last one, or the new
    one's last in a rollback. When none was taken out after it, the fleet stayed
    mixed until ``load_end``. A resumed rollout whose fleet was already mixed is
    counted from its first such event only.
    """
    began = _first_event(events, "rollout-start")
    since = float(began["t"]) if began is not None else -math.inf
    timed = [(float(e.get("t") or 0.0), e) for e in events if float(e.get("t") or 0.0) >= since]
    start = next((t for t, e in timed if _enters(e, to_v)), None)
    if start is None:
        return None
    ends = [t for t, e in timed if t >= start and (_leaves(e, from_v) or _leaves(e, to_v))]
    return start, max(ends) if ends else max(start, load_end)


def in_window(rows: Sequence[Mapping[str, Any]], window: tuple[float, float] | None) -> list[Mapping[str, Any]]:
    """The rows sent within ``window`` (none when it is None)."""
    if window is None:
        return []
    start, end = window
    return [r for r in rows if start <= float(r.get("t") or 0.0) <= end]


def _answers_by_user(rows: Sequence[Mapping[str, Any]], versions: tuple[str, str]) -> dict[str, list[str]]:
    """Per user, the versions of their successful answers in the order they arrived."""
    per_user: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if is_ok(row) and row.get("version") in versions:
            per_user[str(row.get("user"))].append(row)
    return {
        user: [str(r["version"]) for r in sorted(answers, key=lambda r: (_end(r), float(r.get("t") or 0.0)))]
        for user, answers in per_user.items()
    }


def downgrades_by_user(rows: Sequence[Mapping[str, Any]], from_v: str, to_v: str) -> dict[str, int]:
    """Per user, the successful ``from_v`` answers received after a ``to_v`` one.

    Each user's answers are taken in the order they arrived (``t_end``).
    """
    counts: dict[str, int] = {}
    for user, versions in _answers_by_user(rows, (from_v, to_v)).items():
        seen_new = False
        for version in versions:
            if version == to_v:
                seen_new = True
            elif seen_new:
                counts[user] = counts.get(user, 0) + 1
    return counts


def version_flips(rows: Sequence[Mapping[str, Any]], from_v: str, to_v: str) -> int:
    """Times a user's answer came from another version than their previous answer."""
    return sum(
        sum(1 for a, b in itertools.pairwise(versions) if a != b)
        for versions in _answers_by_user(rows, (from_v, to_v)).values()
    )


def sessions_lost(rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> int:
    """Users whose session was in use during the rollout on a server that then vanished,
    and who then had to start a new one.

    A server vanishes at a ``stop``, ``kill`` or ``swap`` event for host ``H``;
    an answer came from it when its ``instance`` starts with ``H + "/"``. *In
    use during the rollout*: a successful answer from it between ``rollout-start``
    (any time without one) and the vanishing. *Then lost*: an answer to the same
    user after their last one from ``H`` says the session is ``"new"`` (a detached
    server loses its users before it is stopped). When no row carries a session
    state (an app that does not say), that cannot be seen and only the first
    condition applies.
    """
    began = _first_event(events, "rollout-start")
    since = float(began["t"]) if began is not None else -math.inf
    observable = any(r.get("session") for r in rows)
    restarted: dict[str, list[float]] = defaultdict(list)  # user -> ends of answers with a new session
    for row in rows:
        if row.get("session") == "new" and is_answered(row):
            restarted[str(row.get("user"))].append(_end(row))
    lost: set[str] = set()
    for event in events:
        host = event.get("instance")
        if event.get("phase") not in VANISH_PHASES or not host:
            continue
        prefix, when = f"{host}/", float(event["t"])
        last_use: dict[str, float] = {}
        for row in rows:
            instance = row.get("instance") or ""
            if is_ok(row) and instance.startswith(prefix) and since <= _end(row) < when:
                user = str(row.get("user"))
                last_use[user] = max(last_use.get(user, -math.inf), _end(row))
        lost.update(user for user, used in last_use.items()
                    if not observable or any(t > used for t in restarted.get(user, ())))
    return len(lost)


def _users_saw_both(rows: Sequence[Mapping[str, Any]], a: str, b: str) -> int:
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if is_ok(row) and row.get("version"):
            seen[str(row.get("user"))].add(str(row["version"]))
    return sum(1 for versions in seen.values() if {a, b} <= versions)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def timeline(
    rows: Sequence[Mapping[str, Any]], window: tuple[float, float], versions: Sequence[str] = ()
) -> tuple[Second, ...]:
    """One :class:`Second` per whole second of ``window``: answers per version, drops, p99.

    Each version (``versions`` even at 0, any other once it answers) counts the
    successful answers finishing in the second, ``dropped``
    the dropped requests *sent* in it, ``p99_ms`` the p99 latency of answers
    finishing in it (None when there are none).
    """
    start, end = window
    if end <= start and not rows:
        return ()
    n = math.floor(end - start) + 1
    answers: list[dict[str, int]] = [dict.fromkeys(versions, 0) for _ in range(n)]
    dropped = [0] * n
    latencies: list[list[float]] = [[] for _ in range(n)]

    def index(t: float) -> int:
        return min(max(math.floor(t - start), 0), n - 1)

    for row in rows:
        if is_dropped(row):
            dropped[index(float(row.get("t") or start))] += 1
        if is_unanswered(row):
            continue
        i = index(_end(row))
        version = row.get("version")
        if is_ok(row) and version:
            answers[i][version] = answers[i].get(version, 0) + 1
        value = latency_ms(row)
        if is_answered(row) and value is not None:
            latencies[i].append(value)
    return tuple(Second(i, answers[i], dropped[i], _round(percentile(latencies[i], 99), 1)) for i in range(n))


def routed_rids(nginx: Sequence[LbRow]) -> frozenset[str]:
    """The request ids the LB logged as naming a version (header routing); "" never counts."""
    return frozenset(n["rid"] for n in nginx if n.get("route") and n["rid"])


def exposure(
    rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    window: tuple[float, float],
    routed: frozenset[str] = frozenset(),
) -> Exposure:
    """What the mixed fleet reached, for :func:`measure`.

    ``users_saw_both`` (with its ``_share`` of all users), ``downgrades``, ``users_downgraded``
    and ``version_flips`` count only requests sent within the rollout window (``rollout_window``:
    absolute start and end, and its duration). ``users_exposed`` and
    ``requests_exposed`` (with their ``*_share`` of all users and requests) are
    those sent while the fleet was mixed (:func:`mixed_fleet_window`, lasting
    ``mixed_fleet_s``).

    ``routed`` holds the request ids that named their version (header routing): those requests went
    where they asked, so the crossing figures (``users_saw_both``, the downgrades, ``version_flips``,
    ``mixed_window_s``) leave them out; ``requests_routed`` counts them.
    """
    from_v, to_v = rollout_direction(events)
    r_window = rollout_window(events)
    balanced = [r for r in rows if str(r.get("rid")) not in routed] if routed else rows
    inside = in_window(balanced, r_window)
    m_window = mixed_fleet_window(events, from_v, to_v, window[1])
    exposed = in_window(rows, m_window)
    downgrades = downgrades_by_user(inside, from_v, to_v)
    users_total = len({str(r.get("user")) for r in rows})
    users_exposed = len({str(r.get("user")) for r in exposed})
    saw_both = _users_saw_both(inside, from_v, to_v)
    return Exposure(
        from_version=from_v,
        to_version=to_v,
        mixed_window_s=round(mixed_window_s(balanced, from_v, to_v), 3),
        rollout_window=None if r_window is None else _span(r_window),
        users_total=users_total,
        users_saw_both=saw_both,
        users_saw_both_share=_share(saw_both, users_total),
        mixed_fleet_s=0.0 if m_window is None else round(m_window[1] - m_window[0], 3),
        users_exposed=users_exposed,
        users_exposed_share=_share(users_exposed, users_total),
        requests_exposed=len(exposed),
        requests_exposed_share=_share(len(exposed), len(rows)),
        # how far a problem reached: users with at least one dropped request
        users_hit=len({str(r.get("user")) for r in rows if is_dropped(r)}),
        downgrades=sum(downgrades.values()),
        users_downgraded=len(downgrades),
        version_flips=version_flips(inside, from_v, to_v),
        contract_violations=sum(1 for r in rows if r.get("contract") == "violation"),
        sessions_lost=sessions_lost(rows, events),
        users_failed=len(failed := {str(r.get("user")) for r in rows
                                    if is_dropped(r) or r.get("contract") == "violation"}),
        users_failed_share=_share(len(failed), users_total),
        timeline=timeline(rows, window, (from_v, to_v)),
        requests_routed=len(rows) - len(balanced),
    )


def _with_long_lived_open(exp: Exposure, rows: Sequence[LongLivedRow], start: float) -> Exposure:
    """``exp`` with each second of its timeline counting the long-lived connections open at its end,
    per version (both versions of the rollout named, at 0 too); unchanged when none ran."""
    from sandbox.results.long_lived import open_per_second

    if not rows or not exp.timeline:
        return exp
    per_second = open_per_second(rows, start, len(exp.timeline))
    named = [v for v in (exp.from_version, exp.to_version) if v]
    return replace(exp, timeline=tuple(
        replace(sec, long_lived_open={**dict.fromkeys(named, 0), **open_now})
        for sec, open_now in zip(exp.timeline, per_second, strict=True)))


def _span(bounds: tuple[float, float]) -> Span:
    start, end = bounds
    return Span(start, end, round(end - start, 3))


# --------------------------------------------------------------------------- phases


def phase_bounds(
    events: Sequence[Mapping[str, Any]], window: tuple[float, float]
) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` of warmup/rollout/cooldown, or one "all" phase.

    The rollout runs from ``rollout-start`` to ``rollout-end``; a run that
    never reached ``rollout-end`` ends it at ``rollback-end`` if any, else at
    the end of the load window.
    """
    start, end = window
    began = _first_event(events, "rollout-start")
    if began is None:
        return [("all", start, end)]
    r_start = float(began["t"])
    finished = _last_event(events, "rollout-end") or _last_event(events, "rollback-end")
    r_end = float(finished["t"]) if finished is not None else max(end, r_start)
    return [
        ("warmup", min(start, r_start), r_start),
        ("rollout", r_start, r_end),
        ("cooldown", r_end, max(end, r_end)),
    ]


def phases(
    rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    window: tuple[float, float],
) -> dict[str, Phase]:
    """Each phase's figures by its name: requests are assigned to a phase by when they were sent."""
    bounds = phase_bounds(events, window)
    out: dict[str, Phase] = {}
    for (name, p_start, p_end), inside in zip(bounds, _phase_members(rows, bounds), strict=True):
        duration = max(0.0, p_end - p_start)
        out[name] = Phase(
            duration_s=round(duration, 3),
            requests=len(inside),
            rps=round(len(inside) / duration, 2) if duration > 0 else 0.0,
            dropped=sum(1 for r in inside if is_dropped(r)),
            errors_4xx=sum(1 for r in inside if is_4xx(r)),
            latency=_latency_summary(inside, with_max=False),
        )
    return out


def _phase_members(
    rows: Sequence[Mapping[str, Any]], bounds: Sequence[tuple[str, float, float]]
) -> list[list[Mapping[str, Any]]]:
    """The rows of each phase: the last phase begun when the row was sent; before all: the first."""
    starts = [p_start for _, p_start, _ in bounds]
    members: list[list[Mapping[str, Any]]] = [[] for _ in bounds]
    for row in rows:
        members[max(0, bisect.bisect_right(starts, float(row.get("t") or 0.0)) - 1)].append(row)
    return members


def like_for_like(
    rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    window: tuple[float, float],
) -> LikeForLike:
    """The p99 of the warmup ("steady") and of the rollout over the
    same requests only (their method and name, and their user, seen answered in both phases),
    with the number of answers each rests on and the number of request classes compared."""
    bounds = phase_bounds(events, window)
    # no rollout began: one "all" phase, nothing to compare
    members = _phase_members(rows, bounds)[:2] if len(bounds) > 1 else [[], []]
    steady, rolling = ([(r, v) for r in m if is_answered(r) and (v := latency_ms(r)) is not None]
                       for m in members)

    def kind(row: Mapping[str, Any]) -> tuple[Any, Any]:
        return row.get("method"), row.get("name")

    classes = {kind(r) for r, _ in steady} & {kind(r) for r, _ in rolling}
    users = {r.get("user") for r, _ in steady} & {r.get("user") for r, _ in rolling}

    def sample(answers: list[tuple[Mapping[str, Any], float]]) -> LatencySample:
        values = [v for r, v in answers if kind(r) in classes and r.get("user") in users]
        return LatencySample(_round(percentile(values, 99), 1), len(values))

    return LikeForLike(sample(steady), sample(rolling), len(classes))


# --------------------------------------------------------------------------- rollout


def peak_instances(events: Sequence[Mapping[str, Any]]) -> int:
    """Most app containers alive at once, as implied by the events.

    The count starts at the ``rollout-start`` event's ``detail["instances"]``
    (0 if absent) and moves +1 per ``start``, -1 per ``stop``/``kill`` event
    from then on (from the first event when there is no ``rollout-start``).
    """
    at = next((i for i, e in enumerate(events) if e.get("phase") == "rollout-start"), None)
    count = 0
    todo: Sequence[Mapping[str, Any]] = events
    if at is not None:
        detail = events[at].get("detail") or {}
        try:
            count = int(detail.get("instances") or 0)
        except (TypeError, ValueError):
            count = 0
        todo = events[at + 1 :]
    peak = count
    for event in todo:
        phase = event.get("phase")
        if phase == "start":
            count += 1
        elif phase in ("stop", "kill"):
            count -= 1
        peak = max(peak, count)
    return peak


@dataclass(frozen=True)
class RolloutSummary:
    """What the events say of the rollout itself: how long it took (None when it never ended)
    and the most app containers alive at once."""

    duration_s: float | None
    peak_instances: int


def rollout_summary(events: Sequence[Mapping[str, Any]]) -> RolloutSummary:
    """The rollout's duration (start to end, or None) and peak instances, from its events in time order."""
    ordered = _sorted_events(events)
    began = _first_event(ordered, "rollout-start")
    ended = _last_event(ordered, "rollout-end")
    duration = None
    if began is not None and ended is not None:
        duration = round(max(0.0, float(ended["t"]) - float(began["t"])), 3)
    return RolloutSummary(duration, peak_instances(ordered))


def drains(events: Sequence[Mapping[str, Any]]) -> tuple[Drain, ...]:
    """One :class:`Drain` per ``drain`` event: instance, drain duration, in-flight count at its
    start, whether it gave up at the drain timeout or could not tell (``timed_out``) and why (``reason``)."""
    return tuple(_drain(e) for e in events if e.get("phase") == "drain")


def _drain(event: Mapping[str, Any]) -> Drain:
    detail = event.get("detail") or {}
    return Drain(event.get("instance"), opt_float(detail.get("duration_s")), opt_int(detail.get("in_flight")),
                 bool(detail.get("timed_out")), detail.get("reason"), opt_int(detail.get("long_lived")),
                 opt_float(detail.get("long_lived_close_s")), opt_int(detail.get("long_lived_left")))


# ------------------------------------------------------------- versions from the NGINX log


def address_history_from_events(events: Sequence[Event]) -> AddressHistory:
    """Which version held which address when: ``[(address, version, t_from, t_to)]``.

    A ``start`` or ``swap`` event with an address and a version opens an entry
    (closing any entry still open for that address, as an in-place swap
    does); a ``stop`` or ``kill`` event closes the open entry of its address
    (or of its instance's address when the event has none). A ``stop``/``kill``
    with an address and version but no open entry records a server that
    existed before the events began: ``t_from`` is 0.0.
    """
    history: AddressHistory = []
    open_at: dict[str, int] = {}  # address -> index in history
    address_of: dict[str, str] = {}  # instance -> address
    for event in _sorted_events(events):
        phase, t = event.get("phase"), float(event.get("t") or 0.0)
        address, version = event.get("address"), event.get("version")
        instance = event.get("instance")
        if address and instance:
            address_of[str(instance)] = str(address)
        if phase in ("start", "swap") and address and version:
            _close(history, open_at, str(address), t)
            open_at[str(address)] = len(history)
            history.append((str(address), str(version), t, None))
        elif phase in ("stop", "kill"):
            addr = address or (address_of.get(str(instance)) if instance else None)
            if not addr:
                continue
            if str(addr) in open_at:
                _close(history, open_at, str(addr), t)
            elif version:
                history.append((str(addr), str(version), 0.0, t))
    return history


def _close(history: AddressHistory, open_at: dict[str, int], address: str, t: float) -> None:
    index = open_at.pop(address, None)
    if index is not None:
        addr, version, t_from, _ = history[index]
        history[index] = (addr, version, t_from, t)


def version_at(address: str, when: float, history: Sequence[HistoryEntry]) -> str | None:
    """The version that held ``address`` at ``when`` (the latest such entry), or None."""
    best: tuple[float, str] | None = None
    for addr, version, t_from, t_to in history:
        if addr != address or when < t_from or (t_to is not None and when > t_to):
            continue
        if best is None or t_from >= best[0]:
            best = (t_from, version)
    return best[1] if best else None


def _nginx_by_rid(nginx: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(n["rid"]): n for n in nginx if n.get("rid")}


def _log_version(
    row: Mapping[str, Any],
    by_rid: Mapping[str, Mapping[str, Any]],
    history: Sequence[HistoryEntry],
) -> str | None:
    entry = by_rid.get(str(row.get("rid")))
    if entry is None:
        return None
    addresses = entry.get("servers") or []
    if not addresses:
        return None
    when = entry.get("time")
    when = float(when) if when is not None else _end(row)
    return version_at(addresses[-1], when, history)


def attribute_versions(
    rows: Sequence[RequestRow],
    nginx: Sequence[LbRow],
    address_history: Sequence[HistoryEntry],
) -> list[RequestRow]:
    """Copies of ``rows`` with ``version`` filled from the NGINX log where it was None.

    The version is the one that held the *last* upstream address NGINX used
    for the request (the server that answered after any retry), at the time
    NGINX logged it. Rows with a version, or with no usable log line, are
    returned unchanged (as copies).
    """
    by_rid = _nginx_by_rid(nginx)
    out: list[RequestRow] = []
    for row in rows:
        copy: RequestRow = {**row}
        if copy.get("version") is None:
            copy["version"] = _log_version(row, by_rid, address_history)
        out.append(copy)
    return out


def agreement(
    rows: Sequence[RequestRow],
    nginx: Sequence[LbRow],
    address_history: Sequence[HistoryEntry],
) -> float:
    """Share of rows whose header version equals the NGINX-derived one.

    Only rows where both are known count; 0.0 when there are none (nothing
    was shown to agree).
    """
    by_rid = _nginx_by_rid(nginx)
    pairs = [
        (row.get("version"), derived)
        for row in rows
        if row.get("version") is not None
        and (derived := _log_version(row, by_rid, address_history)) is not None
    ]
    if not pairs:
        return 0.0
    return sum(1 for header, derived in pairs if header == derived) / len(pairs)


# --------------------------------------------------------------------------- everything


def measure(
    rows: Sequence[RequestRow],
    events: Sequence[Event],
    *,
    nginx: Sequence[LbRow] | None = None,
    address_history: AddressHistory | None = None,
    settings: MeasureSettings = MeasureSettings(),
    sent: int | None = None,
    long_lived_rows: Sequence[LongLivedRow] = (),
) -> Figures:
    """Every figure of the report (see :class:`~sandbox.results.model.Figures`).

    ``stall_at_s`` is when the longest stall began, in seconds since the load started; ``window``
    the load's absolute unix ``start``/``end`` (so the timeline can be aligned with the events);
    ``slow_ms`` the slow threshold used; ``rows_lost`` is ``sent`` (the requests the load generator
    counted) less the rows, None when it gave no count; ``unrecorded`` (see :func:`unrecorded`) is
    None when ``nginx``, the LB's log, was not read; ``long_lived`` sums ``long_lived_rows``
    (:mod:`sandbox.results.long_lived`). The rollout's own duration and peak are
    :func:`rollout_summary`'s.

    Rows without a version header get one from the NGINX log when ``nginx``
    is given (see :func:`attribute_versions`, with the address history built
    from ``events``).
    """
    from sandbox.results.long_lived import long_lived  # it uses this module's percentile

    lb_log = list(nginx) if nginx is not None else []
    ordered_events = _sorted_events(events)
    ordered = _sorted_rows(rows)
    if lb_log and any(r.get("version") is None for r in ordered):
        history = (address_history if address_history is not None
                   else address_history_from_events(ordered_events))
        ordered = list(attribute_versions(ordered, lb_log, history))
    window = load_window(ordered, ordered_events)
    stall = longest_stall(ordered, window)
    return Figures(
        requests=request_counts(ordered, lb_log, settings, rollout_direction(ordered_events), ordered_events),
        latency=_latency_summary(ordered, with_max=True),
        stall_s=round(stall[1], 3),
        stall_at_s=round(stall[0] - window[0], 3),
        slow_ms=settings.slow_ms,
        exposure=_with_long_lived_open(exposure(ordered, ordered_events, window, routed_rids(lb_log)),
                                       long_lived_rows, window[0]),
        phases=phases(ordered, ordered_events, window),
        like_for_like=like_for_like(ordered, ordered_events, window),
        drains=drains(ordered_events),
        window=_span(window),
        rows_lost=None if sent is None else max(0, sent - len(rows)),
        unrecorded=None if nginx is None else unrecorded(ordered, lb_log, window),
        long_lived=long_lived(long_lived_rows),
    )

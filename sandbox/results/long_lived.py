"""The long-lived connections' figures, from one row per connection (pure).

Each :class:`~sandbox.results.records.LongLivedRow` was written by a ``--ws-users`` /
``--sse-users`` user when its connection ended (``sandbox/load/longlived_locustfile.py``); the
message numbering of each connection was accounted there (:class:`sandbox.load.longlived.MessageTally`).
Here they are summed: closes by kind and code, messages lost and duplicated, reconnect times
(p50/p99), the peak of reconnections opened within one second, and how widely the reconnects are
spread (p95 - p5 of their times) beside the reconnect hint the servers gave.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

from sandbox.results.measure import percentile
from sandbox.results.model import LongLived
from sandbox.results.records import LongLivedRow


def long_lived(rows: Sequence[LongLivedRow]) -> LongLived:
    """The figures of these connections (all zero for none)."""
    opened = [r for r in rows if r.get("t_open") is not None]
    reconnects = [r for r in opened if r.get("reconnect_ms") is not None]
    times = [float(r["reconnect_ms"] or 0.0) for r in reconnects]
    per_second = Counter(math.floor(float(r["t_open"] or 0.0)) for r in reconnects)
    p50, p99 = percentile(times, 50), percentile(times, 99)
    p5, p95 = percentile(times, 5), percentile(times, 95)
    hints = Counter(float(hint) for r in opened if (hint := r.get("retry_ms")) is not None)
    return LongLived(
        users=len({r["user"] for r in rows}),
        opened=len(opened),
        failed=sum(1 for r in rows if r.get("close") == "failed"),
        clean_closes=sum(1 for r in opened if r.get("close") == "clean"),
        abnormal_closes=sum(1 for r in opened if r.get("close") == "abnormal"),
        open_at_stop=sum(1 for r in opened if r.get("close") == "stop"),
        closes=dict(sorted(Counter(f"{r['kind']} {r['code']}" for r in opened).items())),
        messages=sum(int(r.get("messages") or 0) for r in rows),
        messages_lost=sum(int(r.get("lost") or 0) for r in rows),
        messages_duplicated=sum(int(r.get("duplicated") or 0) for r in rows),
        reconnects=len(reconnects),
        reconnect_p50_ms=None if p50 is None else round(p50, 1),
        reconnect_p99_ms=None if p99 is None else round(p99, 1),
        peak_reconnects_per_s=max(per_second.values(), default=0),
        reconnect_spread_ms=None if p5 is None or p95 is None else round(p95 - p5, 1),
        reconnect_hint_ms=reconnect_hint(hints),
        **version_switches(rows),
    )


def reconnect_hint(hints: Counter[float]) -> float | None:
    """The hint given most often (the larger on a tie); None when no goodbye carried one."""
    return max(hints.items(), key=lambda kv: (kv[1], kv[0]))[0] if hints else None


def version_switches(rows: Sequence[LongLivedRow]) -> dict[str, int]:
    """``users_switched``: users one of whose connections opened on another version than the one
    before it (by the handshake's version); ``users_switched_back``: those who then opened one on
    a version they had already left."""
    by_user: dict[str, list[LongLivedRow]] = {}
    for r in rows:
        if r.get("t_open") is not None and r.get("version"):
            by_user.setdefault(r["user"], []).append(r)
    switched = back = 0
    for conns in by_user.values():
        versions = [str(r["version"]) for r in sorted(conns, key=lambda r: (float(r["t_open"] or 0.0), r["conn"]))]
        left: set[str] = set()
        went_back = False
        for before, now in itertools.pairwise(versions):
            if now != before:
                went_back = went_back or now in left
                left.add(before)
        switched += bool(left)
        back += went_back
    return {"users_switched": switched, "users_switched_back": back}


def open_per_second(rows: Sequence[LongLivedRow], start: float, seconds: int) -> list[dict[str, int]]:
    """For each of ``seconds`` whole seconds from ``start``: the connections open at its end (opened
    at or before it, ended after it), per handshake version (``?`` when the handshake named none)."""
    out: list[dict[str, int]] = [{} for _ in range(seconds)]
    for r in rows:
        t_open = r.get("t_open")
        if t_open is None:
            continue
        version = str(r.get("version") or "?")
        first = max(0, math.ceil(float(t_open) - start - 1))  # the first second whose end is at or after t_open
        for i in range(first, seconds):
            end = start + i + 1
            if end >= float(r["t_end"]):
                break
            if end >= float(t_open):
                out[i][version] = out[i].get(version, 0) + 1
    return out

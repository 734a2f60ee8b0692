"""The long-lived connections' figures, from one row per connection (pure).

Each :class:`~sandbox.results.records.LongLivedRow` was written by a ``--ws-users`` /
``--sse-users`` user when its connection ended (``sandbox/load/longlived_locustfile.py``); the
message numbering of each connection was accounted there (:class:`sandbox.load.longlived.MessageTally`).
Here they are summed: closes by kind and code, messages lost and duplicated, reconnect times
(p50/p99) and the peak of reconnections opened within one second.
"""

from __future__ import annotations

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
    )

"""How much of a rollout was the tool: the waits no controller can avoid, and the ratio.

Pure functions of the executor's events (:class:`sandbox.results.records.Event`). Per batch,
the unavoidable waits are the longest time from starting (or swapping) a server to its first
passing health check (``ready`` events, ``detail["first_ok_s"]``), plus the longest wait from
detaching a server until it had nothing in flight (``drain`` events, ``detail["idle_s"]``),
plus the time its old servers took to stop (``stop`` events, ``detail["stop_s"]``: the app's
own exit after the stop signal, and the engine removing it), plus the detach lag the user asked
for (``term`` events, ``detail["lag_s"]``). Batches are summed.
``overhead_ratio`` is the rollout's duration over that sum: 1.0 would be a controller that
spends nothing of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# event phase -> the detail key holding that event's unavoidable seconds
_WAITS = {"ready": "first_ok_s", "drain": "idle_s", "stop": "stop_s", "term": "lag_s"}


def _seconds(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def unavoidable_s(events: Iterable[Mapping[str, Any]]) -> float | None:
    """Sum over batches of (longest boot-to-first-healthy + longest drain-until-idle + longest
    stop + detach lag), in seconds, rounded to the ms; None when no event carries such a wait."""
    longest: dict[tuple[str, Any], float] = {}
    for event in events:
        key = _WAITS.get(str(event.get("phase")))
        detail = event.get("detail") or {}
        if key is None or detail.get(key) is None:
            continue
        slot = (str(event.get("phase")), event.get("batch") or 0)
        longest[slot] = max(longest.get(slot, 0.0), _seconds(detail[key]))
    if not longest:
        return None
    return round(sum(longest.values()), 3)


def overhead_ratio(duration_s: Any, unavoidable: float | None) -> float | None:
    """Rollout duration / unavoidable waits, two decimals; None when either is unknown or 0."""
    if unavoidable is None or unavoidable <= 0 or duration_s is None:
        return None
    return round(_seconds(duration_s) / unavoidable, 2)


def overhead(duration_s: Any, events: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """``{"unavoidable_s": ..., "overhead_ratio": ...}`` for a report."""
    floor = unavoidable_s(events)
    return {"unavoidable_s": floor, "overhead_ratio": overhead_ratio(duration_s, floor)}

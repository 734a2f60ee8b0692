"""What a person watching a rollout sees.

Every view reads one :class:`~sandbox.ui.state.RolloutState`, which the controller's
events, the step about to run and the traffic keep up to date.

On a terminal: a live table with one row per slot (its server, version and step), a bar
of batches, and the live figures (requests per second by version, p99, dropped), redrawn
in place. Elsewhere (CI logs, pipes): one plain line per event and a traffic line every
few seconds. Both write to stderr, so ``--json`` keeps stdout clean. The dashboard
(``sandbox/ui/dashboard.py``) serves the same state to a browser.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TextIO, TypedDict

from sandbox.results.measure import is_dropped
from sandbox.results.model import Report
from sandbox.results.records import Event, RequestRow
from sandbox.ui.state import RolloutState, narrate

if TYPE_CHECKING:
    from rich.console import RenderableType

    from sandbox.rollout.plan import Step

NARRATE_PAUSE_S = 4.0  # `demo --narrate`: the pause after each sentence of the first batch
RATE_WINDOW_S = 2.0
P99_WINDOW_S = 5.0


class LiveFigures(TypedDict):
    rps: dict[str, float]  # successful answers per second by version ("?" when unknown)
    p99_ms: float | None
    dropped: int
    total: int


@dataclass
class TrafficMonitor:
    """Running counts over the request rows the load generator has written so far."""

    total: int = 0
    failed: int = 0
    mark_total: int = 0  # counts at mark(): the rollout's share is measured from there
    mark_failed: int = 0
    recent: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=20000))
    # (answer time, version or None, latency ms or None) of the last answers, for figures()
    answers: deque[tuple[float, str | None, float | None]] = field(default_factory=lambda: deque(maxlen=20000))

    def add(self, rows: list[RequestRow]) -> None:
        for row in rows:
            bad = is_dropped(row)
            t = row.get("t_end") or row.get("t") or time.time()
            self.total += 1
            self.failed += bad
            self.recent.append((t, bad))
            if not bad:
                self.answers.append((t, row.get("version"), row.get("latency_ms")))

    def mark(self) -> None:
        self.mark_total, self.mark_failed = self.total, self.failed

    def since_mark(self) -> tuple[int, int]:
        return self.total - self.mark_total, self.failed - self.mark_failed

    def rate(self, window_s: float = RATE_WINDOW_S) -> tuple[float, int]:
        """(requests per second, errors) over the last ``window_s`` seconds."""
        cutoff = time.time() - window_s
        recent = [bad for t, bad in self.recent if t >= cutoff]
        return len(recent) / window_s, sum(recent)

    def figures(self, now: float | None = None) -> LiveFigures:
        """Successful answers per second by version (last 2 s), p99 (last 5 s), dropped so far."""
        now = time.time() if now is None else now
        rps: dict[str, float] = {}
        latencies: list[float] = []
        for t, version, latency in reversed(self.answers):
            if t < now - P99_WINDOW_S:
                break
            if t >= now - RATE_WINDOW_S:
                key = version or "?"
                rps[key] = rps.get(key, 0.0) + 1.0 / RATE_WINDOW_S
            if latency is not None:
                latencies.append(float(latency))
        latencies.sort()
        p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)] if latencies else None
        return {"rps": {k: round(v, 1) for k, v in sorted(rps.items())}, "p99_ms": p99,
                "dropped": self.failed, "total": self.total}


class Progress:
    """Plain lines: one per event, a traffic line at most every 5 s.

    ``narrate``: pause ``pause_s`` at each step of the first batch and say what it does.
    """

    def __init__(self, stream: TextIO | None = None, *, state: RolloutState | None = None,
                 narrate: bool = False, pause_s: float = NARRATE_PAUSE_S) -> None:
        self.stream = stream or sys.stderr
        self.state = state if state is not None else RolloutState()
        self.narrate = narrate
        self.pause_s = pause_s
        self.t0 = time.time()
        self._last_traffic = 0.0
        self._first_batch: int | None = None
        self._narrated_pick = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def line(self, text: str) -> None:
        self.state.line(text, time.time())
        self._print(text)

    def _print(self, text: str) -> None:
        print(f"[{time.time() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)

    def seed(self, name: str, slot: int, version: str, attached: bool, node: str = "") -> None:
        self.state.seed(name, slot, version, attached, node)

    def fleet_mode(self, *, lb_apply: str, ready_successes: int) -> None:
        self.state.fleet_mode(lb_apply=lb_apply, ready_successes=ready_successes)

    def planned(self, *, strategy: str, source: str, target: str, size: int, versions: Sequence[str],
                floor: int | None, peak: int | None, batches: int | None) -> None:
        """The plan about to run (``RolloutState.planned``)."""
        self.state.planned(strategy=strategy, source=source, target=target, size=size, versions=versions,
                           floor=floor, peak=peak, batches=batches)

    def event(self, event: Event) -> None:
        self.state.event(event)
        detail = event.get("detail") or {}
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, list))
        who = event.get("instance") or ""
        version = event.get("version") or ""
        self._print(f"{event['phase']:<14} {who} {version} {extra}".rstrip())

    def traffic(self, monitor: TrafficMonitor) -> None:
        now = time.time()
        self.state.traffic(monitor.figures(now), now)
        if now - self._last_traffic < 5:
            return
        self._last_traffic = now
        self._print(f"traffic        {figures_text(self.state.live)}, {monitor.total} total")

    def long_lived(self, open_by_version: Mapping[str, int]) -> None:
        """Open long-lived connections per version now (the dynamic LB's count; the live views only)."""
        self.state.long_lived(open_by_version, time.time())

    async def before_step(self, step: Step) -> None:
        """The executor is about to run ``step``; with ``narrate``, explain the first batch's steps."""
        targets, detached = [r.slot for r in step.targets], [r.slot for r in step.detach]
        self.state.step_started(step.action, step.batch_no, targets + detached, time.time())
        if self._first_batch is None:
            self._first_batch = step.batch_no
        if not self.narrate or step.batch_no != self._first_batch:
            return
        promise, run = self.state.promise or {}, self.state.run
        size = self.state.size
        floor = int(promise.get("floor", size - 1))
        words = {"size": size, "batch": size - floor, "floor": floor, "to": run.get("to") or "",
                 "lb_apply": run.get("lb_apply", "dynamic"), "ready_successes": run.get("ready_successes", 1)}
        if not self._narrated_pick:
            self._narrated_pick = True
            await self._say(narrate("pick", targets + detached, **words))
        await self._say(narrate(step.action, targets, detach=detached, **words))

    async def _say(self, text: str) -> None:
        self.state.say(text, time.time())
        self._print(f"narration      {text}")
        await asyncio.sleep(self.pause_s)

    def finish(self, report: Report) -> None:
        """The run's report: the views show the verdict."""
        self.state.finish(report)


def figures_text(live: Mapping[str, Any]) -> str:
    rps = live.get("rps") or {}
    by_version = "  ".join(f"{v} {r:.0f} req/s" for v, r in sorted(rps.items())) or "0 req/s"
    p99 = live.get("p99_ms")
    return f"{by_version}  p99 {'-' if p99 is None else f'{p99:.0f} ms'}  dropped {live.get('dropped', 0)}"


def batch_bar(current: int, total: int, width: int = 20, *, finished: bool = False) -> str:
    """``[██████░░░░] batch 3 of 9``; batches before the current one count as done (all, once ``finished``)."""
    if total <= 0:
        return "[" + "░" * width + "] no batch yet"
    done = total if finished else max(0, min(total, current - 1))
    filled = round(width * done / total)
    return "[" + "█" * filled + "░" * (width - filled) + f"] batch {max(current, 0)} of {total}"


def slot_cell(servers: list[Mapping[str, Any]]) -> str:
    """A slot's servers still present, old to new: ``v1 draining (3 in flight) → v2 starting``."""
    parts = []
    for s in servers:
        if s["state"] == "removed":
            continue
        text = f"{s['version']} {s['state']}"
        if s["state"] == "draining" and s.get("in_flight") is not None:
            text += f" ({s['in_flight']} in flight)"
        parts.append(text)
    return " → ".join(parts) or "empty"


class LiveProgress(Progress):
    """A live table on a terminal (rich): one row per slot, a bar of batches, the figures."""

    COLOURS: ClassVar[dict[str, str]] = {
        "attached": "green", "starting": "yellow", "draining": "magenta", "drained": "magenta",
        "stopping": "red", "ready": "cyan", "idle": "white"}

    def __init__(self, stream: TextIO | None = None, **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def _print(self, text: str) -> None:
        self.live.update(self._render())  # the log lines are part of the view

    def traffic(self, monitor: TrafficMonitor) -> None:
        now = time.time()
        self.state.traffic(monitor.figures(now), now)
        self.live.update(self._render())

    def _render(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table

        snap = self.state.snapshot()
        table = Table(expand=False, show_edge=False)
        for col in ("slot", "server", "now"):
            table.add_column(col)
        active = set((snap["step"] or {}).get("slots") or ())
        for slot in snap["slots"]:
            present = [s for s in slot["servers"] if s["state"] != "removed"]
            name = present[-1]["name"] if present else ""
            state = present[-1]["state"] if present else "idle"
            mark = "▶ " if slot["slot"] in active else "  "
            table.add_row(f"{mark}{slot['slot']}", name,
                          f"[{self.COLOURS.get(state, 'white')}]{slot_cell(slot['servers'])}[/]")
        return Group(*_header_lines(snap), table, f"[bold]{figures_text(snap['live'])}[/]",
                     *([f"[italic]{snap['narration']}[/]"] if snap["narration"] else []),
                     *snap["log"][-6:])


def _header_lines(snap: Mapping[str, Any]) -> list[str]:
    run, step, promise = snap["run"], snap["step"], snap["promise"]
    shown = f"paused by {run['paused_by']}" if snap["phase"] == "paused" and run.get("paused_by") else snap["phase"]
    if run.get("canary_weight") is not None and not snap["result"]:
        shown += f", canary {run['canary_weight']} %"  # --strategy canary: the weight now
    title = f"{run.get('strategy') or 'rollout'} {run.get('from', '')} → {run.get('to', '')}  ({shown})"
    lines = [f"[bold]{title}[/]", batch_bar(snap["batch"]["current"], snap["batch"]["total"],
                                            finished=snap["phase"] in ("finishing", "ended"))]
    if step:
        lines[-1] += f"  step {step['number']}/6: {step['label']} (slot {', '.join(map(str, step['slots']))})"
    if promise:
        lines.append(f"promise: {promise['text']}")
    if snap["result"]:
        lines.append(f"[bold]{snap['result']['verdict']}[/]")
    return lines


def make_progress(stream: TextIO | None = None, **kwargs: Any) -> Progress:
    """A live view on a terminal, plain lines otherwise (``kwargs`` as for :class:`Progress`)."""
    s = stream or sys.stderr
    return LiveProgress(s, **kwargs) if s.isatty() else Progress(s, **kwargs)

"""What a person watching a rollout sees.

On a terminal: a live table of every server (version, attached, draining,
starting) and the traffic (requests per second, errors), redrawn in place.
Elsewhere (CI logs, pipes): one plain line per event and a traffic line every
few seconds. Both write to stderr, so ``--json`` keeps stdout clean.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from sandbox.results.records import Event, RequestRow

STATE_OF_PHASE = {
    "start": "starting",
    "ready": "ready",
    "attach": "serving",
    "detach": "detached",
    "drain": "drained",
    "stop": "removed",
    "kill": "killed",
    "swap": "swapping",
}


@dataclass
class TrafficMonitor:
    """Running counts over the request rows the load generator has written so far."""

    total: int = 0
    failed: int = 0
    mark_total: int = 0  # counts at mark(): the rollout's share is measured from there
    mark_failed: int = 0
    recent: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=20000))

    def add(self, rows: list[RequestRow]) -> None:
        for row in rows:
            bad = row.get("status", 0) == 0 or row.get("status", 0) >= 500
            self.total += 1
            self.failed += bad
            self.recent.append((row.get("t_end") or row.get("t") or time.time(), bad))

    def mark(self) -> None:
        self.mark_total, self.mark_failed = self.total, self.failed

    def since_mark(self) -> tuple[int, int]:
        return self.total - self.mark_total, self.failed - self.mark_failed

    def rate(self, window_s: float = 2.0) -> tuple[float, int]:
        """(requests per second, errors) over the last ``window_s`` seconds."""
        cutoff = time.time() - window_s
        recent = [bad for t, bad in self.recent if t >= cutoff]
        return len(recent) / window_s, sum(recent)


class Progress:
    """Plain lines: one per event, a traffic line at most every 5 s."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.t0 = time.time()
        self._last_traffic = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def line(self, text: str) -> None:
        print(f"[{time.time() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)

    def event(self, event: Event) -> None:
        detail = event.get("detail") or {}
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, list))
        who = event.get("instance") or ""
        version = event.get("version") or ""
        self.line(f"{event['phase']:<14} {who} {version} {extra}".rstrip())

    def traffic(self, monitor: TrafficMonitor, instances: dict[str, dict[str, Any]] | None = None) -> None:
        now = time.time()
        if now - self._last_traffic < 5:
            return
        self._last_traffic = now
        rps, errors = monitor.rate()
        self.line(f"traffic        {rps:.0f} req/s, {errors} errors in the last 2 s, {monitor.total} total")


class LiveProgress(Progress):
    """A live table on a terminal (rich)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.servers: dict[str, dict[str, Any]] = {}
        self.log: deque[str] = deque(maxlen=6)
        self.monitor: TrafficMonitor | None = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def seed(self, name: str, slot: int, version: str, attached: bool) -> None:
        self.servers[name] = {"slot": slot, "version": version, "state": "serving" if attached else "idle"}

    def line(self, text: str) -> None:
        self.log.append(f"{time.time() - self.t0:6.1f}s {text}")
        self.live.update(self._render())

    def event(self, event: Event) -> None:
        name = event.get("instance")
        if name:
            entry = self.servers.setdefault(name, {"slot": event.get("slot"), "version": event.get("version")})
            entry["state"] = STATE_OF_PHASE.get(event["phase"], event["phase"])
            if event.get("version"):
                entry["version"] = event.get("version")
        super().event(event)

    def traffic(self, monitor: TrafficMonitor, instances: dict[str, dict[str, Any]] | None = None) -> None:
        self.monitor = monitor
        self.live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title="fleet", expand=False)
        for col in ("server", "slot", "version", "state"):
            table.add_column(col)
        colours = {"serving": "green", "starting": "yellow", "detached": "magenta", "drained": "magenta",
                   "removed": "dim", "killed": "red", "swapping": "yellow", "ready": "cyan"}
        for name, s in sorted(self.servers.items(), key=lambda kv: (kv[1].get("slot") or 0, kv[0])):
            state = s.get("state", "")
            table.add_row(name, str(s.get("slot", "")), str(s.get("version", "")),
                          f"[{colours.get(state, 'white')}]{state}[/]")
        parts: list[Any] = [table]
        if self.monitor is not None:
            rps, errors = self.monitor.rate()
            parts.append(f"traffic: {rps:.0f} req/s, {errors} errors in the last 2 s, {self.monitor.total} total")
        parts.extend(self.log)
        return Group(*parts)


def make_progress(stream: TextIO | None = None) -> Progress:
    """A live view on a terminal, plain lines otherwise."""
    s = stream or sys.stderr
    return LiveProgress(s) if s.isatty() else Progress(s)

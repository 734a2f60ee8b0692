"""The load around a rollout, the same for every rehearsal (the controller's and swarm-native):
start it and warm up, watch it while the rollout runs, cool down and stop it, hand over its rows.

::

    phases = LoadPhases(settings, events=events, make_load=LoadRun, say=progress.line)
    await phases.warmup(balancer.url, rows_path)   # load-start, then warmup_s (or until ``until`` is set)
    ...                                              # the rollout; ``phases.monitor`` counts the answers
    await phases.cooldown()                          # cooldown_s, load-stop, Locust stopped
    phases.rows(), phases.alive, phases.end()        # what the report reads
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sandbox.config import Settings
from sandbox.load.rows import parse_think_ms
from sandbox.load.run import LoadEnd, LoadRun, LoadSettings
from sandbox.results.records import Event, LongLivedRow, RequestRow
from sandbox.ui.progress import TrafficMonitor


@dataclass(frozen=True)
class LoadGenerator:
    """How the load generator ended, and with how many worker processes (``load_generator`` in
    ``report.json``)."""

    end: LoadEnd
    workers: int

    def to_json(self) -> dict[str, object]:
        return {**self.end.to_dict(), "workers": self.workers}


class LoadPhases:
    """One load generator's life in a rehearsal; every phase appends its event to ``events``."""

    def __init__(self, settings: Settings, *, events: list[Event],
                 make_load: Callable[[str, LoadSettings, Path], LoadRun] = LoadRun,
                 say: Callable[[str], None], show: Callable[[TrafficMonitor], None] | None = None,
                 tick_s: float = 0.5) -> None:
        self.settings = settings
        self.events = events
        self.make_load = make_load
        self.say = say
        self.show = show  # given the monitor at each tick (the live progress)
        self.tick_s = tick_s
        self.monitor = TrafficMonitor()
        self.load: LoadRun | None = None
        self.died_at: float | None = None  # when the load generator was seen dead mid-run
        self._ticker: asyncio.Task[None] | None = None
        self.on_rows: list[Callable[[list[RequestRow]], None]] = []  # given the new rows at each tick (the canary)

    @property
    def ran(self) -> bool:
        """Traffic was started."""
        return self.load is not None

    @property
    def alive(self) -> bool:
        """The load generator was not seen dead before it was asked to stop."""
        return self.died_at is None

    async def warmup(self, url: str, rows_path: Path, *, paths: tuple[str, ...] = (),
                     until: asyncio.Event | None = None) -> None:
        """Start the load against ``url`` and let it run ``warmup_s`` (less if ``until`` is set meanwhile)."""
        s = self.settings
        self.load = self.make_load(url, LoadSettings(
            users=s.users, spawn_rate=s.spawn_rate, locustfile=s.locustfile, v2_mode=s.v2_mode,
            workers=s.load_workers, think_s=parse_think_ms(s.think_ms), timeout_s=s.client_timeout_s,
            paths=paths, ws_users=s.ws_users, sse_users=s.sse_users, ws_path=s.ws_path, sse_path=s.sse_path),
            rows_path)
        await self.load.start()
        self.events.append({"t": time.time(), "phase": "load-start", "instance": None})
        self._ticker = asyncio.create_task(self._tick(self.load))
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for((until or asyncio.Event()).wait(), timeout=s.warmup_s)

    async def _tick(self, load: LoadRun) -> None:
        while True:
            rows = load.new_rows()
            self.monitor.add(rows)
            for listener in self.on_rows:
                listener(rows)
            if self.show is not None:
                self.show(self.monitor)
            self._check_alive(load)
            await asyncio.sleep(self.tick_s)

    def _check_alive(self, load: LoadRun) -> None:
        """A load generator that died mid-run is said at once; the rollout goes on safely, the verdict fails."""
        if self.died_at is None and not load.alive():
            self.died_at = time.time()
            self.events.append({"t": self.died_at, "phase": "load-died", "instance": None})
            self.say("the load generator died: the rollout goes on, but this run cannot PASS")

    async def cooldown(self) -> None:
        """Let the load run ``cooldown_s`` more, then stop it."""
        if self.load is None:
            return
        await asyncio.sleep(self.settings.cooldown_s)
        self._check_alive(self.load)
        # stamped when asked: the second Locust takes to exit is not a stall of the fleet
        self.events.append({"t": time.time(), "phase": "load-stop", "instance": None})
        if self._ticker is not None:  # or it sees Locust's processes exit as asked and calls it a death
            self._ticker.cancel()
        await self.load.stop()
        self.monitor.add(self.load.new_rows())

    async def stop(self) -> None:
        """Stop the load whatever happened (a no-op once ``cooldown`` has)."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self.load is not None:
            await self.load.stop()

    def rows(self) -> list[RequestRow]:
        """Every request the load generator recorded."""
        return self.load.all_rows() if self.load is not None else []

    def long_lived_rows(self) -> list[LongLivedRow]:
        """Every long-lived connection the load generator recorded (none without ``--ws-users``/``--sse-users``)."""
        read = getattr(self.load, "long_lived_rows", None)  # a test's fake load may have none
        return list(read()) if read is not None else []

    def end(self) -> LoadGenerator | None:
        """How the load generator ended (exit code, died early, killed, requests sent) and its worker
        count; None when no load ran or it has not stopped."""
        end = getattr(self.load, "end", None)  # a test's fake load may have none
        return LoadGenerator(end, self.load.settings.workers) if end is not None and self.load else None

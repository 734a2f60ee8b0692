"""The canary's side of a running rollout: the weight at each step, the time held there, its analysis.

The plan (``strategies.Canary``) brings the servers; this sets the load balancer's weight and holds
each step, with the executor's hooks:

- after the attach of step k's new servers (``after_step``), the new version's share becomes
  weight k (``LbState.canary``, dynamic mode; reload mode has only the server count, said at plan
  time);
- before the first step of a later batch (``gate``), every step below 100 not yet held is held:
  ``--step-pause`` long (or, ``manual``, until ``sandbox promote``), its window's analysis
  (:func:`sandbox.results.analysis.analyse`) looked at every second. A failure (a criterion that
  FAILs, or a step still inconclusive after ``--max-step-extensions`` extensions) raises
  :class:`~sandbox.errors.AnalysisFailed`: the rehearsal rolls back as ``sandbox abort`` does,
  the weight set to 0 first (every request to the old version). An inconclusive step (too few
  answers) is extended by another ``--step-pause``, never passed. ``sandbox promote`` (with a
  duration) skips every later hold and analysis; with ``manual`` each promote ends one step. A
  ``sandbox pause`` during a hold stretches it until ``resume``.

The step at 100 has no old version to compare with: recorded ``done`` with its share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from sandbox.config import Settings
from sandbox.errors import AnalysisFailed
from sandbox.fleet.loadbalancer import LoadBalancer
from sandbox.results import analysis
from sandbox.results.model import CanaryStep, MixedRecord
from sandbox.results.records import RequestRow
from sandbox.results.verdict import Limits
from sandbox.rollout import plan as planner
from sandbox.rollout import strategies
from sandbox.rollout.steer import Steering

LOOK_S = 1.0  # how often a held step's analysis is looked at


def plan_note(size: int, weights: Sequence[int], step_pause: str) -> str:
    """Dynamic mode's line at plan time: the servers at each weight, and how long each step is held."""
    steps = ", ".join(f"{w} % ({strategies.canary_new(size, w)} new, {strategies.canary_old(size, w)} old)"
                      for w in weights)
    held = "until `sandbox promote`" if step_pause == "manual" else f"{step_pause} (--step-pause)"
    return f"canary: {steps}; each step below 100 % held {held}, then its analysis decides"


def reload_note(size: int, weights: Sequence[int]) -> str:
    """Reload mode's one line at plan time: the shares it gives instead of the weights."""
    parts = []
    for w in weights:
        if w < 100:
            new, old = strategies.canary_new(size, w), strategies.canary_old(size, w)
            parts.append(f"{w}: {new} of {new + old} ({100 * new / (new + old):.0f} %)")
    shares = ", ".join(parts)
    return (f"--lb-apply reload: no weights, the new version's share is its servers' share ({shares}); "
            "exact weights and --sticky-canary need --lb-apply dynamic")


class CanaryRun:
    """One canary rollout's weights, holds and analyses (see the module's docstring)."""

    def __init__(self, settings: Settings, balancer: LoadBalancer, *, steps: Sequence[planner.Step], size: int,
                 old: str, new: str, steering: Steering, emit: Callable[[str, int, dict[str, Any]], None],
                 say: Callable[[str], None], mixed: Callable[[], Sequence[MixedRecord]],
                 clock: Callable[[], float] = time.time, look_s: float = LOOK_S) -> None:
        self.settings = settings
        self.balancer = balancer
        self.weights = settings.canary_weights
        self.size = size
        self.old, self.new = old, new
        self.steering = steering
        self._emit = emit
        self._say = say
        self._mixed = mixed
        self._clock = clock
        self._look_s = look_s
        self.weighted = balancer.dynamic  # reload mode: the share is the server count
        last = max((s.batch_no for s in steps), default=len(self.weights))
        self.offset = last - len(self.weights)  # batch of step k (1-based) is offset + k
        self.records: list[CanaryStep] = []
        self._applied: dict[int, float] = {}  # step index (0-based) -> when its weight took effect
        self._held: set[int] = set()
        self._rows: list[RequestRow] = []
        self._since: float | None = None  # rows sent from then on are kept
        self._promotions = 0
        self.active = True  # False once the rollout rolls back: its steps set no weight

    # -- the rows ---------------------------------------------------------------------------------
    def add_rows(self, rows: Sequence[RequestRow]) -> None:
        """The load's new rows (every tick): those sent since the current step's window began."""
        if self._since is not None:
            self._rows.extend(r for r in rows if float(r.get("t") or 0.0) >= self._since)

    # -- the executor's hooks ---------------------------------------------------------------------
    def step_of(self, batch_no: int) -> int | None:
        """The 0-based step of batch ``batch_no`` (None: a batch before the canary's, e.g. a settle)."""
        k = batch_no - self.offset - 1
        return k if 0 <= k < len(self.weights) else None

    async def after_step(self, step: planner.Step) -> None:
        k = self.step_of(step.batch_no)
        if self.active and step.action in ("attach", "reattach") and k is not None:
            await self._apply(k)

    async def gate(self, step: planner.Step, index: int) -> None:
        """Before ``step``: hold every earlier step not held yet (their weights set first)."""
        k = self.step_of(step.batch_no) if self.active else None
        for j in range(k or 0):
            if j not in self._held:
                await self._apply(j)
                await self._hold(j)

    async def finish(self) -> None:
        """After the last step: the step at 100 recorded; the load balancer back to no weights."""
        for j in range(len(self.weights)):
            if j not in self._held:
                await self._apply(j)
                if self.weights[j] >= 100:
                    self._held.add(j)
                    self._record(j, "done", "the whole fleet on the new version: nothing to compare")
        await self.clear()

    async def to_old(self) -> None:
        """Before a rollback: every request to the old version (weight 0); the rollback's own steps
        (the same executor's) set no weight."""
        self.active = False
        if self.weighted and self._applied:
            await self._set_weight(0)

    async def clear(self) -> None:
        """No weights any more (after the rollout, whatever its outcome)."""
        if self.weighted and self.balancer.state.canary is not None:
            await self.balancer.apply(list(self.balancer.state.upstreams), canary=None)

    # -- the steps --------------------------------------------------------------------------------
    async def _apply(self, k: int) -> None:
        if k in self._applied:
            return
        if self.weighted:
            await self._set_weight(self.weights[k])
        now = self._clock()
        self._applied[k] = now
        self._rows = [r for r in self._rows if float(r.get("t") or 0.0) >= now]
        self._since = now
        new, old = self._servers()
        self._emit("canary-weight", self.offset + k + 1, {"weight": self.weights[k], "new_servers": new,
                                                           "old_servers": old, "weighted": self.weighted})
        self._say(f"canary step {k + 1} of {len(self.weights)}: {self.weights[k]} % of requests to {self.new}"
                  + ("" if self.weighted else " (by server count: reload mode)")
                  + f"; {new} {self.new} and {old} {self.old} servers attached")

    async def _set_weight(self, weight: int) -> None:
        await self.balancer.apply(list(self.balancer.state.upstreams), canary={
            "version": self.new, "weight": weight, "sticky": self.settings.sticky_canary})

    def _servers(self) -> tuple[int, int]:
        ups = self.balancer.state.upstreams
        return sum(u.version == self.new for u in ups), sum(u.version == self.old for u in ups)

    async def _hold(self, k: int) -> None:
        self._held.add(k)
        weight = self.weights[k]
        pause = self.settings.step_pause_s
        manual = pause is None
        if self.steering.promoted and not manual:
            self._record(k, "promoted", "skipped: promoted earlier")
            return
        if not self.settings.load:
            self._record(k, "not_measured", "no load: nothing to analyse")
            return
        start = self._applied[k]
        end = start + (pause or 0.0)
        extensions, promotions = 0, self._promotions
        self._say(f"canary step {k + 1}: holding at {weight} % "
                  + ("until `sandbox promote`" if manual else f"for {pause:g} s (--step-pause)")
                  + ", then its analysis decides")
        while True:
            await asyncio.sleep(self._look_s)
            if self.steering.state == "paused":
                held = await self._while_paused()
                end += held
                continue
            if self.steering.state != "running":  # aborting, stopping: the gate says what next
                self._record(k, "aborted", f"the rollout is {self.steering.state}", extensions=extensions)
                return
            now = self._clock()
            outcome, record = self._analyse(k, now - start, extensions)
            if outcome == analysis.FAILED:
                self._fail(record)
            if manual:
                if self.steering.promotions > promotions:
                    self._promotions = self.steering.promotions
                    self._keep(record, "promoted", "promoted by `sandbox promote`")
                    return
                continue
            if self.steering.promoted:
                self._keep(record, "promoted", "promoted by `sandbox promote`")
                return
            if now < end:
                continue
            if outcome == analysis.PASSED:
                self._keep(record, "passed", None)
                return
            if extensions >= self.settings.max_step_extensions:
                self._fail(record, f"still inconclusive after {extensions} extension(s) "
                                   f"(--max-step-extensions): {record.reason}", status="failed")
            extensions += 1
            end += pause or 0.0
            self._say(f"canary step {k + 1}: inconclusive ({record.reason}); extended by {pause:g} s "
                      f"({extensions} of {self.settings.max_step_extensions})")
            self._emit("canary-extended", self.offset + k + 1, {"weight": weight, "extensions": extensions,
                                                                 "reason": record.reason})

    async def _while_paused(self) -> float:
        """Held while paused (the pause timeout as the steering says); the seconds it held."""
        t0 = self._clock()
        await self.steering.wait_while_paused()
        if self.steering.state == "paused":  # a stop request (Ctrl-C): the gate winds down
            await asyncio.sleep(self._look_s)
        return self._clock() - t0

    def _analyse(self, k: int, window_s: float, extensions: int) -> tuple[str, CanaryStep]:
        return analysis.analyse(self._rows, old=self.old, new=self.new, step=k + 1, weight=self.weights[k],
                                limits=Limits.from_settings(self.settings),
                                max_error_ratio=self.settings.max_error_ratio, mixed=list(self._mixed()),
                                window_s=window_s, extensions=extensions)

    def _keep(self, record: CanaryStep, status: str, reason: str | None) -> None:
        new, old = self._servers()
        kept = _replace(record, status=status, reason=reason or record.reason, new_servers=new, old_servers=old)
        self.records.append(kept)
        self._emit("canary-analysis", self.offset + kept.step, kept.to_json())
        share = "-" if kept.observed_share is None else f"{100 * kept.observed_share:.1f} %"
        self._say(f"canary step {kept.step} ({kept.weight} %): {status}; {share} of answers from {self.new}, "
                  f"{kept.samples.get(self.new, 0)} {self.new} and {kept.samples.get(self.old, 0)} {self.old} "
                  "answers" + (f"; {kept.reason}" if status == "failed" and kept.reason else ""))

    def _fail(self, record: CanaryStep, reason: str | None = None, status: str = "failed") -> None:
        self._keep(record, status, reason or record.reason)
        raise AnalysisFailed(f"the canary's analysis failed at step {record.step} ({record.weight} %): "
                             f"{reason or record.reason}")

    def _record(self, k: int, status: str, reason: str, extensions: int = 0) -> None:
        now = self._clock()
        _, record = self._analyse(k, now - self._applied.get(k, now), extensions)
        self._keep(record, status, reason)


def _replace(record: CanaryStep, **changes: Any) -> CanaryStep:
    return dataclasses.replace(record, **changes)

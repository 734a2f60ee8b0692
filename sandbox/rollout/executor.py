"""The asyncio controller: executes a plan against the runtime and the balancer.

It owns no state of its own beyond the current run: the fleet is read from
Docker labels and the attached set from the load balancer's live config, so a
fresh process can resume (``roll`` again) or revert (``rollback``) after a
crash or Ctrl-C. Each step emits an :class:`~sandbox.results.records.Event`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sandbox.config import Settings
from sandbox.errors import ReadinessError, RolloutError, SandboxError
from sandbox.fleet.balancer import Balancer, Upstream
from sandbox.fleet.images import ImageSet, app_code_tar
from sandbox.fleet.probes import Probe
from sandbox.fleet.runtime import Instance, Runtime
from sandbox.results.records import Event
from sandbox.rollout import plan as planner

log = logging.getLogger("sandbox.rollout.executor")

DRAIN_QUIET_S = 0.3  # no new request for this long, and nothing in flight: drained
STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long (the app bounds itself at 15 s)
POLL_S = 0.1
# The controller detaches and drains a server before it stops it, so the app need not keep
# answering "stopping" on /healthz for a load balancer to notice (the user's env still wins).
APP_ENV_DEFAULTS = {"APP_STOP_DELAY": "0"}


class Interrupted(SandboxError):
    """The user asked the rollout to stop (Ctrl-C); the fleet was left consistent."""

    exit_code = 130


class ErrorRatioExceeded(RolloutError):
    """The share of failed requests during the rollout went above the configured limit."""


HealthCheck = Callable[[], str | None]
EventSink = Callable[[Event], None]


class Controller:
    """Runs plans for one project: start servers, drain, replace or swap, attach."""

    def __init__(
        self,
        runtime: Runtime,
        balancer: Balancer,
        settings: Settings,
        images: ImageSet,
        *,
        on_event: EventSink | None = None,
    ) -> None:
        self.runtime = runtime
        self.balancer = balancer
        self.settings = settings
        self.images = images
        self.project = settings.project
        self.events: list[Event] = []
        self._on_event = on_event
        self.stop_requested = asyncio.Event()  # first Ctrl-C: finish the current step, then stop
        self.live = 0  # app containers alive now (for peak_instances)
        self.peak = 0
        self._born: dict[str, float] = {}  # container id -> monotonic time it was started or swapped
        self._detached_at: dict[str, float] = {}  # container id -> monotonic time it was detached

    # -- events -------------------------------------------------------------------------------
    def emit(self, phase: str, instance: Instance | None = None, **extra: Any) -> Event:
        event: Event = {"t": time.time(), "phase": phase, "instance": instance.name if instance else None}
        if instance is not None:
            event["slot"] = instance.slot
            event["version"] = instance.version
            event["address"] = instance.address
        for key, value in extra.items():
            event[key] = value  # type: ignore[literal-required]
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        return event

    # -- the fleet as the planner sees it -----------------------------------------------------
    async def fleet(self, instances: list[Instance] | None = None) -> tuple[list[Instance], list[planner.Server]]:
        """The app containers (read now unless given) and their planner view (attached = in the
        live config)."""
        if instances is None:
            instances = await self.runtime.instances(self.project)
        attached = {u.name for u in self.balancer.state.upstreams}
        servers = [
            planner.Server(id=i.id, slot=i.slot, version=i.version, attached=i.name in attached)  # type: ignore[arg-type]
            for i in instances
        ]
        return instances, servers

    async def reconcile(self, instances: list[Instance]) -> list[str]:
        """Take out of the load balancer every server whose container (in ``instances``, the
        project's app containers as just read) is gone or not running.

        A removed container's address drops packets instead of refusing them, so a stale entry
        costs users a connect timeout each time it is picked (after a crash mid-rollout, say).
        Returns the names taken out.
        """
        live = {i.name: i for i in instances if i.state == "running" and i.address}
        keep = [u for u in self.balancer.state.upstreams
                if u.name in live and live[u.name].address == u.address]
        stale = [u.name for u in self.balancer.state.upstreams if u not in keep]
        if stale:
            log.info("taking %s out of the load balancer: no running container has that address", ", ".join(stale))
            await self.balancer.apply(keep)
        return stale

    # -- executing a plan ---------------------------------------------------------------------
    async def execute(
        self,
        steps: Sequence[planner.Step],
        to_version: str,
        *,
        env: dict[str, str],
        health: HealthCheck | None = None,
        from_version: str = "",
        instances: Sequence[Instance] | None = None,
    ) -> None:
        """Run ``steps`` (planned from ``instances``, read afresh when not given) in order.

        Raises ReadinessError, ErrorRatioExceeded, BalancerError, EngineError, or
        Interrupted (between steps, after a Ctrl-C)."""
        if instances is None:
            instances, _ = await self.fleet()
        by_id = {i.id: i for i in instances}
        new_in_slot: dict[int, Instance] = {}
        self.live = len(instances)
        self.peak = max(self.peak, self.live)

        def resolve(ref: planner.Ref) -> Instance:
            if ref.id is not None:
                return by_id[ref.id]
            return new_in_slot[ref.slot]

        async with Probe() as probe:
            pending = list(steps)
            while pending:
                step = pending.pop(0)
                if self.stop_requested.is_set():
                    raise Interrupted("interrupted")
                if health is not None and (reason := health()):
                    raise ErrorRatioExceeded(reason)
                targets = list(step.targets)
                action = step.action
                if action == "attach" and pending and pending[0].action == "detach" \
                        and pending[0].batch_no != step.batch_no and not self.stop_requested.is_set():
                    # One reload instead of two: attach this batch's new servers and detach the
                    # NEXT batch's old ones together. Attached servers never drop below the plan's
                    # floor (the new ones count before the old ones leave). Within one batch
                    # (surge, double-half) the two stay apart: both versions serve in between.
                    nxt = pending.pop(0)
                    await self._reattach(probe, [resolve(r) for r in targets], step.batch_no,
                                         [resolve(r) for r in nxt.targets], nxt.batch_no)
                    continue
                if action == "start":
                    t_start = time.monotonic()
                    started = await self._gather(
                        self.runtime.start_app(
                            self.project, ref.slot, to_version, self.images.app[to_version],
                            {**APP_ENV_DEFAULTS, **env}, from_version,
                        )
                        for ref in targets
                    )
                    for inst in started:
                        self._born[inst.id] = t_start
                        new_in_slot[inst.slot] = inst
                        by_id[inst.id] = inst
                        self.live += 1
                        self.peak = max(self.peak, self.live)
                        self.emit("start", inst, batch=step.batch_no)
                elif action == "ready":
                    insts = [resolve(r) for r in targets]
                    first_ok = await self._gather(self._wait_ready(probe, i, to_version) for i in insts)
                    for inst, first_ok_s in zip(insts, first_ok, strict=True):
                        self.emit("ready", inst, batch=step.batch_no, detail={"first_ok_s": first_ok_s})
                elif action in ("attach", "detach", "switch"):
                    attach = [resolve(r) for r in targets] if action != "detach" else []
                    detach = [resolve(r) for r in (step.detach if action == "switch" else targets)] \
                        if action != "attach" else []
                    await self._reattach(probe, attach, step.batch_no, detach, step.batch_no)
                    if action == "switch":
                        self.emit("switch", None, batch=step.batch_no,
                                  detail={"attached": [i.name for i in attach], "detached": [i.name for i in detach]})
                elif action == "drain":
                    insts = [resolve(r) for r in targets]
                    await self._gather(self._drain(probe, i, step.batch_no) for i in insts)
                elif action in ("stop", "kill"):
                    insts = [resolve(r) for r in targets]
                    if action == "stop":
                        await self._gather(self.runtime.stop_app(i, STOP_GRACE_S) for i in insts)
                    else:
                        await self._gather(self.runtime.kill_app(i) for i in insts)
                    for inst in insts:
                        self.live -= 1  # kept in by_id: a naive 'switch' still names it to detach
                        self.emit(action, inst, batch=step.batch_no)
                elif action == "swap":
                    insts = [resolve(r) for r in targets]
                    code = app_code_tar(to_version, env)
                    t_swap = time.monotonic()
                    now_insts = await self._gather(self.runtime.swap_code(self.project, i, code) for i in insts)
                    for inst, now_inst in zip(insts, now_insts, strict=True):
                        self._born[inst.id] = t_swap
                        swapped = dataclasses.replace(now_inst, version=to_version)
                        by_id[inst.id] = swapped
                        self.emit("swap", swapped, batch=step.batch_no, detail={"from": inst.version})
                else:  # pragma: no cover - the planner's Literal forbids it
                    raise RolloutError(f"unknown plan action {action!r}")

    @staticmethod
    async def _gather(coros: Any) -> list[Any]:
        """Run concurrently; if one fails, let the others finish, then raise the first error."""
        results = await asyncio.gather(*coros, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def _reattach(self, probe: Probe, attach: Sequence[Instance], attach_batch: int,
                        detach: Sequence[Instance], detach_batch: int) -> None:
        """One reload that attaches ``attach`` and detaches ``detach``; events for each, the
        detached ones with the requests they had in flight at that moment."""
        in_flight = await self._in_flight(probe, detach)
        await self._set_attached(attach=attach, detach=detach)
        now = time.monotonic()
        for inst in attach:
            self.emit("attach", inst, batch=attach_batch)
        for inst in detach:
            self._detached_at[inst.id] = now
            self.emit("detach", inst, batch=detach_batch, detail={"in_flight": in_flight[inst.id]})

    async def _set_attached(self, *, attach: Sequence[Instance], detach: Sequence[Instance]) -> None:
        current = {u.name: u for u in self.balancer.state.upstreams}
        for inst in detach:
            current.pop(inst.name, None)
        for inst in attach:
            if inst.address is None:
                raise RolloutError(f"{inst.name} has no address on the project network")
            current[inst.name] = Upstream(name=inst.name, address=inst.address, version=inst.version)
        await self.balancer.apply(list(current.values()))

    async def _in_flight(self, probe: Probe, insts: Sequence[Instance]) -> dict[str, int]:
        async def one(inst: Instance) -> int:
            m = await probe.metrics(inst.probe_address) if inst.probe_address else None
            return int(m.get("app_requests_in_flight", 0)) if m else 0
        counts = await asyncio.gather(*(one(i) for i in insts))
        return {i.id: c for i, c in zip(insts, counts, strict=True)}

    async def _wait_ready(self, probe: Probe, inst: Instance, version: str) -> float | None:
        """Poll /healthz until ``ready_successes`` consecutive passes on ``version``, then settle.

        Returns the seconds from the container's start (or code swap) to its first passing
        check: the part of the wait no controller can avoid. Raises ReadinessError when the
        container exits or the deadline passes.
        """
        born = self._born.get(inst.id, time.monotonic())
        deadline = time.monotonic() + self.settings.ready_timeout
        first_ok: float | None = None
        successes = 0
        last_state_check = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                raise ReadinessError(
                    f"{inst.name} ({version}) was not ready within {self.settings.ready_timeout:g} s"
                    f" ({await self.runtime.exit_info(inst)})"
                )
            if now - last_state_check > 1.0:
                last_state_check = now
                fresh = await self.runtime.refresh(self.project, inst)
                if fresh is None or fresh.state in ("exited", "dead"):
                    raise ReadinessError(f"{inst.name} ({version}) stopped before it was ready: "
                                         f"{await self.runtime.exit_info(inst)}")
            ok = inst.probe_address is not None and await probe.ready(inst.probe_address, version)
            if ok and first_ok is None:
                first_ok = time.monotonic() - born
            successes = successes + 1 if ok else 0
            if successes >= self.settings.ready_successes:
                break
            await asyncio.sleep(POLL_S)
        if self.settings.settle_s:
            await asyncio.sleep(self.settings.settle_s)
        return round(first_ok, 3) if first_ok is not None else None

    async def _drain(self, probe: Probe, inst: Instance, batch: int) -> None:
        """Wait until ``inst`` has nothing in flight and got nothing new for DRAIN_QUIET_S."""
        t0 = time.monotonic()
        detached_at = self._detached_at.get(inst.id, t0)
        deadline = t0 + self.settings.drain_timeout
        first = await probe.metrics(inst.probe_address) if inst.probe_address else None
        in_flight_start = int(first.get("app_requests_in_flight", 0)) if first else 0
        last_total = first.get("app_requests_total") if first else None
        quiet_since = time.monotonic()
        idle_at: float | None = None if in_flight_start else time.monotonic()
        timed_out = False
        while first is not None:
            await asyncio.sleep(POLL_S)
            m = await probe.metrics(inst.probe_address) if inst.probe_address else None
            if m is None:
                break  # it stopped answering: nothing more can be in flight there
            total = m.get("app_requests_total")
            if total != last_total:
                last_total, quiet_since = total, time.monotonic()
                idle_at = None
            if m.get("app_requests_in_flight", 0) == 0:
                idle_at = idle_at or time.monotonic()
                if time.monotonic() - quiet_since >= DRAIN_QUIET_S:
                    break
            else:
                idle_at = None
            if time.monotonic() > deadline:
                timed_out = True
                log.warning("%s: drain timed out after %.1f s", inst.name, self.settings.drain_timeout)
                break
        end = time.monotonic()
        self.emit("drain", inst, batch=batch, detail={
            "duration_s": round(end - t0, 3), "in_flight": in_flight_start, "timed_out": timed_out,
            # from detach until nothing was in flight any more: the part no controller can avoid
            "idle_s": round((idle_at or end) - detached_at, 3),
        })


def make_sigint_handler(controller: Controller, on_first: Callable[[], None],
                        task: asyncio.Task[Any] | None) -> Callable[[], None]:
    """First Ctrl-C: finish the current step, then stop. Second: cancel the current step."""
    def handler() -> None:
        if not controller.stop_requested.is_set():
            controller.stop_requested.set()
            on_first()
        elif task is not None:
            task.cancel()
    return handler


AsyncFn = Callable[[], Awaitable[None]]

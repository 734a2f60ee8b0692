"""The executor: runs a plan's steps, in order, against the runtime and the balancer.

It owns no state of its own beyond the current run: the fleet is read from
Docker labels and the attached set from the load balancer's live config, so a
fresh process can resume (``roll`` again) or revert (``rollback``) after a
crash or Ctrl-C. It runs exactly the steps it is given (see
``plan.merge_reloads`` for the one-reload-between-batches transformation);
each action has one small handler, and each step emits an
:class:`~sandbox.results.records.Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack

from sandbox.config import Settings
from sandbox.errors import (
    BalancerError,
    ErrorRatioExceeded,
    GoneError,
    Interrupted,
    ProgressDeadlineExceeded,
    ReadinessError,
    RolloutError,
)
from sandbox.fleet.engine import Engine, Instance
from sandbox.fleet.images import ImageSet, app_code_tar
from sandbox.fleet.loadbalancer import LoadBalancer, Upstream
from sandbox.fleet.probes import Probe
from sandbox.poll import poll
from sandbox.results.records import Event, EventFields
from sandbox.rollout import plan as planner

log = logging.getLogger("sandbox.rollout.executor")

# The executor detaches and drains a server before it stops it, so the app need not keep
# answering "stopping" on /healthz for a load balancer to notice (the user's env still wins).
APP_ENV_DEFAULTS = {"APP_STOP_DELAY": "0"}
DEAD_STATES = ("exited", "dead")  # a container in one of these never serves again: the plan replaces it


@dataclass(frozen=True)
class Timing:
    """The executor's fixed waits (tests shrink them)."""

    poll_s: float = 0.1  # between two probes of one server
    drain_quiet_s: float = 0.3  # no new request for this long, and nothing in flight: drained
    stop_grace_s: float = 20.0  # SIGTERM, then SIGKILL after this long (the app bounds itself at 15 s)
    state_check_s: float = 1.0  # while waiting for readiness, ask Docker whether it still runs this often
    lb_poll_s: float = 0.02  # --lb-apply dynamic: the LB's in-flight count is one local HTTP call
    lb_restart_s: float = 15.0  # a load balancer started again must answer its admin listener within this


class Prober(Protocol):
    """What the executor asks of one app server over HTTP (``sandbox.fleet.probes.Probe``)."""

    async def ready(self, address: str, version: str | None = None, path: str = "/healthz") -> bool: ...

    async def accepts(self, address: str) -> bool: ...

    async def metrics(self, address: str) -> dict[str, float] | None: ...

    def last_failure(self, address: str) -> str | None:
        """What the last failed readiness check of ``address`` saw (None: it passed, or none ran)."""
        ...


HealthCheck = Callable[[], str | None]
EventSink = Callable[[Event], None]
ProbeFactory = Callable[[], AbstractAsyncContextManager[Prober]]


@dataclass
class _Run:
    """One ``execute`` call: what it rolls to, and the containers its steps' Refs name."""

    to_version: str
    from_version: str
    env: dict[str, str]
    probe: Prober
    by_id: dict[str, Instance]
    new_in_slot: dict[int, Instance] = field(default_factory=dict)

    def resolve(self, ref: planner.Ref) -> Instance:
        return self.by_id[ref.id] if ref.id is not None else self.new_in_slot[ref.slot]

    def targets(self, refs: Iterable[planner.Ref]) -> list[Instance]:
        return [self.resolve(r) for r in refs]


@dataclass
class Restarted:
    """What :meth:`Executor.start_what_stopped` started again (names), and how the app servers came back."""

    services: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # the app servers found exited
    ready: list[Instance] = field(default_factory=list)
    failed: list[tuple[Instance, str]] = field(default_factory=list)  # (server, why): removed

    def lines(self) -> list[str]:
        """One line per thing done, as the progress and the log say them."""
        out = [f"{name} was stopped (the Docker engine restarted?): started it again" for name in self.services]
        if self.stopped:
            out.append(f"{len(self.stopped)} app server(s) had stopped (the Docker engine restarted?): started them "
                       f"again: {', '.join(self.stopped)}")
        out += [f"{inst.name} did not come back ({why}): removed; the plan starts a new server in slot {inst.slot}"
                for inst, why in self.failed]
        return out


class Executor:
    """Runs plans for one project: start servers, drain, replace or swap, attach."""

    def __init__(
        self,
        runtime: Engine,
        balancer: LoadBalancer,
        settings: Settings,
        images: ImageSet,
        *,
        on_event: EventSink | None = None,
        events: list[Event] | None = None,
        probe: ProbeFactory = Probe,
        timing: Timing | None = None,
    ) -> None:
        self.runtime = runtime
        self.balancer = balancer
        self.settings = settings
        self.images = images
        self.project = settings.project
        self.events: list[Event] = [] if events is None else events
        self._on_event = on_event
        self._probe = probe
        self.timing = timing or Timing()
        self.stop_requested = asyncio.Event()  # first Ctrl-C or SIGTERM: finish the batch under way, then stop
        # awaited before each step (the live views show it; `demo --narrate` pauses there)
        self.before_step: Callable[[planner.Step], Awaitable[None]] | None = None
        # awaited between two steps, with the next step and its index: holds while the rollout is
        # paused, raises Aborted after `sandbox abort` (sandbox.rollout.steer.Steering.gate)
        self.gate: Callable[[planner.Step, int], Awaitable[None]] | None = None
        # awaited after each step, the load balancer as the step left it (the mixed checks run there)
        self.after_step: Callable[[planner.Step], Awaitable[None]] | None = None
        self.live = 0  # app containers alive now (for peak_instances)
        self.peak = 0
        self._born: dict[str, float] = {}  # container id -> monotonic time it was started or swapped
        self._detached_at: dict[str, float] = {}  # container id -> monotonic time it was detached
        self._signalled_at: dict[str, float] = {}  # container id -> monotonic time of its 'term' (stop signal)
        self._handlers: dict[str, Callable[[_Run, planner.Step], Awaitable[None]]] = {
            "start": self._start, "ready": self._ready, "attach": self._attach, "detach": self._detach,
            "switch": self._switch, "reattach": self._reattach_step, "drain": self._drain_step,
            "stop": self._stop, "kill": self._kill, "swap": self._swap, "term": self._term,
        }

    @property
    def actions(self) -> frozenset[str]:
        """The plan actions this executor has a handler for."""
        return frozenset(self._handlers)

    # -- events -------------------------------------------------------------------------------
    def emit(self, phase: str, instance: Instance | None = None, **extra: Unpack[EventFields]) -> Event:
        event: Event = {"t": time.time(), "phase": phase, "instance": instance.name if instance else None}
        if instance is not None:
            event["slot"] = instance.slot
            event["version"] = instance.version
            event["address"] = instance.address
            if instance.node:
                event["node"] = instance.node
        event = {**event, **extra}
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
            planner.Server(id=i.id, slot=i.slot, version=i.version, attached=i.name in attached,
                           alive=i.state not in DEAD_STATES)
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

    async def start_what_stopped(self, run: _Run | None = None) -> Restarted:
        """Start again what an engine restart stopped: the session store and database, then every app
        server that exited, each waited for until ready on its own version (one that is not is removed,
        and the plan rebuilds its slot as it would a dead one's). A set the load balancer kept follows
        the servers' new addresses, and so do ``run``'s; nothing new is attached here."""
        services = await self.runtime.stopped_services(self.project)
        for service in services:
            await self.runtime.start_again(service)
        stopped = [i for i in await self.runtime.instances(self.project) if i.state == "exited"]
        if not stopped:
            return Restarted(services=[s.name for s in services])
        async with self._probe() as probe:
            async def one(inst: Instance) -> Instance | tuple[Instance, str]:
                try:
                    self._born[inst.id] = time.monotonic()
                    started = await self.runtime.start_app_again(self.project, inst)
                    await self._wait_ready(probe, started, started.version)
                    return started
                except (ReadinessError, GoneError) as exc:
                    with contextlib.suppress(GoneError):
                        await self.runtime.kill_app(inst)
                    return inst, str(exc)
            done = await asyncio.gather(*(one(i) for i in stopped))
        ready = [d for d in done if isinstance(d, Instance)]
        moved = {i.name: i.address for i in ready if i.address}
        kept = list(self.balancer.state.upstreams)
        followed = [dataclasses.replace(u, address=moved.get(u.name) or u.address) for u in kept]
        if not self.balancer.lost and followed != kept:
            await self.balancer.apply(followed)
        if run is not None:
            run.by_id.update({i.id: i for i in ready if i.id in run.by_id})
        return Restarted(services=[s.name for s in services], stopped=[i.name for i in stopped],
                         ready=ready, failed=[d for d in done if not isinstance(d, Instance)])

    async def notice_dead(self, run: _Run | None = None) -> list[str]:
        """Take out every attached server whose container stopped under us (killed, crashed),
        with a ``died`` event naming it; its later steps (detach, drain, stop) then find it out.

        Returns the names taken out. Cheap when nothing died: one container listing.
        """
        attached = {u.name: u.address for u in self.balancer.state.upstreams}
        if not attached:
            return []
        states = await self.runtime.app_states(self.project)
        if all(states.get(name) == "running" for name in attached):
            return []
        listed = await self.runtime.instances(self.project)
        dead = [i for i in listed if i.name in attached and i.state != "running"]
        if not dead:
            return []
        await self.reconcile(listed)
        for inst in dead:
            info = await self.runtime.exit_info(inst)
            log.warning("%s died while attached (%s): taken out of the load balancer", inst.name, info)
            if run is not None and inst.id in run.by_id:
                run.by_id[inst.id] = dataclasses.replace(run.by_id[inst.id], state=inst.state)
            # a dead container has lost its address: name the one the LB was sending it requests on
            self.emit("died", inst, address=attached[inst.name], detail={"exit": info})
        return [i.name for i in dead]

    async def restore_lb(self, run: _Run | None = None) -> bool:
        """When the load balancer container exited (killed, crashed, stopped by an engine restart), say
        so, start it again and give it the fleet's state as this controller holds it (the attached set
        and settings), then start what the engine stopped with it (:meth:`start_what_stopped`), with
        ``lb-exited`` and ``lb-restored`` events spanning the outage. Returns False when it is running
        (the problem is elsewhere)."""
        lb = await self.runtime.lb(self.project)
        if lb is None or lb.state == "running":
            return False
        died_at = lb.finished_at or time.time()
        code = lb.exit_code
        log.warning("the load balancer exited (exit code %s): starting it again with the fleet's state", code)
        self.emit("lb-exited", None, detail={"exit_code": code, "down_since": round(died_at, 3)})
        await self.runtime.start_again(lb)
        self.balancer.forget_container()  # a restarted container may have a new admin address
        attached = list(self.balancer.state.upstreams)
        last: list[BalancerError] = []

        async def pushed() -> bool | None:
            try:
                await self.balancer.apply(attached)
            except BalancerError as exc:
                last[:] = [exc]
                return None
            return True

        if not await poll(pushed, timeout=self.timing.lb_restart_s, interval=0.2):  # NGINX takes a moment
            raise BalancerError(f"the load balancer exited and, started again, does not answer: "
                                f"{last[0] if last else '?'}")
        restarted = await self.start_what_stopped(run)  # an engine restart stopped them with it
        for line in restarted.lines():
            log.warning("%s", line)
        now = time.time()
        self.emit("lb-restored", None, detail={"outage_s": round(now - died_at, 3), "attached": len(attached),
                                               "started_again": [*restarted.services, *restarted.stopped]})
        return True

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
        deadline_s: float = 0.0,
    ) -> None:
        """Run ``steps`` (planned from ``instances``, read afresh when not given) in order.

        After a stop request (Ctrl-C, SIGTERM) the batch under way finishes (``planner.wind_down``),
        then Interrupted; before each step, ErrorRatioExceeded when ``health`` says so, and
        whatever ``gate`` raises (Aborted). With ``deadline_s``, a step that does not complete
        within that long of the last one (time held by the gate not counted) is cut short:
        ProgressDeadlineExceeded. The steps raise ReadinessError, BalancerError or EngineError."""
        if instances is None:
            instances, _ = await self.fleet()
        self.live = len(instances)
        self.peak = max(self.peak, self.live)
        todo, winding_down = list(steps), False
        async with self._probe() as probe:
            run = _Run(to_version, from_version, env, probe, {i.id: i for i in instances})
            for done in range(len(steps) + 1):
                if self.gate is not None and done < len(todo) and not winding_down:
                    await self.gate(todo[done], done)
                if self.stop_requested.is_set() and not winding_down and done < len(todo):
                    todo, winding_down = todo[:done] + planner.wind_down(todo, done), True
                if done == len(todo):
                    break
                step = todo[done]
                try:
                    await self.notice_dead(run)  # first: a server that died is named, whatever stops the rollout
                except BalancerError:  # the LB went with it: an engine restart stops everything
                    if not await self.restore_lb(run):
                        raise
                    await self.notice_dead(run)  # what the engine stopped runs again: only real deaths are left
                if health is not None and (reason := health()):
                    raise ErrorRatioExceeded(reason)
                if self.before_step is not None:
                    await self.before_step(step)
                await self._run_step(run, step, deadline_s)
                if self.after_step is not None:
                    await self.after_step(step)
        if winding_down:
            raise Interrupted("interrupted")

    async def _run_step(self, run: _Run, step: planner.Step, deadline_s: float) -> None:
        """One step, again on a restored load balancer if it exited; cut short past ``deadline_s``."""
        timer = asyncio.timeout(deadline_s or None)
        try:
            async with timer:
                try:
                    await self._handlers[step.action](run, step)
                except BalancerError:
                    if not await self.restore_lb(run):
                        raise
                    await self._handlers[step.action](run, step)  # the step again, on the restored LB
        except TimeoutError:
            if not timer.expired():
                raise
            self.emit("deadline", None, batch=step.batch_no,
                      detail={"action": step.action, "progress_deadline_s": deadline_s})
            raise ProgressDeadlineExceeded(
                f"no progress for {deadline_s:g} s (--progress-deadline): step {step.action} of batch "
                f"{step.batch_no} did not complete") from None

    # -- one handler per action ---------------------------------------------------------------
    async def _start(self, run: _Run, step: planner.Step) -> None:
        t_start = time.monotonic()
        env = {**APP_ENV_DEFAULTS, **run.env}
        image = self.images.app.get(run.to_version)
        if image is None:
            raise RolloutError(f"version {run.to_version!r} has no image in this fleet "
                               f"(it has {', '.join(self.images.app)})")
        started = await _gather(
            self.runtime.start_app(self.project, ref.slot, run.to_version, image, env, run.from_version,
                                   spec=self.images.spec, toy=self.images.toy)
            for ref in step.targets
        )
        for inst in started:
            self._born[inst.id] = t_start
            run.new_in_slot[inst.slot] = inst
            run.by_id[inst.id] = inst
            self.live += 1
            self.peak = max(self.peak, self.live)
            self.emit("start", inst, batch=step.batch_no)

    async def _ready(self, run: _Run, step: planner.Step) -> None:
        insts = run.targets(step.targets)
        first_ok = await _gather(self._wait_ready(run.probe, i, run.to_version) for i in insts)
        for inst, first_ok_s in zip(insts, first_ok, strict=True):
            self.emit("ready", inst, batch=step.batch_no, detail={"first_ok_s": first_ok_s})

    async def _attach(self, run: _Run, step: planner.Step) -> None:
        await self._reattach(run.probe, run.targets(step.targets), step.batch_no, [], step.batch_no)

    async def _detach(self, run: _Run, step: planner.Step) -> None:
        await self._reattach(run.probe, [], step.batch_no, run.targets(step.targets), step.batch_no)

    async def _reattach_step(self, run: _Run, step: planner.Step) -> None:
        """Attach the end of one batch and detach the start of the next in one reload."""
        await self._reattach(run.probe, run.targets(step.targets), step.batch_no,
                             run.targets(step.detach), step.detach_batch or step.batch_no)

    async def _switch(self, run: _Run, step: planner.Step) -> None:
        attach, detach = run.targets(step.targets), run.targets(step.detach)
        await self._reattach(run.probe, attach, step.batch_no, detach, step.batch_no)
        self.emit("switch", None, batch=step.batch_no,
                  detail={"attached": [i.name for i in attach], "detached": [i.name for i in detach]})

    async def _drain_step(self, run: _Run, step: planner.Step) -> None:
        await _gather(self._drain(run.probe, i, step.batch_no) for i in run.targets(step.targets))

    async def _term(self, run: _Run, step: planner.Step) -> None:
        """The stop signal to servers still attached, then the detach lag: the load balancer
        keeps routing to them meanwhile, as Kubernetes' endpoints do after SIGTERM."""
        insts = run.targets(step.targets)
        await _gather(self.runtime.signal_stop(i) for i in insts)
        now = time.monotonic()
        for inst in insts:
            self._signalled_at[inst.id] = now
            self.emit("term", inst, batch=step.batch_no, detail={"lag_s": self.settings.detach_lag_s})
        await asyncio.sleep(self.settings.detach_lag_s)

    async def _stop(self, run: _Run, step: planner.Step) -> None:
        insts = run.targets(step.targets)
        grace = self.timing.stop_grace_s if self.images.toy else self.images.spec.stop_timeout
        t_stop = time.monotonic()
        # a server sent its signal by 'term' has had part of its grace already, as in Kubernetes
        codes = await _gather(
            self.runtime.stop_app(i, max(0.0, grace - (t_stop - self._signalled_at.get(i.id, t_stop))))
            for i in insts)
        # side by side: the batch's stop took as long as its slowest (an unavoidable wait); the exit
        # code tells how each ended (0: by itself; 137: killed at the grace; None: it was gone)
        stop_s = round(time.monotonic() - t_stop, 3)
        for inst, code in zip(insts, codes, strict=True):
            self._gone("stop", [inst], step.batch_no, {"stop_s": stop_s, "exit_code": code})

    async def _kill(self, run: _Run, step: planner.Step) -> None:
        insts = run.targets(step.targets)
        await _gather(self.runtime.kill_app(i) for i in insts)
        self._gone("kill", insts, step.batch_no)

    def _gone(self, phase: str, insts: Sequence[Instance], batch: int,
              detail: dict[str, Any] | None = None) -> None:
        for inst in insts:
            self.live -= 1  # kept in by_id: a naive 'switch' still names it to detach
            fields: EventFields = {"batch": batch, "detail": detail} if detail else {"batch": batch}
            self.emit(phase, inst, **fields)

    async def _swap(self, run: _Run, step: planner.Step) -> None:
        insts = run.targets(step.targets)
        code = app_code_tar(run.to_version, run.env)
        t_swap = time.monotonic()
        now_insts = await _gather(self.runtime.swap_code(self.project, i, code) for i in insts)
        for inst, now_inst in zip(insts, now_insts, strict=True):
            self._born[inst.id] = t_swap
            swapped = dataclasses.replace(now_inst, version=run.to_version)
            run.by_id[inst.id] = swapped
            self.emit("swap", swapped, batch=step.batch_no, detail={"from": inst.version})

    # -- the load balancer --------------------------------------------------------------------
    async def _reattach(self, probe: Prober, attach: Sequence[Instance], attach_batch: int,
                        detach: Sequence[Instance], detach_batch: int) -> None:
        """One reload that attaches ``attach`` and detaches ``detach``; events for each, the
        detached ones with the requests they had in flight at that moment."""
        await self._still_running(attach)
        in_flight = await self._in_flight(probe, detach)
        await self._set_attached(attach=attach, detach=detach)
        now = time.monotonic()
        for inst in attach:
            self.emit("attach", inst, batch=attach_batch)
        for inst in detach:
            self._detached_at[inst.id] = now
            self.emit("detach", inst, batch=detach_batch, detail={"in_flight": in_flight[inst.id]})

    async def _still_running(self, insts: Sequence[Instance]) -> None:
        """ReadinessError when a server about to be attached stopped since it turned ready: the
        load balancer is never given an address nothing answers on (the rollout fails, and rolls back).
        One container listing, however many servers (double-half attaches the whole fleet)."""
        if not insts:
            return
        states = await self.runtime.app_states(self.project)
        for inst in insts:
            if states.get(inst.name) != "running":
                self.emit("died", inst, detail={"exit": await self.runtime.exit_info(inst), "before": "attach"})
                raise ReadinessError(f"{inst.name} ({inst.version}) stopped after it was ready, before it was "
                                     f"attached: {await self.runtime.exit_info(inst)}")

    async def _set_attached(self, *, attach: Sequence[Instance], detach: Sequence[Instance]) -> None:
        current = {u.name: u for u in self.balancer.state.upstreams}
        for inst in detach:
            current.pop(inst.name, None)
        for inst in attach:
            if inst.address is None:
                raise RolloutError(f"{inst.name} has no address on the project network")
            current[inst.name] = Upstream(name=inst.name, address=inst.address, version=inst.version)
        await self.balancer.apply(list(current.values()))

    async def _in_flight(self, probe: Prober, insts: Sequence[Instance]) -> dict[str, int]:
        async def one(inst: Instance) -> int:
            address = _reachable(inst)
            m = await probe.metrics(address) if address else None
            return int(m.get("app_requests_in_flight", 0)) if m else 0
        counts = await asyncio.gather(*(one(i) for i in insts))
        return {i.id: c for i, c in zip(insts, counts, strict=True)}

    # -- waiting on one server ----------------------------------------------------------------
    async def _wait_ready(self, probe: Prober, inst: Instance, version: str) -> float | None:
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
                seen = probe.last_failure(inst.probe_address) if inst.probe_address else "it has no address"
                raise ReadinessError(
                    f"{inst.name} ({version}) was not ready within {self.settings.ready_timeout:g} s"
                    f" ({await self.runtime.exit_info(inst)})" + (f"; the last check: {seen}" if seen else "")
                )
            ok = inst.probe_address is not None and await self._ready_once(probe, inst, version)
            if not ok and now - last_state_check > self.timing.state_check_s:
                last_state_check = now  # a passing probe needs no Docker round trip
                await self._check_running(inst, version)
            if ok and first_ok is None:
                first_ok = time.monotonic() - born
            successes = successes + 1 if ok else 0
            if successes >= self.settings.ready_successes:
                break
            await asyncio.sleep(self.timing.poll_s)
        if self.settings.min_ready_s:
            await self._stay_ready(probe, inst, version)
        if self.settings.settle_s:
            await asyncio.sleep(self.settings.settle_s)
        return round(first_ok, 3) if first_ok is not None else None

    async def _stay_ready(self, probe: Prober, inst: Instance, version: str) -> None:
        """--min-ready-s: keep checking ``inst`` for that long after it turned ready; one failed
        check, or its container stopping, is a ReadinessError (it never counted)."""
        until = time.monotonic() + self.settings.min_ready_s
        last_state_check = time.monotonic()
        while (now := time.monotonic()) < until:
            await asyncio.sleep(min(self.timing.poll_s, max(0.0, until - now)))
            if not await self._ready_once(probe, inst, version):
                seen = probe.last_failure(inst.probe_address) if inst.probe_address else None
                held = self.settings.min_ready_s - (until - time.monotonic())
                raise ReadinessError(
                    f"{inst.name} ({version}) was ready, then failed a check {held:.1f} s later, within "
                    f"--min-ready-s {self.settings.min_ready_s:g}" + (f": {seen}" if seen else ""))
            if time.monotonic() - last_state_check > self.timing.state_check_s:
                last_state_check = time.monotonic()
                await self._check_running(inst, version)

    async def _check_running(self, inst: Instance, version: str) -> None:
        fresh = await self.runtime.refresh(self.project, inst)
        if fresh is None or fresh.state in DEAD_STATES:
            raise ReadinessError(f"{inst.name} ({version}) stopped before it was ready: "
                                 f"{await self.runtime.exit_info(inst)}")

    async def _ready_once(self, probe: Prober, inst: Instance, version: str) -> bool:
        return await ready_once(probe, self.runtime, self.images, inst, version)

    async def _drain(self, probe: Prober, inst: Instance, batch: int) -> None:
        """Wait until ``inst`` has nothing in flight and got nothing new for ``drain_quiet_s``
        (reload mode: old workers may still route to it); in dynamic mode, until the LB says."""
        if self.balancer.dynamic:
            return await self._drain_by_lb(probe, inst, batch)
        t0 = time.monotonic()
        detached_at = self._detached_at.get(inst.id, t0)
        deadline = t0 + self.settings.drain_timeout
        address = _reachable(inst)
        first = await probe.metrics(address) if address else None
        in_flight_start = int(first.get("app_requests_in_flight", 0)) if first else 0
        last_total = first.get("app_requests_total") if first else None
        quiet_since = time.monotonic()
        idle_at: float | None = None if in_flight_start else time.monotonic()
        # it answers but has no /metrics: nothing tells when it is drained, so it counts as not drained
        timed_out = first is None and address is not None and await probe.accepts(address)
        if timed_out:
            log.warning("%s: no /metrics to drain by: the drain was skipped", inst.name)
        while first is not None:
            await asyncio.sleep(self.timing.poll_s)
            m = await probe.metrics(address) if address else None
            if m is None:
                break  # it stopped answering: nothing more can be in flight there
            total = m.get("app_requests_total")
            if total != last_total:
                last_total, quiet_since = total, time.monotonic()
                idle_at = None
            if m.get("app_requests_in_flight", 0) == 0:
                idle_at = idle_at or time.monotonic()
                if time.monotonic() - quiet_since >= self.timing.drain_quiet_s:
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
            **({"reason": "skipped: the app has no /metrics to drain by"} if first is None and timed_out else {}),
        })

    async def _drain_by_lb(self, probe: Prober, inst: Instance, batch: int) -> None:
        """Dynamic mode: once detached, no new request goes to ``inst`` (the set changed without
        a reload), so it is drained when the LB counts 0 requests in flight to it; no quiet
        period. Bounded by drain_timeout; the app's own gauge is read at the end as a cross-check."""
        t0 = time.monotonic()
        detached_at = self._detached_at.get(inst.id, t0)
        counts: list[int] = []

        async def nothing_left() -> bool | None:
            counts.append((await self.balancer.in_flight()).get(inst.address or "", 0))
            return True if counts[-1] == 0 else None

        drained = await poll(nothing_left, timeout=self.settings.drain_timeout, interval=self.timing.lb_poll_s)
        timed_out = drained is None
        if timed_out:
            log.warning("%s: drain timed out after %.1f s (%d in flight at the LB)",
                        inst.name, self.settings.drain_timeout, counts[-1])
        end = time.monotonic()
        address = _reachable(inst)
        m = await probe.metrics(address) if address else None
        app_in_flight = int(m.get("app_requests_in_flight", 0)) if m else None
        if app_in_flight and not timed_out:
            log.warning("%s: the LB has nothing in flight to it but the app reports %d", inst.name, app_in_flight)
        closing = await self._close_long_lived(inst) if self.settings.mode == "replace" else {}
        self.emit("drain", inst, batch=batch, detail={
            "duration_s": round(time.monotonic() - t0, 3), "in_flight": counts[0],
            "timed_out": timed_out or bool(closing.get("long_lived_timed_out")),
            "idle_s": round(end - detached_at, 3), "signal": "lb", "app_in_flight": app_in_flight, **closing,
        })

    async def _close_long_lived(self, inst: Instance) -> dict[str, Any]:
        """Dynamic mode, a detached server about to be stopped, its requests drained: when the LB
        still holds long-lived connections to it (WebSockets, event streams, which never finish by
        themselves), send its stop signal now (the app closes them properly: the toy sends
        WebSocket close 1001 and ends its streams with ``retry:``) and wait until the LB counts 0
        open, bounded by ``drain_timeout``; the stop step then removes it. What it saw, for the
        drain event: how many were open, how long closing took, how many were left."""
        address = inst.address or ""
        first = (await self.balancer.long_lived()).get(address, 0)
        if not first:
            return {"long_lived": 0}
        t0 = time.monotonic()
        if inst.id not in self._signalled_at:  # a 'term' (--detach-lag) sent it already
            await self.runtime.signal_stop(inst)
            self._signalled_at[inst.id] = t0
        left = [first]

        async def all_closed() -> bool | None:
            left.append((await self.balancer.long_lived()).get(address, 0))
            return True if left[-1] == 0 else None

        closed = await poll(all_closed, timeout=self.settings.drain_timeout, interval=self.timing.lb_poll_s)
        if closed is None:
            log.warning("%s: %d of %d long-lived connections still open at the LB after %.1f s",
                        inst.name, left[-1], first, self.settings.drain_timeout)
        return {"long_lived": first, "long_lived_close_s": round(time.monotonic() - t0, 3),
                "long_lived_left": left[-1], "long_lived_timed_out": closed is None}


async def ready_once(probe: Prober, runtime: Engine, images: ImageSet, inst: Instance, version: str) -> bool:
    """One readiness check: the toy app's /healthz reporting ``version``; for your own app, any
    2xx on --health-path, else the image's HEALTHCHECK says healthy, else the port accepts."""
    address = inst.probe_address
    assert address is not None
    spec = images.spec
    if images.toy:
        return await probe.ready(address, version, path=spec.health_path or "/healthz")
    if spec.health_path:
        return await probe.ready(address, None, path=spec.health_path)
    health = await runtime.health(inst)
    if health is not None:
        return health == "healthy"
    return await probe.accepts(address)


def _reachable(inst: Instance) -> str | None:
    """Where to probe ``inst``: None without an address or once its container exited (a gone
    container's address drops packets, so each probe would wait for its timeout)."""
    return inst.probe_address if inst.state not in DEAD_STATES else None


async def _gather(coros: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; if one fails, let the others finish, then raise the first error."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)

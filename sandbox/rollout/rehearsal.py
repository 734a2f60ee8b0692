"""One rehearsal of a rollout, in the design's phases.

::

    rehearsal = Rehearsal(settings, runtime=runtime, kind="roll", to_version="v2")
    await rehearsal.repair()              # writes: stopped LB, images, lost set, stale upstreams
    prepared = await rehearsal.prepare()  # reads: fleet, target, plan: print(prepared.describe())
    ran = await rehearsal.run()           # warmup, execute (rollback on failure), cooldown (LoadPhases)
    collected = await rehearsal.collect() # client rows, NGINX log, events
    report = rollout_report(settings, prepared, ran, collected)   # pure
    code = exit_code([report], max_dropped=settings.max_dropped)  # pure

``rehearse`` runs them in that order; ``commands.roll`` (and through it
``rollback``, ``demo`` and ``compare``) calls it. Ctrl-C is handled in one
place, :class:`Interrupts`: the first finishes the batch under way (every server ends
attached) and stops, the second cuts the current step short. SIGTERM (a cancelled CI job)
counts as a Ctrl-C, and the report is written before the process ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from sandbox.config import Settings, check_batch
from sandbox.errors import (
    Aborted,
    BalancerError,
    DatabaseDown,
    EngineUnreachable,
    HookError,
    Interrupted,
    MigrationError,
    NotFoundError,
    RolloutError,
    SandboxError,
    UsageError,
    hint,
)
from sandbox.fleet import access, versions
from sandbox.fleet import labels as L
from sandbox.fleet.balancer import NginxBalancer, lb_read_timeout_s
from sandbox.fleet.engine import Engine, Instance, LbHandle
from sandbox.fleet.images import ImageSet
from sandbox.fleet.images import image_set as current_image_set
from sandbox.fleet.loadbalancer import LbRow, LbState, LoadBalancer
from sandbox.fleet.probes import Probe, long_lived_problem
from sandbox.load.run import LoadRun, LoadSettings
from sandbox.poll import poll
from sandbox.results.measure import (
    AddressHistory,
    MeasureSettings,
    address_history_from_events,
    attribute_versions,
    measure,
)
from sandbox.results.model import CanaryStep, Check, MixedRecord, Report, RollbackRehearsal, Rollout, Verdict
from sandbox.results.records import Event, LongLivedRow, RequestRow
from sandbox.results.report import build_report, clear_report_dir, write_report_dir
from sandbox.results.verdict import Limits, exit_code, not_run, rollback_safe
from sandbox.rollout import canary, hooks, migrate, mixed, rollback_safety, strategies
from sandbox.rollout import plan as planner
from sandbox.rollout.canary import CanaryRun
from sandbox.rollout.executor import Executor, ProbeFactory, Timing
from sandbox.rollout.load_phases import LoadGenerator, LoadPhases
from sandbox.rollout.steer import PLAN, PLAN_MIXED, ControlServer, Steering
from sandbox.ui.progress import Progress, make_progress

log = logging.getLogger("sandbox.rollout.rehearsal")

Kind = Literal["roll", "rollback"]
MIN_SAMPLE_FOR_ERROR_RATIO = 30  # requests in the rollout before the error ratio can stop it
FIRST_CTRL_C = "Ctrl-C: finishing the batch under way, then stopping (Ctrl-C again to cut the current step short)"
FIRST_SIGTERM = "SIGTERM: finishing the batch under way, then stopping, like a Ctrl-C (a second signal cuts it short)"


async def _ensure_images(runtime: Engine) -> ImageSet:
    return await runtime.ensure_images()


@dataclass(frozen=True)
class Deps:
    """What a rehearsal reaches the world through, and how often it looks (tests pass fakes)."""

    balancer: Callable[[Engine, str, int], LoadBalancer] = NginxBalancer
    load: Callable[[str, LoadSettings, Path], LoadRun] = LoadRun
    images: Callable[[Engine], Awaitable[ImageSet]] = _ensure_images
    probe: ProbeFactory = Probe
    # the --ws-path / --sse-path check through the load balancer: what is wrong, or None
    long_lived_check: Callable[..., Awaitable[str | None]] = long_lived_problem
    timing: Timing = field(default_factory=Timing)
    tick_s: float = 0.5  # how often the load's new rows are counted and shown


@dataclass(frozen=True)
class Prepared:
    """The outcome of ``prepare``: where the fleet is, where it goes, and the steps to get there."""

    kind: Kind
    source: str
    target: str
    strategy: str
    size: int
    env: dict[str, str]  # of the new servers
    instances: list[Instance]  # the app containers at the start (after ``repair``, if it ran)
    steps: list[planner.Step]  # exactly what ``run`` executes
    batch: int = 1  # servers one batch takes, as the report gives it
    mode: str = "replace"
    versions: tuple[str, ...] = ()  # the fleet's declared versions, in order
    peak: int | None = None  # most app containers alive at once (simulated)
    floor: int | None = None  # fewest slots serving at once: the expected capacity
    batches: int | None = None
    seed: int | None = None  # --seed: the pick order is a shuffle seeded with it (None: slot order)
    mixed_checks: tuple[str, ...] = ()  # run once both versions are attached
    detach_lag_s: float = 0.0  # --detach-lag: each 'term' step waits this long before the detach
    pause_at: int | None = None  # --pause-after-batch, --pause-at-mixed: the index of the step it pauses before
    pause_at_mixed: bool = False  # that pause is --pause-at-mixed's (the first moment both versions serve)
    migrate: str = ""  # --migrate: run once in a one-off container of the target image ("" none)
    migrate_at: str = "before"  # --migrate-at: before the first batch, or after the last
    contract: str = ""  # --contract: run once every server is new ("" none)
    rollback_rehearsal_s: float = 0.0  # --rehearse-rollback: seconds of each rollback rehearsal (0: none)
    hooks: tuple[hooks.Hook, ...] = ()  # --hook EVENT=CMD, in the order given (roll only)
    note: str = ""  # one line said at plan time (a canary in reload mode: what it cannot do)

    @property
    def pick_order(self) -> list[list[int]]:
        """The slots of each batch, in the order the plan takes them."""
        return planner.pick_order(self.steps)

    def order_line(self) -> str:
        """"pick order (seed 7): [3] [1] [2]" for people."""
        how = f"seed {self.seed}" if self.seed is not None else "slot order, no --seed"
        return f"pick order ({how}): " + " ".join(f"[{', '.join(map(str, b))}]" for b in self.pick_order)

    def as_json(self) -> dict[str, Any]:
        """The plan as data: where from and to, the figures, and each step."""
        names = {i.id: i.name for i in self.instances}

        def who(refs: Sequence[planner.Ref]) -> list[dict[str, Any]]:
            return [{"slot": r.slot, "instance": names.get(r.id, r.id) if r.id else None} for r in refs]

        return {"kind": self.kind, "from": self.source, "to": self.target, "strategy": self.strategy,
                "size": self.size, "batches": self.batches, "peak_containers": self.peak,
                "min_serving": self.floor, "seed": self.seed, "pick_order": self.pick_order,
                "mixed_checks": list(self.mixed_checks), "detach_lag_s": self.detach_lag_s,
                "pause_at": self.pause_at, "pause_at_mixed": self.pause_at_mixed,
                "migrate": {"command": self.migrate, "at": self.migrate_at} if self.migrate else None,
                "contract": self.contract or None, "rollback_rehearsal_s": self.rollback_rehearsal_s or None,
                "hooks": [{"event": h.event, "command": h.command} for h in self.hooks],
                "steps": [{"batch": st.batch_no, "action": st.action, "targets": who(st.targets),
                           "detach": who(st.detach)} for st in self.steps]}

    def describe(self) -> str:
        """The plan, one line per step, before anything runs."""
        names = {i.id: i.name for i in self.instances}

        def who(refs: Sequence[planner.Ref]) -> str:
            return ", ".join(names.get(r.id, r.id) if r.id else f"new server in slot {r.slot}" for r in refs)

        lines = [f"{self.kind} {self.source} -> {self.target} with {self.strategy}: {len(self.steps)} steps"
                 + (f" in {self.batches} batches; at most {self.peak} containers, at least {self.floor} of "
                    f"{self.size} servers serving" if self.peak is not None else "")]
        if self.note:
            lines.append("  " + self.note)
        if self.seed is not None:
            lines.append("  " + self.order_line())
        if self.detach_lag_s:
            lines.append(f"  detach lag {self.detach_lag_s:g} s: each 'term' sends the stop signal, then waits "
                         "that long before the detach")
        if self.migrate:
            lines.append(f"  migration {'before the first batch' if self.migrate_at == 'before' else 'after the last'}"
                         f", in a one-off {self.target} container: {self.migrate}")
        if self.contract:
            lines.append(f"  contract step once every server is {self.target}, in a one-off {self.target} container: "
                         f"{self.contract}")
        if self.rollback_rehearsal_s:
            after = "the rollout and the contract step" if self.contract else "the rollout"
            lines.append(f"  rollback rehearsal after {after}: {self.source} served against the schema for "
                         f"{self.rollback_rehearsal_s:g} s, off the load balancer")
        lines.extend(f"  hook {h.event}: {h.command}" for h in self.hooks)
        if self.mixed_checks:
            lines.append(f"  {len(self.mixed_checks)} mixed check(s), run once both versions are attached: "
                         + "; ".join(self.mixed_checks))
        for index, step in enumerate(self.steps):
            if index == self.pause_at:
                why = ("--pause-at-mixed: both versions serve" if self.pause_at_mixed
                       else f"--pause-after-batch {self.steps[index - 1].batch_no}")
                lines.append(f"  -- pause ({why}): "
                             "`sandbox resume` or `sandbox promote` goes on, `sandbox abort` rolls back")
            line = f"  batch {step.batch_no:<3} {step.action:<8} {who(step.targets)}"
            if step.detach:
                line += f"; detach {who(step.detach)}"
                line += f" (batch {step.detach_batch})" if step.detach_batch else ""
            lines.append(line)
        return "\n".join(lines)


@dataclass(frozen=True)
class Ran:
    """The outcome of ``run``."""

    outcome: str  # completed, failed, rolled_back, interrupted
    message: str
    started: float  # unix time run() began
    t_start: float | None  # the rollout's first and last moments (unix time)
    t_end: float | None
    peak: int  # most app containers alive at once
    load: bool  # traffic ran
    load_alive: bool = True  # the load generator ran until it was asked to stop
    mixed_checks: tuple[MixedRecord, ...] = ()  # one record per --mixed-check (mixed.py), --migrate's, each hook run's
    migration_end: float | None = None  # unix time the --migrate command ended (None: it did not run)
    contract_end: float | None = None  # unix time the --contract command ended (None: it did not run)
    rollback_rehearsals: tuple[RollbackRehearsal, ...] = ()  # --rehearse-rollback: after the rollout, the contract
    canary: tuple[CanaryStep, ...] = ()  # --strategy canary: each step's weight and analysis


@dataclass(frozen=True)
class Collected:
    """The outcome of ``collect``: what the users and the load balancer saw."""

    rows: list[RequestRow]
    nginx_rows: list[LbRow]
    events: list[Event]
    history: AddressHistory
    lb: LbState  # the load balancer's settings at the end (sticky, lb_apply, client keep-alive)
    load_end: LoadGenerator | None = None  # how the load generator ended: exit code, died early, killed, sent
    lb_log_read: bool = True  # False: the load balancer's log could not be read (``unrecorded`` is unknown)
    long_lived_rows: list[LongLivedRow] = field(default_factory=list)  # --ws-users / --sse-users connections


@dataclass
class RolloutResult:
    report: dict[str, Any]
    exit_code: int
    message: str
    rehearsed: bool = True  # False: the fleet was already there, nothing ran (``unchanged_text`` says so)
    write_error: str | None = None  # why the report files could not be written (one line), if so


class Interrupts:
    """Ctrl-C (and SIGTERM, which counts as one) during a rehearsal, in one place.

    The first asks the executor to stop once the batch under way is done (``stop`` is set) and says so;
    a second one, while a step runs (inside ``cutting()``), cancels the task running it.
    """

    def __init__(self, stop: asyncio.Event, say: Callable[[str], None]) -> None:
        self.stop = stop
        self.say = say
        self.count = 0
        self._task: asyncio.Task[Any] | None = None
        self._cuttable = False

    def __call__(self, signum: int = signal.SIGINT) -> None:
        """The SIGINT and SIGTERM handler (tests call it directly)."""
        self.count += 1
        if self.count == 1:
            self.stop.set()
            self.say(FIRST_SIGTERM if signum == signal.SIGTERM else FIRST_CTRL_C)
        elif self._task is not None and self._cuttable:
            self._task.cancel()  # a second Ctrl-C cuts the current step short

    @contextmanager
    def installed(self, on_sigint: bool = True) -> Iterator[Interrupts]:
        """Handle SIGINT and SIGTERM (when ``on_sigint``) for the current task, until the block ends."""
        self._task = asyncio.current_task()
        with _handling(on_sigint, self):
            yield self

    @contextmanager
    def cutting(self) -> Iterator[None]:
        """While the block runs, a second Ctrl-C cancels it."""
        self._cuttable = True
        try:
            yield
        finally:
            self._cuttable = False

    def uncancel(self) -> None:
        """Forget the cancellation a second Ctrl-C made, so the rehearsal can still report."""
        if self._task is not None:
            self._task.uncancel()


@contextmanager
def _handling(install: bool, handler: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``handler(signum)`` (when ``install``);
    afterwards both are back to their defaults."""
    loop = asyncio.get_running_loop()
    signums = (signal.SIGINT, signal.SIGTERM) if install else ()
    for signum in signums:
        loop.add_signal_handler(signum, handler, signum)
    try:
        yield
    finally:
        for signum in signums:
            with suppress(Exception):
                loop.remove_signal_handler(signum)


class Rehearsal:
    """One roll or rollback of a project's fleet under live traffic, phase by phase."""

    def __init__(self, settings: Settings, *, runtime: Engine, kind: Kind = "roll", to_version: str | None = None,
                 progress: Progress | None = None, report_dir: Path | None = None, install_sigint: bool = True,
                 deps: Deps | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.kind = kind
        self.to_version = to_version
        self.progress = progress or make_progress()
        self.report_dir = report_dir
        self.install_sigint = install_sigint
        self.deps = deps or Deps()
        self.events: list[Event] = []
        self.load = LoadPhases(settings, events=self.events, make_load=self.deps.load, say=self.progress.line,
                               show=self.progress.traffic, tick_s=self.deps.tick_s)
        self._workdir: Path | None = None
        self._balancer: LoadBalancer | None = None
        self._executor: Executor | None = None
        self._prepared: Prepared | None = None
        self._ran: Ran | None = None
        self._mixed_ran: list[MixedRecord] | None = None  # the mixed checks' records, once the fleet mixed
        self._steering: Steering | None = None  # while run() runs: pause, resume, abort, promote
        self._migration: MixedRecord | None = None  # the --migrate command's record, once it ran
        self._migration_end: float | None = None
        self._contract: MixedRecord | None = None  # the --contract command's record, once it ran
        self._contract_end: float | None = None
        self._rollbacks: list[RollbackRehearsal] = []  # the rollback rehearsals, once they ran
        self._hook_runs: list[MixedRecord] = []  # each --hook run's record, in the order they ran
        self._rolling_back = False  # the rollback's steps run no post-batch hook
        self._database_url = ""  # DATABASE_URL as the host reaches it (hooks), once run() found it
        self._canary: CanaryRun | None = None  # --strategy canary: weights, holds, analyses

    @property
    def balancer(self) -> LoadBalancer:
        if self._balancer is None:
            raise RuntimeError("prepare() first")
        return self._balancer

    @property
    def steering(self) -> Steering | None:
        """The steering of the run under way (None before ``run``)."""
        return self._steering

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("prepare() first")
        return self._executor

    @property
    def prepared(self) -> Prepared:
        if self._prepared is None:
            raise RuntimeError("prepare() first")
        return self._prepared

    # -- repair, prepare ----------------------------------------------------------------------
    async def repair(self) -> None:
        """Bring the fleet to where a plan can be made from it, saying each change: create a removed
        load balancer again or start a stopped one, build the images, start again the session store,
        database and app servers an engine restart stopped (each server waited for until ready),
        re-attach a set the load balancer lost (from Docker's labels, the rest from the fleet's
        record), take stale upstreams out. A bad batch, target or mode is refused before any of it.

        Raises NotFoundError (no fleet), UsageError (a bad batch, target or mode, nothing to roll
        back), BalancerError (a restarted load balancer that does not answer).
        """
        await self._recreate_balancer()
        lb, listed = await self._read_fleet()
        state = await self._start_balancer(lb)
        await self._check_database(state)
        names = await self._fleet_images(build=False)
        size, target = self._checked(state, listed, names)  # before anything is built
        if not names.toy:  # both ways of the roll run from local images, never pulled from a registry
            source = versions.source_version([i.version for i in listed], target, (state.rollout or {}).get("from"))
            await self.runtime.resolve_versions(self.settings.project,
                                                {v: names.app[v] for v in (target, source) if v in names.app}, {})
        image_set = await self._fleet_images(build=True)
        self._executor = self._new_executor(image_set)
        listed = await self._start_what_stopped()
        if self.balancer.lost:
            await self.balancer.repair_lost_set(listed, size)
            self.progress.line("the load balancer had lost its attached set (restarted?): "
                               f"re-attached {len(self.balancer.state.upstreams)} servers from Docker's labels")
        for name in await self._executor.reconcile(listed):
            self.progress.line(f"took {name} out of the load balancer: its container is gone or not running")

    async def _start_what_stopped(self) -> list[Instance]:
        """Start again what an engine restart stopped (the session store, the database, the app servers,
        each server waited for until ready), saying each; the app containers as they are now."""
        for line in (await self.executor.start_what_stopped()).lines():
            self.progress.line(line)
        return await self.runtime.instances(self.settings.project)

    async def prepare(self) -> Prepared:
        """Read the fleet and the load balancer, pick the target, plan; changes nothing (``--dry-run``
        prints this). After ``repair`` it plans the repaired fleet with the images built there.

        Raises NotFoundError (no fleet), UsageError (a bad batch, target or mode, nothing to roll back).
        """
        _, listed = await self._read_fleet()
        state = await self.balancer.load()
        if self._executor is None:
            self._executor = self._new_executor(await self._fleet_images(build=False))
        size, target = self._checked(state, listed, self._executor.images)
        instances, servers = await self._executor.fleet(listed)
        plan_settings = planner.PlanSettings(size=size, to_version=target, strategy=self.settings.strategy,
                                             batch=self.settings.batch, mode=self.settings.mode,
                                             seed=self.settings.seed, detach_lag_s=self.settings.detach_lag_s,
                                             weights=self.settings.canary_weights)
        planned = planner.plan(servers, plan_settings)
        if not strategies.of(self.settings.strategy).weighted:  # a canary holds each weight where the plan says
            planned = planner.merge_reloads(planned)
        steps, pause_at = planner.pause_point(planned, self.settings.pause_after_batch)
        if self.settings.pause_at_mixed:
            try:
                steps, pause_at = planner.mixed_pause_point(servers, plan_settings, steps)
            except planner.PlanError:  # a fleet with stale upstreams (not repaired): no planned pause
                pause_at = None
        try:
            sim: planner.Simulation | None = planner.simulate(servers, plan_settings, steps)
        except planner.PlanError:  # a fleet with stale upstreams (not repaired): no figures
            sim = None
        # the fleet's own environment (from `up --env`) always; --set-env only for the new version
        env = dict(state.app_env) if self.kind == "rollback" else {
            **state.app_env, **versions.target_env(self.settings.set_env, self.settings.v2_mode)}
        source = versions.source_version([i.version for i in listed], target, (state.rollout or {}).get("from"))
        self._prepared = Prepared(kind=self.kind, source=source, target=target,
                                  strategy=self.settings.strategy, size=size, env=env,
                                  instances=instances, steps=steps, batch=batch_of(self.settings, size),
                                  mode=self.settings.mode, versions=tuple(self._executor.images.app),
                                  peak=sim.peak_containers if sim else None, floor=sim.min_serving if sim else None,
                                  batches=sim.batches if sim else None, seed=self.settings.seed,
                                  mixed_checks=self.settings.mixed_checks, detach_lag_s=self.settings.detach_lag_s,
                                  pause_at=pause_at, pause_at_mixed=self.settings.pause_at_mixed,
                                  migrate=self.settings.migrate if self.kind == "roll" else "",
                                  migrate_at=self.settings.migrate_at,
                                  contract=self.settings.contract if self.kind == "roll" else "",
                                  rollback_rehearsal_s=self.settings.rollback_rehearsal_s
                                  if self.kind == "roll" and (self.settings.migrate or self.settings.contract)
                                  else 0.0,
                                  hooks=hooks.parse_all(self.settings.hooks) if self.kind == "roll" else (),
                                  note=self._canary_note(state, size))
        return self._prepared

    async def _check_database(self, state: LbState) -> None:
        """A fleet started with ``--service postgres`` whose server is gone, stopped or does not
        answer within a few seconds: DatabaseDown, before anything changes (new servers could not
        become ready, and the rollback that followed would fail too)."""
        if not state.app_env.get(access.DATABASE_URL_ENV):
            return
        project, said = self.settings.project, [""]

        async def ready() -> bool | None:
            try:
                ok, said[0] = await self.runtime.postgres_ready(project)
            except NotFoundError:
                ok, said[0] = False, "its container is gone"
            return True if ok else None

        if await poll(ready, timeout=5.0, interval=0.5) is None:
            raise DatabaseDown(f"the fleet's PostgreSQL server is down ({said[0] or 'no answer'}): start it "
                               f"again (docker start {project}-postgres) or {self._hint('down')} and `up` again; "
                               "nothing was changed")

    def _canary_note(self, state: LbState, size: int) -> str:
        """A weighted strategy's line at plan time: its servers per weight and its holds; in reload mode,
        what it cannot do (weights: the server count)."""
        if self.kind != "roll" or not strategies.of(self.settings.strategy).weighted:
            return ""
        if state.lb_apply == "dynamic":
            return canary.plan_note(size, self.settings.canary_weights, self.settings.step_pause)
        return canary.reload_note(size, self.settings.canary_weights)

    async def _read_fleet(self) -> tuple[LbHandle, list[Instance]]:
        """The load balancer's container and the app containers; the balancer is reached once."""
        project = self.settings.project
        lb, listed = await self.runtime.require_fleet(project)
        if self._balancer is None:
            port = await self.runtime.lb_port(project)
            if port is None:
                raise NotFoundError(f"project {project!r}: the load balancer has no port label")
            self._balancer = self.deps.balancer(self.runtime, project, port)
        if lb.state != "running":  # refuse a bad batch before starting it again
            check_batch(self.settings.strategy, self.settings.batch, len({i.slot for i in listed}))
        return lb, listed

    def _checked(self, state: LbState, listed: list[Instance], image_set: ImageSet) -> tuple[int, str]:
        """The fleet's size and the target version, once the batch, the target and the mode hold."""
        size = state.size or len({i.slot for i in listed})
        check_batch(self.settings.strategy, self.settings.batch, size)
        if self.settings.sticky_canary and state.lb_apply != "dynamic":
            raise UsageError("sticky_canary: needs the dynamic load balancer, which picks the version per user; "
                             "this fleet runs --lb-apply reload (`up --lb-apply dynamic`)")
        target = self._target(state, image_set.app)
        if not image_set.toy and self.settings.mode == "in-place":
            raise UsageError("mode: in-place swaps the toy app's code; your own images roll with --mode replace")
        return size, target

    def _new_executor(self, image_set: ImageSet) -> Executor:
        executor = Executor(self.runtime, self.balancer, self.settings, image_set,
                            on_event=self.progress.event, events=self.events,
                            probe=self.deps.probe, timing=self.deps.timing)
        executor.before_step = getattr(self.progress, "before_step", None)
        return executor

    async def _recreate_balancer(self) -> None:
        """A fleet whose load balancer container was removed gets it again, from its state volume."""
        project = self.settings.project
        if await self.runtime.lb(project) is not None or not await self.runtime.has_project(project):
            return
        image = (await self.deps.images(self.runtime)).lb
        if await self.runtime.recreate_lb(project, image) is not None:
            self.progress.line("the load balancer's container was gone: created it again from the fleet's record")

    async def _start_balancer(self, lb: LbHandle) -> LbState:
        """The load balancer's live state; a stopped LB container is started again first."""
        if lb.state == "running":
            return await self.balancer.load()
        self.progress.line(f"the load balancer was {lb.state}: starting it again")
        await self.runtime.start_again(lb)
        last: list[BalancerError] = []

        async def answers() -> LbState | None:
            try:
                return await self.balancer.load()
            except BalancerError as exc:
                last[:] = [exc]
                return None

        state = await poll(answers, timeout=10.0, interval=0.2)  # NGINX takes a moment to listen
        if state is None:
            raise BalancerError(f"the restarted load balancer does not answer: {last[0] if last else '?'}")
        return state

    async def _fleet_images(self, *, build: bool = True) -> ImageSet:
        """The images of this fleet: its versions map from the load balancer's label (the toy app's
        for a fleet started without one); without ``build``, only their names (nothing is built)."""
        image_set = await (self.deps.images(self.runtime) if build else asyncio.to_thread(current_image_set))
        lb = await self.runtime.lb(self.settings.project)
        text = (lb.labels if lb is not None else {}).get(L.LABEL_VERSIONS)
        found, spec = versions.from_label(text), versions.spec_from_label(text)
        if found is None or found[1]:
            return dataclasses.replace(image_set, spec=spec)
        return dataclasses.replace(image_set, app=found[0], toy=False, spec=spec)

    def _target(self, state: LbState, fleet_versions: Mapping[str, str]) -> str:
        if self.kind != "rollback":
            return versions.pick(fleet_versions, self.to_version or self.settings.to_version,
                                 default_last=True, what="to")
        last = state.rollout or {}
        if last.get("kind") != "roll" or not last.get("from"):
            raise UsageError("rollback: nothing to roll back (no roll recorded for this fleet)")
        return str(last["from"])

    # -- run ----------------------------------------------------------------------------------
    async def run(self) -> Ran:
        """Warmup, execute the plan (rolling back on failure), cooldown; Ctrl-C handled here.

        Raises UsageError, before anything changes, when the --ws-users' path does not upgrade to
        a WebSocket or the --sse-users' path answers no event stream."""
        await self._check_long_lived_paths()
        started = time.time()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"rolling-sandbox-{self.settings.project}-"))
        if self.report_dir is not None:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            clear_report_dir(self.report_dir)  # no earlier run's report beside this run's rows
        self._seed_progress()
        if self.settings.mixed_checks or hooks.of(self.prepared.hooks, "post-batch"):
            self.executor.after_step = self._after_step
        interrupts = Interrupts(self.executor.stop_requested, self.progress.line)
        steering = self._steering = self._new_steering()
        self._canary = self._new_canary(steering)
        watch = asyncio.create_task(self._watch_long_lived())
        try:
            async with ControlServer(self.settings.project, steering) as control:
                if control.problem:
                    self.progress.line(f"`sandbox pause` and the like cannot reach this rollout: {control.problem}")
                with self.progress, interrupts.installed(self.install_sigint):
                    if self.settings.load:
                        await self._follow_client_timeout()
                        await self.load.warmup(self.balancer.url, self._rows_path(),
                                               until=self.executor.stop_requested,
                                               paths=tuple(self.settings.paths) if self.settings.paths
                                               or self.executor.images.toy else ("/",))
                    await self._find_database_url()
                    bad = hooks.failed(await self._run_hooks("pre-rollout"))
                    if bad is not None:  # nothing changed yet: stop here, one line
                        raise HookError(hooks.failure_line(bad, "the fleet was not changed"))
                    if self._migrates("before"):
                        self._migration = await self._migrate(batch=0)
                        if self._migration.status != "passed":  # nothing changed yet: stop here, one line
                            raise MigrationError(migrate.failure_line(self._migration))
                    t_start = time.time()
                    outcome, message = await self._execute(interrupts)
                    steering.ended()
                    t_end = time.time()
                    if self._migrates("after"):
                        self._migration = (await self._migrate(batch=self.prepared.batches or 0)
                                           if outcome == "completed" else
                                           migrate.not_run(self.settings.migrate,
                                                           f"not run: the rollout ended ({outcome}) first"))
                    await self._after_rollout(outcome)
                    if outcome == "completed":
                        await self._run_hooks("post-rollout")
                    else:
                        self._hook_runs += hooks.not_run("post-rollout", hooks.of(self.prepared.hooks, "post-rollout"),
                                                         f"not run: the rollout ended ({outcome})")
                    await self.load.cooldown()
        finally:
            watch.cancel()
            steering.ended()
            await self.load.stop()
        checks = mixed.finish(self.settings.mixed_checks, self._mixed_ran, outcome)
        if not self._rolling_back:
            self._hook_runs += hooks.not_run("on-rollback", hooks.of(self.prepared.hooks, "on-rollback"),
                                             "not run: no rollback started")
        steps = tuple(r for r in (self._migration, self._contract) if r is not None)
        self._ran = Ran(outcome=outcome, message=message, started=started, t_start=t_start, t_end=t_end,
                        peak=self.executor.peak, load=self.load.ran, load_alive=self.load.alive,
                        mixed_checks=(*checks, *steps, *self._hook_runs), migration_end=self._migration_end,
                        contract_end=self._contract_end, rollback_rehearsals=tuple(self._rollbacks),
                        canary=tuple(self._canary.records) if self._canary else ())
        return self._ran

    async def _check_long_lived_paths(self) -> None:
        s = self.settings
        if not s.load or not (s.ws_users or s.sse_users):
            return
        problem = await self.deps.long_lived_check(self.balancer.url, ws_path=s.ws_path if s.ws_users else None,
                                                   sse_path=s.sse_path if s.sse_users else None)
        if problem:
            raise UsageError(problem)

    async def _watch_long_lived(self) -> None:
        """Dynamic mode with long-lived users: the LB's open long-lived connections per version,
        every ``tick_s``, to the live views (the dashboard's "open ws/sse" column)."""
        s = self.settings
        if not (s.load and (s.ws_users or s.sse_users) and self.balancer.dynamic):
            return
        while True:
            try:
                counts = await self.balancer.long_lived()
            except BalancerError:
                counts = None  # a live view can miss a tick; the rollout never waits on this
            if counts is not None:
                self.progress.long_lived(open_by_version(counts, self.prepared.instances, self.events))
            await asyncio.sleep(max(self.deps.tick_s, 0.2))

    def _new_steering(self) -> Steering:
        """The steering of this run: the plan's pause, the pause timeout, events and lines for each
        command (`sandbox pause` ...); the executor holds at its gate between steps."""
        def emit(phase: str, detail: dict[str, object]) -> None:
            self.executor.emit(phase, None, detail=detail)

        steering = Steering(pause_at=self.prepared.pause_at, pause_after_batch=self.settings.pause_after_batch,
                            planned=PLAN_MIXED if self.prepared.pause_at_mixed else PLAN,
                            pause_timeout_s=self.settings.pause_timeout_s,
                            on_pause_timeout=self.settings.on_pause_timeout, can_roll_back=self.kind == "roll",
                            stop=self.executor.stop_requested, emit=emit, say=self.progress.line)
        self.executor.gate = steering.gate
        if self.settings.pause_after_batch and self.prepared.pause_at is None:
            n = self.settings.pause_after_batch
            self.progress.line(f"--pause-after-batch {n}: the plan has {self.prepared.batches or 'no'} batch(es), "
                               f"none after batch {n}: no pause")
        if self.settings.pause_at_mixed and self.prepared.pause_at is None:
            self.progress.line("--pause-at-mixed: this plan never has both versions attached before its last "
                               "step: no pause")
        return steering
    def _new_canary(self, steering: Steering) -> CanaryRun | None:
        """A weighted strategy's weights, holds and analyses, hooked to the executor (a roll only)."""
        p = self.prepared
        if self.kind != "roll" or not strategies.of(p.strategy).weighted:
            return None
        if p.note:
            self.progress.line(p.note)

        def emit(phase: str, batch: int, detail: dict[str, Any]) -> None:
            self.executor.emit(phase, None, batch=batch, detail=detail)

        run = CanaryRun(self.settings, self.balancer, steps=p.steps, size=p.size, old=p.source, new=p.target,
                        steering=steering, emit=emit, say=self.progress.line, mixed=lambda: self._mixed_ran or ())
        if self.settings.step_pause_s is None:
            steering.promote_note = "the canary goes on to its next step"
        self.load.on_rows.append(run.add_rows)
        gate, after = self.executor.gate, self.executor.after_step

        async def canary_gate(step: planner.Step, index: int) -> None:
            if steering.state in ("running", "paused"):  # a pause stretches a canary's hold
                await run.gate(step, index)
            if gate is not None:
                await gate(step, index)

        async def canary_after(step: planner.Step) -> None:
            if after is not None:
                await after(step)
            await run.after_step(step)

        self.executor.gate, self.executor.after_step = canary_gate, canary_after
        return run

    def _migrates(self, when: str) -> bool:
        return bool(self.settings.migrate) and self.kind == "roll" and self.settings.migrate_at == when

    async def _migrate(self, *, batch: int, name: str = migrate.NAME) -> MixedRecord:
        """Run ``--migrate`` (or, ``name`` contract, ``--contract``) once in a one-off container of the
        target image with the new servers' environment; its record (the rollout goes on or stops as
        the caller decides)."""
        p, images = self.prepared, self.executor.images
        command = self.settings.contract if name == migrate.CONTRACT else self.settings.migrate
        self.progress.line(f"{name} ({'before the first batch' if batch == 0 else 'after the last batch'}): "
                           f"{command} in a one-off {p.target} container")

        async def run_once(cmd: str, timeout_s: float) -> tuple[int, str]:
            return await self.runtime.run_once(self.settings.project, images.app[p.target], cmd, p.env,
                                               timeout_s, toy=images.toy)

        record = await migrate.run(command, run_once, timeout_s=self.settings.migrate_timeout_s, batch=batch,
                                   name=name)
        if name == migrate.CONTRACT:
            self._contract_end = time.time()
        else:
            self._migration_end = time.time()
        self.executor.emit(name, None, batch=batch, detail={
            "status": record.status, "exit_code": record.exit_code, "duration_s": record.duration_s})
        self.progress.line(f"{name} {record.status} (exit {record.exit_code}, {record.duration_s:g} s)")
        return record

    async def _after_rollout(self, outcome: str) -> None:
        """After a roll that changes the schema: rehearse a rollback against it, then run the contract
        step (``--contract``, only once every server is new) and rehearse the rollback again."""
        s, p = self.settings, self.prepared
        if self.kind != "roll" or not (s.migrate or s.contract):
            return
        if outcome != "completed":
            if s.contract:
                self._contract = migrate.not_run(s.contract, f"not run: the rollout ended ({outcome}) first",
                                                 name=migrate.CONTRACT)
            return
        await self._rehearse_rollback("rollout")
        if s.contract:
            self._contract = await self._migrate(batch=p.batches or 0, name=migrate.CONTRACT)
            await self._rehearse_rollback("contract")

    async def _rehearse_rollback(self, after: str) -> None:
        """Serve the old version's image against the database as it is now, off the load balancer,
        under the toy's request mix (:mod:`sandbox.rollout.rollback_safety`); record whether it worked."""
        s, p, images = self.settings, self.prepared, self.executor.images
        if not s.rollback_rehearsal_s:
            return
        if not images.toy:
            self._rollbacks.append(rollback_safety.not_run(
                after, p.source, "your own app: the rehearsal sends the toy app's requests"))
            return
        self.progress.line(f"rollback rehearsal after the {after}: {p.source} served against the schema for "
                           f"{s.rollback_rehearsal_s:g} s, off the load balancer")
        env = dict(self.balancer.state.app_env)

        async def run_once(image: str, cmd: str, env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
            return await self.runtime.run_once(s.project, image, cmd, env, timeout_s, toy=True)

        record = await rollback_safety.rehearse(after, p.source, images.app[p.source], env, run_once,
                                                seconds=s.rollback_rehearsal_s)
        self._rollbacks.append(record)
        self.executor.emit("rollback-rehearsal", None, detail=record.to_json())
        self.progress.line(f"rollback rehearsal {record.line()}")

    async def _find_database_url(self) -> None:
        """With hooks and a fleet database: its URL as the host reaches it (127.0.0.1 and the port its
        server publishes), said when the server publishes none (started before servers did)."""
        app_url = self.balancer.state.app_env.get(access.DATABASE_URL_ENV, "")
        if not (self.prepared.hooks and app_url):
            return
        self._database_url = hooks.host_database_url(app_url, await self.runtime.postgres_host_port(
            self.settings.project))
        if not self._database_url:
            self.progress.line("hooks get DATABASE_URL empty: this fleet's PostgreSQL publishes no port on "
                               f"127.0.0.1 (started by an older sandbox); {self._hint('down')} and `up` again")

    async def _run_hooks(self, event: hooks.Event, batch: int | None = None) -> list[MixedRecord]:
        """Run ``event``'s hooks on the host (none: nothing), record and show each run; their records.
        A failure is said here for post-rollout and on-rollback; pre-rollout's and post-batch's
        failures stop the rollout, whose own line names them."""
        p = self.prepared
        commands = hooks.of(p.hooks, event)
        if not commands:
            return []
        self.progress.line(f"{event} hook(s)" + (f" after batch {batch}" if batch is not None else "")
                           + f": {'; '.join(commands)}")
        env = hooks.environment(url=self.balancer.url, project=self.settings.project, source=p.source,
                                target=p.target, event=event, batch=batch, database_url=self._database_url)
        records = await hooks.run(event, commands, env=env, timeout_s=self.settings.hook_timeout_s, batch=batch)
        self._hook_runs += records
        for record in records:
            self.executor.emit("hook", None, batch=batch, detail={
                "name": record.name, "event": event, "status": record.status, "exit_code": record.exit_code,
                "duration_s": record.duration_s})
            if record.status in ("failed", "timed_out") and event in ("post-rollout", "on-rollback"):
                self.progress.line(hooks.failure_line(record, "the verdict fails" if event == "post-rollout"
                                                      else "the rollback goes on"))
        return records

    async def _after_step(self, step: planner.Step) -> None:
        """After each step: the mixed checks (the first time the fleet is mixed), then, once a batch's
        last step is done, its post-batch hooks; a failing one raises HookError, which rolls back as
        a failed batch does. The rollback's own steps run neither."""
        if self.settings.mixed_checks:
            await self._mixed_after_step(step)
        if self._rolling_back or not hooks.of(self.prepared.hooks, "post-batch"):
            return
        last = next((s for s in reversed(self.prepared.steps) if s.batch_no == step.batch_no), None)
        if step != last:  # not the batch's last step (nor a wind-down's stand-in for it: Ctrl-C ends the rollout)
            return
        bad = hooks.failed(await self._run_hooks("post-batch", batch=step.batch_no))
        if bad is not None:
            raise HookError(hooks.failure_line(bad, "rolling back as a failed batch does"))

    async def _mixed_after_step(self, step: planner.Step) -> None:
        """The first time the attached set holds two versions, run every mixed check while the
        rollout waits (so the fleet stays mixed); a failing one is recorded, the rollout goes on."""
        attached = Counter(u.version for u in self.balancer.state.upstreams)
        if self._mixed_ran is not None or not mixed.is_mixed(attached):
            return
        self._mixed_ran = []
        shown = ", ".join(f"{n} on {v}" for v, n in sorted(attached.items()))
        self.progress.line(f"both versions attached ({shown}): running {len(self.settings.mixed_checks)} "
                           f"mixed check(s) against {self.balancer.url}; the rollout waits")
        env = mixed.environment(url=self.balancer.url, project=self.settings.project, attached=attached,
                                source=self.prepared.source, target=self.prepared.target)
        for index, command in enumerate(self.settings.mixed_checks, 1):
            record = dataclasses.replace(
                await mixed.run_check(command, index=index, env=env, timeout_s=self.settings.mixed_check_timeout_s),
                attached=dict(attached), batch=step.batch_no)
            self._mixed_ran.append(record)
            self.executor.emit("mixed-check", None, batch=step.batch_no, detail={
                "name": record.name, "status": record.status, "exit_code": record.exit_code,
                "duration_s": record.duration_s})
            hint = mixed.last_line(record.stderr_tail or record.stdout_tail)
            if record.status != "passed":
                self.progress.line(f"{record.name} FAILED: {command}" + (f": {hint}" if hint else ""))

    def _seed_progress(self) -> None:
        if hasattr(self.progress, "seed"):
            p = self.prepared
            self.progress.planned(strategy=p.strategy, source=p.source, target=p.target, size=p.size,
                                  versions=p.versions, floor=p.floor, peak=p.peak, batches=p.batches)
            self.progress.fleet_mode(lb_apply=self.balancer.state.lb_apply,
                                     ready_successes=self.settings.ready_successes)
            attached = {u.name for u in self.balancer.state.upstreams}
            for inst in self.prepared.instances:
                self.progress.seed(inst.name, inst.slot, inst.version, inst.name in attached, inst.node)

    def _rows_path(self) -> Path:
        return (self.report_dir or self._workdir or Path(".")) / "requests.jsonl"

    async def _follow_client_timeout(self) -> None:
        """Before any request: NGINX waits for an answer as long as the load generator does."""
        wait = lb_read_timeout_s(self.settings.client_timeout_s)
        if self.balancer.state.read_timeout_s != wait:
            self.progress.line(f"the load balancer now waits {wait} s for an answer (--client-timeout "
                               f"{self.settings.client_timeout_s:g})")
            await self.balancer.apply(list(self.balancer.state.upstreams), read_timeout_s=wait)

    async def _execute(self, interrupts: Interrupts) -> tuple[str, str]:
        """The rollout itself, between two load balancer records of it; (outcome, message)."""
        p = self.prepared
        self.load.monitor.mark()
        self.executor.emit("rollout-start", None, version=p.target,
                           detail={"from": p.source, "to": p.target, "instances": len(p.instances),
                                   "strategy": p.strategy, "kind": p.kind})
        await self._record({"kind": p.kind, "from": p.source, "to": p.target, "strategy": p.strategy,
                            "status": "running"})
        try:
            with interrupts.cutting():
                outcome, message = await self._execute_or_roll_back()
        except EngineUnreachable as exc:  # every later call fails too: no record, no rollback, one line
            again = f"roll --to {p.target}" if p.kind == "roll" else "rollback"
            detail = str(exc).removeprefix("the Docker engine stopped answering: ")
            raise EngineUnreachable(
                f"the Docker engine stopped answering mid-{p.kind} (stopped or restarted: that stops the load "
                f"balancer and every server): {detail}. Once it answers again, {self._hint(again)} starts them "
                f"again and resumes; {self._hint('status')} shows what is stopped") from exc
        except (Interrupted, asyncio.CancelledError):
            interrupts.uncancel()
            self.executor.emit("interrupted", None)
            outcome, message = "interrupted", (
                "interrupted: every server is attached and healthy and the load balancer is consistent. "
                f"{self._hint(f'roll --to {p.target}')} resumes, {self._hint('rollback')} reverts.")
        self.executor.emit("rollout-end", None, detail={"outcome": outcome})
        await self._record({**rollout_record(p.kind, p.source, p.target, outcome), "strategy": p.strategy})
        return outcome, message

    async def _record(self, rollout: dict[str, Any]) -> None:
        """Write what `rollback` reads next into the load balancer's state, attached set unchanged."""
        await self.balancer.apply(list(self.balancer.state.upstreams), rollout=rollout)

    async def _execute_or_roll_back(self) -> tuple[str, str]:
        p = self.prepared
        try:
            await self.executor.execute(p.steps, p.target, env=p.env, instances=p.instances, from_version=p.source,
                                        health=self._health if p.kind == "roll" else None,
                                        deadline_s=self.settings.progress_deadline_s)
            if self._steering is not None and self._steering.state == "aborting":  # asked during the last step
                raise Aborted(f"aborted by {self._steering.aborted_by}")
            await self._replace_the_dead()
            if self._canary is not None:
                await self._canary.finish()
        except (RolloutError, BalancerError) as exc:
            self.executor.emit("failed", None, detail={"reason": str(exc)})
            self.progress.line(f"rollout failed: {exc}")
            if (self.settings.auto_rollback or isinstance(exc, Aborted)) and p.kind == "roll":
                if self._steering is not None:
                    self._steering.rolling_back()
                if self._canary is not None:
                    await self._canary.to_old()
                try:
                    return await self._roll_back(exc)
                finally:
                    if self._canary is not None:
                        await self._canary.clear()
            return "failed", (f"rollout failed: {exc}. The fleet is consistent; {self._hint('rollback')} reverts "
                              f"it, {self._hint(f'roll --to {p.target}')} tries again.")
        return "completed", ""

    def _hint(self, command: str) -> str:
        return hint(command, self.settings.project)

    async def _replace_the_dead(self) -> None:
        """Servers that died while the rollout ran (a crash, a Swarm node lost) leave their slots
        empty once it ends: plan again from the live fleet to the target, as a resumed rollout
        would (a fresh server per empty slot, one batch at a time, on the nodes that remain), and
        run it, between ``heal-start`` and ``heal-end`` events naming the slots. Nothing when none died."""
        p = self.prepared
        if not any(e.get("phase") == "died" for e in self.executor.events):
            return
        listed = await self.runtime.instances(self.settings.project)
        await self.executor.reconcile(listed)
        listed, servers = await self.executor.fleet(listed)
        weighted = strategies.of(self.settings.strategy).weighted  # a canary's weights are spent: one at a time
        steps = planner.merge_reloads(planner.plan(servers, planner.PlanSettings(
            size=p.size, to_version=p.target, strategy="one-at-a-time" if weighted else self.settings.strategy,
            batch=min(self.settings.batch, max(1, p.size - 1)), mode=self.settings.mode, seed=self.settings.seed,
            detach_lag_s=p.detach_lag_s)))
        if not steps:
            return
        slots = sorted({ref.slot for step in steps for ref in step.targets if step.action == "start"})
        self.executor.emit("heal-start", None, version=p.target, detail={"slots": slots})
        self.progress.line(f"replacing the servers that died: slot(s) {', '.join(map(str, slots))}")
        await self.executor.execute(steps, p.target, env=p.env, instances=listed, from_version=p.source,
                                    deadline_s=self.settings.progress_deadline_s)
        self.executor.emit("heal-end", None, version=p.target)

    def _health(self) -> str | None:
        total, failed = self.load.monitor.since_mark()
        return error_ratio_problem(total, failed, self.settings.max_error_ratio)

    async def _roll_back(self, cause: BaseException) -> tuple[str, str]:
        """Back to the source version with the same care; (outcome, message)."""
        source, executor = self.prepared.source, self.executor
        self._rolling_back = True
        executor.emit("rollback-start", None, version=source)
        self.progress.line(f"rolling back to {source}")
        await self._run_hooks("on-rollback")  # reported; the rollback goes on whatever it says
        await executor.restore_lb()  # a load balancer that exited (the cause, maybe) is started again first,
        listed = await self.runtime.instances(self.settings.project)  # and what an engine restart stopped with it
        await executor.reconcile(listed)
        listed, servers = await executor.fleet(listed)
        strategy = strategies.of(self.settings.strategy).rollback_strategy
        back = planner.merge_reloads(planner.plan(servers, planner.PlanSettings(
            size=self.prepared.size, to_version=source, strategy=strategy,
            batch=min(self.settings.batch, max(1, self.prepared.size - 1)), mode=self.settings.mode,
            seed=self.settings.seed, detach_lag_s=self.prepared.detach_lag_s)))
        try:
            await executor.execute(back, source, env=dict(self.balancer.state.app_env),
                                   from_version=self.prepared.target, instances=listed)
        except EngineUnreachable:
            raise
        except SandboxError as exc:
            executor.emit("failed", None, detail={"reason": f"rollback: {exc}"})
            return "failed", (f"rollout failed ({cause}) and so did the rollback ({exc}); "
                              f"{self._hint('status')} shows the fleet")
        executor.emit("rollback-end", None, version=source)
        return "rolled_back", f"rolled back to {source}: {cause}"

    # -- collect ------------------------------------------------------------------------------
    async def collect(self) -> Collected:
        """The client rows, the NGINX log rows of this run and the events; cleans up the work dir."""
        rows = self.load.rows()
        long_lived_rows = self.load.long_lived_rows()  # both before the work dir that holds them goes
        if not self.executor.images.toy:  # your app's versions are your names: read from NGINX's log
            rows = [{**r, "version": None} for r in rows]  # (upstream address -> container -> version)
        nginx_rows: list[LbRow] = []
        read = True
        if self.load.ran:
            try:
                t_load = self.events[0]["t"] if self.events else (self._ran.started if self._ran else 0.0)
                nginx_rows = [r for r in await self.balancer.access_log() if r["time"] >= t_load - 1]
            except SandboxError as exc:
                read = False
                self.progress.line(f"could not read the load balancer's log ({exc}): unrecorded requests unknown")
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return Collected(rows=rows, nginx_rows=nginx_rows, events=list(self.events),
                         history=fleet_history(self.prepared.instances, self.events),
                         lb=self.balancer.state, load_end=self.load.end(), lb_log_read=read,
                         long_lived_rows=long_lived_rows)


async def rehearse(settings: Settings, *, runtime: Engine, kind: Kind = "roll", to_version: str | None = None,
                   progress: Progress | None = None, report_dir: Path | None = None, install_sigint: bool = True,
                   deps: Deps | None = None) -> RolloutResult:
    """Prepare, run, collect, report: one roll (or ``kind="rollback"``) of a fleet under live traffic.

    Raises NotFoundError (no fleet), UsageError (nothing to roll back); a failed
    rollout is reported in the result, not raised.
    """
    rehearsal = Rehearsal(settings, runtime=runtime, kind=kind, to_version=to_version, progress=progress,
                          report_dir=report_dir, install_sigint=install_sigint, deps=deps)
    await rehearsal.repair()
    prepared = await rehearsal.prepare()
    if not prepared.steps:
        unchanged = unchanged_report(settings, prepared)
        out = unchanged.to_json()
        problem = _write_files(unchanged, report_dir, out)
        return RolloutResult(report=out, exit_code=0, message=f"already on {prepared.target}: nothing to do",
                             rehearsed=False, write_error=problem)
    ran = await rehearsal.run()

    def later(signum: int) -> None:  # the rollout has ended: a signal now waits for the report
        rehearsal.progress.line(f"{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}: writing the report first")

    with _handling(install_sigint, later):
        report = rollout_report(settings, prepared, ran, await rehearsal.collect())
        out = report.to_json()
        problem = _write_files(report, report_dir, out)
    return RolloutResult(report=out, exit_code=exit_code(report), message=ran.message, write_error=problem)


def _write_files(report: Report, report_dir: Path | None, out: dict[str, Any]) -> str | None:
    """Write the report's files into ``report_dir`` (their paths go in ``out["files"]``); the error
    in one line when they could not be written (a full disk), so the summary still prints."""
    if report_dir is None:
        return None
    try:
        out["files"] = {k: str(v) for k, v in write_report_dir(report, report_dir).items()}
    except OSError as exc:
        return f"could not write the report files to {report_dir}: {exc.strerror or exc}"
    return None


# -- pure: records, report, exit code -------------------------------------------------------------
def open_by_version(counts: Mapping[str, int], instances: Sequence[Instance], events: Sequence[Event]
                    ) -> dict[str, int]:
    """The LB's open connections per server address, summed per version: the address's version
    from the servers at the start and the later events that name one (``?``: an unknown address)."""
    version_at = {i.address: i.version for i in instances if i.address}
    for e in events:
        if e.get("address") and e.get("version") and e.get("phase") in ("start", "swap"):
            version_at[str(e["address"])] = str(e["version"])
    out: dict[str, int] = {}
    for address, n in counts.items():
        if n > 0:
            version = version_at.get(address, "?")
            out[version] = out.get(version, 0) + n
    return out


def error_ratio_problem(total: int, failed: int, max_ratio: float) -> str | None:
    """Why the rollout must stop, when enough requests were seen and too many failed; else None."""
    if total >= MIN_SAMPLE_FOR_ERROR_RATIO and failed / total > max_ratio:
        return (f"error ratio {failed / total:.1%} ({failed} of {total} requests) is above "
                f"max_error_ratio {max_ratio:.1%}")
    return None


def rollout_record(kind: str, source: str, target: str, outcome: str) -> dict[str, Any]:
    """What the load balancer's state says about the rollout that just ended (what `rollback`
    reads next): an automatic rollback is recorded as a completed rollback."""
    if outcome == "rolled_back":
        return {"kind": "rollback", "from": target, "to": source, "status": "completed"}
    return {"kind": kind, "from": source, "to": target, "status": outcome}


def batch_of(settings: Settings, size: int) -> int:
    """The servers one batch takes, as the report gives it."""
    return strategies.of(settings.strategy).report_batch(settings.batch, size)


NOTHING_REHEARSED = "nothing was rehearsed"


def unchanged_report(settings: Settings, prepared: Prepared) -> Report:
    """The report of a fleet already where it should be: nothing moved (from and to are the
    target), ``rehearsed`` is False and every check is NOT_RUN: nothing was rehearsed."""
    run = Rollout(project=settings.project, strategy=prepared.strategy, size=prepared.size, mode=settings.mode,
                  from_version=prepared.target, to_version=prepared.target, outcome="completed", duration_s=0.0,
                  peak_instances=len(prepared.instances), load=False, seed=prepared.seed,
                  detach_lag_s=prepared.detach_lag_s,
                  mixed_checks=mixed.not_run(settings.mixed_checks,
                                             "not run: nothing to roll, the fleet was already there"))
    report = build_report(run=run, figures=measure([], []), steps=[], limits=Limits.from_settings(settings))
    return dataclasses.replace(report, verdict=not_run(report.verdict, NOTHING_REHEARSED),
                               extra={**report.extra, "rehearsed": False})


def unchanged_text(report: Mapping[str, Any]) -> str:
    """The summary of a run that had nothing to do, for people: it says that nothing was judged."""
    return (f"rolling-sandbox: {report.get('strategy')}, {report.get('size')} servers, "
            f"already on {report.get('to_version')}\n"
            "NOT RUN: nothing was rehearsed: no step ran, no traffic was measured, no check was judged "
            "(the report says \"rehearsed\": false)")


def rollout_report(settings: Settings, prepared: Prepared, ran: Ran, collected: Collected) -> Report:
    """The report of one rehearsal, from what each phase returned."""
    end = collected.load_end.end if collected.load_end is not None else None
    figures = measure(collected.rows, collected.events,
                      nginx=collected.nginx_rows if collected.lb_log_read else None,
                      address_history=collected.history,
                      settings=MeasureSettings(slow_ms=settings.slow_ms), sent=end.sent if end else None,
                      long_lived_rows=collected.long_lived_rows)
    died = end is not None and (end.died_early or end.killed)  # a SIGKILLed Locust may have lost rows
    run = Rollout(
        project=settings.project, strategy=prepared.strategy, size=prepared.size, batch=prepared.batch,
        mode=prepared.mode, from_version=prepared.source, to_version=prepared.target, outcome=ran.outcome,
        duration_s=round((ran.t_end or time.time()) - (ran.t_start or ran.started), 3),
        peak_instances=ran.peak, sticky=collected.lb.sticky, lb_apply=collected.lb.lb_apply,
        client_keepalive_s=collected.lb.client_keepalive_s, users=settings.users if ran.load else 0,
        long_lived_users=settings.ws_users + settings.sse_users if ran.load else 0,
        load=ran.load, load_alive=ran.load_alive and not died if ran.load else None,
        seed=prepared.seed, pick_order=tuple(map(tuple, prepared.pick_order)), mixed_checks=ran.mixed_checks,
        detach_lag_s=prepared.detach_lag_s, canary=ran.canary,
    )
    report = build_report(run=run, figures=figures, steps=collected.events, limits=Limits.from_settings(settings))
    died_here = died_servers(collected.events, collected.nginx_rows)
    faults: list[DiedServer | NodeLost | LbOutage] = [*died_here, *nodes_lost(died_here),
                                                      *lb_outages(collected.events, collected.rows)]
    extra: dict[str, object] = {"attribution": attribution(collected.rows, collected.nginx_rows, collected.history),
                                "faults": faults}
    if collected.load_end is not None:
        extra["load_generator"] = collected.load_end.to_json()
    ran_migration = next((r for r in ran.mixed_checks if r.name == migrate.NAME), None)
    if ran_migration is not None:
        # your own image's rows carry no version (collect() clears any header): NGINX's log names who served each
        served = attribute_versions(collected.rows, collected.nginx_rows, collected.history)
        block = migrate.summary(ran_migration, ran.migration_end, served)
        extra["migration"] = block
        judged = migrate.errors_check(block, settings.max_migration_errors) if ran.load else Check(
            "migration_errors", "NOT_RUN", None, settings.max_migration_errors, "no load: nothing to judge")
        report = dataclasses.replace(report, verdict=Verdict((*report.verdict.checks, judged)))
    ran_contract = next((r for r in ran.mixed_checks if r.name == migrate.CONTRACT), None)
    if ran_contract is not None:
        extra["contract"] = migrate.summary(ran_contract, ran.contract_end, collected.rows)
    if ran.rollback_rehearsals:
        extra["rollback_rehearsals"] = [r.to_json() for r in ran.rollback_rehearsals]
        safety = tuple(rollback_safe(r, settings.require_rollback_safe) for r in ran.rollback_rehearsals)
        report = dataclasses.replace(report, verdict=Verdict((*report.verdict.checks, *safety)))
    return dataclasses.replace(report, extra=extra)


class DiedServer(TypedDict):
    """A server that died while attached, in ``report.json``'s ``faults``."""

    fault: Literal["died"]
    instance: str | None
    address: str
    t: float
    exit: object  # how it exited, as the engine told it (``Engine.exit_info``)
    lost_requests: int
    node: NotRequired[str]  # the Swarm node it ran on (several nodes)


class NodeLost(TypedDict):
    """A Swarm node lost while the rollout ran, in ``report.json``'s ``faults``: the servers that died
    with it and the requests lost to them (what that node was serving, no more)."""

    fault: Literal["node_lost"]
    node: str
    t: float  # when the first of its servers was noticed dead
    servers: list[str]
    lost_requests: int


def nodes_lost(died: Sequence[DiedServer]) -> list[NodeLost]:
    """The died servers grouped by node, for servers that ran on one (pure)."""
    out: dict[str, NodeLost] = {}
    for d in died:
        node = d.get("node")
        if not node:
            continue
        lost = out.setdefault(node, {"fault": "node_lost", "node": node, "t": d["t"], "servers": [],
                                     "lost_requests": 0})
        lost["t"] = min(lost["t"], d["t"])
        lost["servers"].append(str(d["instance"]))
        lost["lost_requests"] += d["lost_requests"]
    return list(out.values())


class LbOutage(TypedDict):
    """The load balancer exited and was started again, in ``report.json``'s ``faults``."""

    fault: Literal["lb_exited"]
    t: float  # down since
    restored_t: float
    outage_s: float
    exit: object  # its exit code, as the engine told it
    lost_requests: int


class Attribution(TypedDict):
    """Where the versions served were read from (``report.json``'s ``attribution``)."""

    header: int
    from_log: int
    compared: int
    agreement: float | None


def died_servers(events: Sequence[Event], nginx_rows: Sequence[LbRow]) -> list[DiedServer]:
    """The servers that died while attached (``died`` events), each with the requests lost to it:
    the load balancer's log rows that tried its address and answered 5xx from 30 s before it was noticed on (a kill cuts
    what it held and refuses what comes until the controller takes it out)."""
    out: list[DiedServer] = []
    for e in events:
        if e.get("phase") != "died":
            continue
        address = str(e.get("address") or "")
        lost = sum(1 for r in nginx_rows
                   if address and address in r["servers"]
                   and r["status"] >= 500 and r["time"] >= float(e["t"]) - 30)
        died: DiedServer = {"fault": "died", "instance": e.get("instance"), "address": address, "t": e["t"],
                            "exit": (e.get("detail") or {}).get("exit"), "lost_requests": lost}
        if e.get("node"):
            died["node"] = str(e.get("node"))
        out.append(died)
    return out


def lb_outages(events: Sequence[Event], rows: Sequence[RequestRow]) -> list[LbOutage]:
    """Each time the load balancer exited and was started again (``lb-exited``, ``lb-restored``):
    the outage window and the requests it cost (the users' requests that failed in it)."""
    out: list[LbOutage] = []
    exited: Event | None = None
    for e in events:
        if e.get("phase") == "lb-exited":
            exited = e
        elif e.get("phase") == "lb-restored" and exited is not None:
            down = float(str((exited.get("detail") or {}).get("down_since") or exited["t"]))
            up = float(e["t"])
            lost = sum(1 for r in rows if down <= float(r.get("t_end") or r["t"]) and float(r["t"]) <= up
                       and (not r.get("status") or int(r.get("status") or 0) >= 500))
            out.append({"fault": "lb_exited", "t": down, "restored_t": up, "outage_s": round(up - down, 3),
                        "exit": (exited.get("detail") or {}).get("exit_code"), "lost_requests": lost})
            exited = None
    return out


def fleet_history(initial: list[Instance], events: list[Event]) -> AddressHistory:
    """Which version held which address when: the fleet at the start, then the run's events."""
    present: list[Event] = [
        {"t": 0.0, "phase": "start", "instance": i.name, "address": i.address, "version": i.version}
        for i in initial if i.address
    ]
    return address_history_from_events([*present, *events])


def attribution(rows: Sequence[RequestRow], nginx_rows: Sequence[LbRow], history: AddressHistory) -> Attribution:
    """Where the version served came from, and how well the two sources agree.

    ``header``: rows whose answer carried X-App-Version; ``compared``: rows that also
    have a version read from NGINX's log (upstream address mapped to its container);
    ``agreement``: the share of those where both say the same (None with nothing to compare).
    """
    from_log = {r["rid"]: r.get("version") for r in attribute_versions(
        [{**r, "version": None} for r in rows], nginx_rows, history)}
    both = [(r.get("version"), from_log.get(r["rid"])) for r in rows
            if r.get("version") and from_log.get(r["rid"])]
    return {
        "header": sum(1 for r in rows if r.get("version")),
        "from_log": sum(1 for v in from_log.values() if v),
        "compared": len(both),
        "agreement": round(sum(a == b for a, b in both) / len(both), 4) if both else None,
    }

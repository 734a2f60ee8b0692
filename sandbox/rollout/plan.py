"""The rollout planner: a pure function from (fleet, settings) to an ordered list of steps.

No I/O, no Docker, no asyncio. The controller executes the steps in order (each
step acts on all its targets concurrently), and re-plans from the live fleet
after an interruption; a rollback is ``plan(fleet, to_version=previous)``.

``plan`` works in two phases:

1. **settle** (one batch, only on a resumed fleet): servers already on the
   target version but detached are readied and attached; surplus containers
   (a second container in a slot, slots beyond ``size``) are detached, drained
   and stopped. Nothing is started, and no slot loses its last serving server.
2. **roll**: every slot still on the old version (or empty) is rebuilt, in
   batches, as the strategy prescribes. Empty and already-detached slots come
   first: they cost no extra availability. Within each of those three groups
   the slots go in slot order, or, with ``PlanSettings.seed``, in an order
   shuffled by ``random.Random(seed)`` (the same seed, the same order: a run
   that found a problem can be replayed).

With a detach lag (``PlanSettings.detach_lag_s``), ``signal_first`` puts a
``term`` step (the stop signal, then the lag) before each detach of a server
the plan stops, as Kubernetes sends SIGTERM while its endpoints are still
being removed.

``merge_reloads`` then turns the attach that ends one batch and the detach
that starts the next into one ``reattach`` step (one load balancer reload
instead of two). The executor runs exactly the steps it is given, so
``merge_reloads(plan(...))`` is what runs.

What each strategy does with a batch, and the limits it is held to, come from
its class in ``strategies``; the steps' vocabulary is in ``steps``.

``simulate``/``validate`` replay a plan over a model of the fleet and raise
``PlanError`` on any broken invariant; the tests run every plan through them,
merged and not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from sandbox.errors import PlanError
from sandbox.rollout.steps import Action, Mode, Ref, Server, Step, Version, ref
from sandbox.rollout.strategies import (
    DEFAULT_STRATEGY,
    DEFAULT_WEIGHTS,
    REGISTRY,
    RolloutStrategy,
    Strategy,
    check_weights,
)

__all__ = [  # the planner, and the vocabulary it shares with the strategies (steps.py)
    "Action", "Mode", "PlanError", "PlanSettings", "Ref", "Server", "Simulation", "Step", "Strategy", "Version",
    "check_settings", "limits", "merge_reloads", "mixed_pause_point", "pick_order", "plan", "signal_first",
    "simulate", "validate",
]


@dataclass(frozen=True)
class PlanSettings:
    """What the fleet should become and how to get there."""

    size: int  # N: desired number of slots 1..N
    to_version: Version
    strategy: Strategy = DEFAULT_STRATEGY
    batch: int = 1  # where the strategy is batched (see strategies); ignored by the others
    mode: Mode = "replace"
    seed: int | None = None  # None: slots in order; else the pick order is a shuffle seeded with it
    detach_lag_s: float = 0.0  # > 0: each server is sent its stop signal this long before its detach
    weights: tuple[int, ...] = DEFAULT_WEIGHTS  # canary only: the new version's share at each step (--steps)


@dataclass(frozen=True)
class Simulation:
    """What replaying a plan over a fleet produced (see ``simulate``)."""

    fleet: tuple[Server, ...]  # live containers at the end; new ones get made-up ids
    peak_containers: int  # most containers alive at once (the cost)
    min_serving: int  # fewest slots with an attached, ready server at once
    batches: int  # highest batch_no in the plan (0 for an empty plan)
    ghosts: tuple[str, ...]  # removed containers still in the load balancer config
    unready: tuple[str, ...]  # attached containers not ready since their start/swap


# --------------------------------------------------------------------------- settings


def check_settings(settings: PlanSettings) -> None:
    """Raise PlanError, naming the field, for any settings the planner cannot honour."""
    for name in ("size", "batch"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"{name}: must be an integer >= 1, got {value!r}", field=name)
    if not isinstance(settings.to_version, str) or not settings.to_version:
        raise PlanError(f"to_version: must be a version name; got {settings.to_version!r}", field="to_version")
    for name, choices in (("strategy", tuple(REGISTRY)), ("mode", get_args(Mode))):
        value = getattr(settings, name)
        if value not in choices:
            raise PlanError(f"{name}: must be one of {', '.join(choices)}; got {value!r}", field=name)
    seed = settings.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise PlanError(f"seed: must be a whole number >= 0, got {seed!r}", field="seed")
    lag = settings.detach_lag_s
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not lag >= 0:
        raise PlanError(f"detach_lag_s: must be a number of seconds >= 0, got {lag!r}", field="detach_lag_s")
    if lag and (settings.mode == "in-place" or not REGISTRY[settings.strategy].graceful):
        raise PlanError(f"detach_lag_s: applies to mode replace with a strategy that drains, not "
                        f"{settings.strategy} in {settings.mode}", field="detach_lag_s")
    try:
        check_weights(settings.weights)
    except ValueError as exc:
        raise PlanError(f"weights: {exc}", field="weights") from None
    if settings.mode == "in-place" and not REGISTRY[settings.strategy].in_place:
        raise PlanError(
            f"mode: 'in-place' is not possible with strategy {settings.strategy!r}, which runs "
            "new servers beside the old ones; use mode 'replace'",
            field="mode",
        )


def limits(settings: PlanSettings) -> tuple[int, int]:
    """(max_unavailable, max_surge) the strategy allows, as in Kubernetes.

    A batch larger than the fleet counts as the whole fleet.
    """
    check_settings(settings)
    return _strategy(settings).bounds(settings.batch, settings.size, settings.weights)


def _strategy(settings: PlanSettings) -> RolloutStrategy:
    """The registered strategy of checked settings."""
    return REGISTRY[settings.strategy]


def _check_fleet(fleet: Sequence[Server]) -> None:
    """Raise PlanError for a fleet that cannot be planned from (duplicate ids, bad versions)."""
    seen: set[str] = set()
    for server in fleet:
        if server.id in seen:
            raise PlanError(f"fleet: container id {server.id!r} appears twice", field="fleet")
        seen.add(server.id)
        if not isinstance(server.version, str) or not server.version:
            raise PlanError(f"fleet: container {server.id!r} has unknown version {server.version!r}", field="fleet")


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Triage:
    """The fleet sorted into the work it needs."""

    to_attach: tuple[Server, ...]  # on to_version, detached: ready, then attach
    to_remove: tuple[Server, ...]  # surplus: detach (if attached), drain, stop
    to_rebuild: tuple[tuple[int, Server | None], ...]  # (slot, old server or None if empty), in order


def _triage(fleet: Sequence[Server], settings: PlanSettings) -> _Triage:
    """Decide, slot by slot, what stays, what goes and what is rebuilt.

    In each slot the server to keep is a live one on ``to_version`` (attached preferred);
    without one, the old server to rebuild is the live attached one if any. Every other
    container of the slot, every dead one (never kept: a fresh one replaces it), and every
    container beyond ``size``, is surplus.
    """
    by_slot: dict[int, list[Server]] = {}
    for server in fleet:
        by_slot.setdefault(server.slot, []).append(server)
    to_attach: list[Server] = []
    to_remove: list[Server] = []
    empty: list[tuple[int, None]] = []
    detached: list[tuple[int, Server]] = []
    attached: list[tuple[int, Server]] = []
    for slot in sorted(set(by_slot) | set(range(1, settings.size + 1))):
        servers = sorted(by_slot.get(slot, []), key=lambda s: (not s.attached, s.id))
        if not 1 <= slot <= settings.size:
            to_remove.extend(servers)
            continue
        to_remove.extend(s for s in servers if not s.alive)
        current = [s for s in servers if s.alive and s.version == settings.to_version]
        old = [s for s in servers if s.alive and s.version != settings.to_version]
        if current:
            keeper, *spare = current
            to_remove.extend(spare + old)
            if not keeper.attached:
                to_attach.append(keeper)
        elif old:
            victim, *spare = old
            to_remove.extend(spare)
            (attached if victim.attached else detached).append((slot, victim))
        else:
            empty.append((slot, None))
    if settings.seed is not None:  # one generator, the groups in a fixed order: the same seed, the same picks
        rng = random.Random(settings.seed)
        for group in (empty, detached, attached):
            rng.shuffle(group)
    return _Triage(tuple(to_attach), tuple(to_remove), (*empty, *detached, *attached))


def _settle_steps(triage: _Triage, settings: PlanSettings, batch_no: int) -> list[Step]:
    """Bring detached to_version servers in, then take surplus containers out."""
    keep = [ref(s) for s in triage.to_attach]
    gone = [ref(s) for s in triage.to_remove]
    live = [ref(s) for s in triage.to_remove if s.attached]
    return _strategy(settings).settle(keep, live, gone, batch_no)
def plan(fleet: Sequence[Server], settings: PlanSettings) -> list[Step]:
    """The steps that take ``fleet`` to ``settings.size`` attached servers on ``settings.to_version``.

    Works from any fleet: fresh, half-rolled, interrupted mid-step, or over size.
    A converged fleet gives an empty plan.
    """
    check_settings(settings)
    _check_fleet(fleet)
    triage = _triage(fleet, settings)
    strategy = _strategy(settings)
    steps = _settle_steps(triage, settings, batch_no=1)
    batch_no = 1 if steps else 0
    steps += strategy.roll(triage.to_rebuild, batch=settings.batch, size=settings.size, mode=settings.mode,
                           weights=settings.weights, first_batch=batch_no + 1)
    return signal_first(steps) if settings.detach_lag_s else steps


def signal_first(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with a 'term' step (the stop signal, then the detach lag) just before each step
    that detaches servers the plan stops, for those servers: they get the signal while the load
    balancer still routes to them, as in Kubernetes. Servers stopped while already detached get
    no 'term'."""
    stopped = {r for step in steps if step.action == "stop" for r in step.targets}
    out: list[Step] = []
    for step in steps:
        detached = step.targets if step.action == "detach" else step.detach
        leaving = tuple(r for r in detached if r in stopped)
        if leaving:
            out.append(Step("term", leaving, step.batch_no))
        out.append(step)
    return out


def pick_order(steps: Sequence[Step]) -> list[list[int]]:
    """The slots each batch of ``steps`` acts on, batch by batch, in the order the plan names them
    (the detached half of a 'reattach' counts in its own, later batch)."""
    order: dict[int, list[int]] = {}
    for step in steps:
        for batch, refs in ((step.batch_no, step.targets), (step.detach_batch or step.batch_no, step.detach)):
            slots = order.setdefault(batch, [])
            slots.extend(r.slot for r in refs if r.slot not in slots)
    return [order[b] for b in sorted(order) if order[b]]


def merge_reloads(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with one reload instead of two between batches.

    An 'attach' that ends batch k followed by the 'detach' that starts batch k+1
    become one 'reattach' step. Attached servers never drop below the plan's
    floor (the new ones count before the old ones leave). Within one batch
    (surge, double-half) attach and detach stay apart: both versions serve in
    between, by design.
    """
    merged: list[Step] = []
    for step in steps:
        last = merged[-1] if merged else None
        if (last is not None and last.action == "attach" and step.action == "detach"
                and step.batch_no != last.batch_no):
            merged[-1] = Step("reattach", last.targets, last.batch_no, detach=step.targets,
                              detach_batch=step.batch_no)
        else:
            merged.append(step)
    return merged


def pause_point(steps: Sequence[Step], after_batch: int | None) -> tuple[list[Step], int | None]:
    """``steps`` made ready to pause once batch ``after_batch`` is done, and the index of the step
    to pause before (None: no pause, the plan has no batch after it).

    The pause falls where batch ``after_batch`` is attached and the next batch has not started: a
    'reattach' that ends that batch and starts the next is split back into its 'attach' and its
    'detach' (two changes to the load balancer instead of one, at that boundary only)."""
    if after_batch is None:
        return list(steps), None
    out: list[Step] = []
    for step in steps:
        if step.action == "reattach" and step.batch_no == after_batch:
            out += [Step("attach", step.targets, step.batch_no),
                    Step("detach", step.detach, step.detach_batch or step.batch_no + 1)]
        else:
            out.append(step)
    later = [i for i, step in enumerate(out) if step.batch_no > after_batch]
    return out, (later[0] if later and later[0] > 0 else None)


def mixed_pause_point(fleet: Sequence[Server], settings: PlanSettings,
                      steps: Sequence[Step]) -> tuple[list[Step], int | None]:
    """``steps`` made ready to pause at the first moment both versions serve (``--pause-at-mixed``),
    and the index of the step to pause before (None: the attached set never holds two versions,
    as in blue-green's one switch, or only once the last step is done).

    The moment is found by replaying ``steps`` over ``fleet``: the first step after which the
    attached, live servers are of two versions. When that step is a 'reattach' it is split back
    into its 'attach' and its 'detach', so the pause holds with every slot serving (as
    :func:`pause_point` does). A fleet already mixed at the start pauses before the first step.
    Raises PlanError when a step cannot be replayed (the plan itself is broken)."""
    sim = _Sim(fleet, settings)

    def mixed() -> bool:
        return len({b.version for b in sim.boxes.values() if b.attached and b.alive}) >= 2

    if mixed():
        return list(steps), (0 if steps else None)
    for index, step in enumerate(steps):
        parts = ([Step("attach", step.targets, step.batch_no),
                  Step("detach", step.detach, step.detach_batch or step.batch_no + 1)]
                 if step.action == "reattach" else [step])
        try:
            sim.apply(parts[0])
            if len(parts) == 2 and mixed():  # mixed once the attach half is done: pause before the detach
                return [*steps[:index], *parts, *steps[index + 1:]], index + 1
            for part in parts[1:]:
                sim.apply(part)
        except ValueError as exc:
            raise PlanError(f"step {index + 1} ({step.action}): {exc}", field="steps") from None
        if mixed():
            return list(steps), (index + 1 if index + 1 < len(steps) else None)
    return list(steps), None


def wind_down(steps: Sequence[Step], done: int) -> list[Step]:
    """What to run after ``steps[:done]`` when the rollout is asked to stop (Ctrl-C, SIGTERM):
    the rest of the batch under way, so that every slot ends with its one server attached. A
    'reattach' that ends the batch becomes a plain 'attach' (the next batch does not start).
    Empty at a batch boundary."""
    if done == 0:
        return []
    last = steps[done - 1]
    current = last.detach_batch if last.action == "reattach" else last.batch_no
    rest: list[Step] = []
    for step in steps[done:]:
        if step.batch_no != current:
            break
        if step.action == "reattach":
            rest.append(Step("attach", step.targets, step.batch_no))
            break
        rest.append(step)
    return rest


# --------------------------------------------------------------------------- checking


@dataclass
class _Box:
    """The simulator's view of one container."""

    id: str
    slot: int
    version: Version
    attached: bool  # in the load balancer config (even after the container is gone)
    ready: bool  # passed readiness since its start/swap
    drained: bool = False  # no in-flight requests since its last detach
    alive: bool = True
    dead: bool = False  # exited under us: never ready again, only removed
    signalled: bool = False  # sent its stop signal ('term'): it is going away, never attached again


class _Sim:
    """A model of the fleet and the load balancer that steps are applied to."""

    def __init__(self, fleet: Sequence[Server], settings: PlanSettings) -> None:
        self.settings = settings
        self.strategy = _strategy(settings)
        # Attached live servers are taken as healthy; detached ones must pass readiness again, and
        # a dead one never does (its container still exists until it is stopped: removed)
        self.boxes = {s.id: _Box(s.id, s.slot, s.version, s.attached, ready=s.attached and s.alive, dead=not s.alive)
                      for s in fleet}
        self.new_in_slot: dict[int, str] = {}  # slot -> id of the container a 'start' created there

    def new_id(self, slot: int) -> str:
        """A made-up id for a started container, unique in this simulation."""
        n = 1
        while f"new-{slot}-{n}" in self.boxes:
            n += 1
        return f"new-{slot}-{n}"

    def resolve(self, ref: Ref) -> _Box:
        """The container a Ref names."""
        box_id = ref.id if ref.id is not None else self.new_in_slot.get(ref.slot)
        if box_id is None:
            raise ValueError(f"no new container started in slot {ref.slot}")
        box = self.boxes.get(box_id)
        if box is None:
            raise ValueError(f"unknown container {box_id!r}")
        if box.slot != ref.slot:
            raise ValueError(f"container {box_id!r} is in slot {box.slot}, not {ref.slot}")
        return box

    def total(self) -> int:
        """Containers alive now."""
        return sum(b.alive for b in self.boxes.values())

    def serving(self) -> int:
        """Slots 1..N with at least one attached, ready, live server."""
        n = self.settings.size
        return len({b.slot for b in self.boxes.values() if b.alive and b.attached and b.ready and 1 <= b.slot <= n})

    def apply(self, step: Step) -> None:
        """Apply one step; raise ValueError if it breaks a rule of its action."""
        if step.detach and step.action not in ("switch", "reattach"):
            raise ValueError("only 'switch' and 'reattach' may have 'detach' refs")
        if (step.detach_batch is not None) != (step.action == "reattach"):
            raise ValueError("'reattach', and only it, names the batch of its detached servers")
        if step.action == "reattach" and (
                not step.targets or not step.detach or (step.detach_batch or 0) <= step.batch_no):
            raise ValueError("'reattach' attaches the end of one batch and detaches the start of a later one")
        refs = step.targets + step.detach
        if not refs:
            raise ValueError("no targets")
        if len(set(refs)) != len(refs):
            raise ValueError("a server appears twice in one step")
        if step.action == "start":
            for ref in step.targets:
                self._start(ref)
            return
        if step.action in ("switch", "reattach"):  # resolve all first: one reload, all or nothing
            attach = [self.resolve(r) for r in step.targets]
            detach = [self.resolve(r) for r in step.detach]
            for box in attach:
                self._attach(box)
            for box in detach:
                self._detach(box)
            return
        handler = getattr(self, f"_{step.action}", None)
        if handler is None:
            raise ValueError(f"unknown action {step.action!r}")
        for box in [self.resolve(r) for r in step.targets]:
            handler(box)

    def _start(self, ref: Ref) -> None:
        if ref.id is not None:
            raise ValueError(f"start targets a new container, not {ref.id!r}")
        if ref.slot in self.new_in_slot and self.boxes[self.new_in_slot[ref.slot]].alive:
            raise ValueError(f"slot {ref.slot} already has a new container")
        box_id = self.new_id(ref.slot)
        self.boxes[box_id] = _Box(box_id, ref.slot, self.settings.to_version, attached=False, ready=False)
        self.new_in_slot[ref.slot] = box_id

    def _term(self, box: _Box) -> None:
        if self.settings.detach_lag_s <= 0:
            raise ValueError("'term' is only for a plan with a detach lag")
        self._need_alive(box)
        self._need_staying(box, "signalled again")
        if not box.attached:
            raise ValueError(f"{box.id} is signalled while detached: only attached servers wait the lag")
        box.signalled = True

    def _ready(self, box: _Box) -> None:
        self._need_alive(box)
        self._need_staying(box, "readied")
        if box.dead:
            raise ValueError(f"{box.id} exited: it is never ready again")
        box.ready = True

    def _attach(self, box: _Box) -> None:
        self._need_alive(box)
        self._need_staying(box, "attached")
        if box.attached:
            raise ValueError(f"{box.id} is already attached")
        if not box.ready:
            raise ValueError(f"{box.id} is attached before a 'ready' step")
        box.attached, box.drained = True, False

    def _detach(self, box: _Box) -> None:
        if not box.attached:
            raise ValueError(f"{box.id} is not attached")
        box.attached, box.drained = False, False

    def _drain(self, box: _Box) -> None:
        self._need_alive(box)
        if box.attached:
            raise ValueError(f"{box.id} is drained while still attached")
        box.drained = True

    def _stop(self, box: _Box) -> None:
        self._need_alive(box)
        self._need_out_of_service(box, "stopped")
        box.alive = False

    def _kill(self, box: _Box) -> None:
        if self.strategy.graceful:
            raise ValueError(f"'kill' is only for a strategy that does not drain, not {self.strategy.name!r}")
        self._need_alive(box)
        box.alive = False  # stays in the load balancer config until a switch/detach

    def _swap(self, box: _Box) -> None:
        if self.settings.mode != "in-place":
            raise ValueError("'swap' is only for mode in-place")
        self._need_alive(box)
        self._need_staying(box, "swapped")
        self._need_out_of_service(box, "swapped")
        box.version, box.ready, box.drained = self.settings.to_version, False, False

    def _need_alive(self, box: _Box) -> None:
        if not box.alive:
            raise ValueError(f"{box.id} is already gone")

    def _need_staying(self, box: _Box, verb: str) -> None:
        if box.signalled:
            raise ValueError(f"{box.id} is {verb} after its stop signal")

    def _need_out_of_service(self, box: _Box, verb: str) -> None:
        """Graceful strategies touch only detached, drained servers."""
        if not self.strategy.graceful:
            return
        if box.attached:
            raise ValueError(f"{box.id} is {verb} while attached")
        if not box.drained:
            raise ValueError(f"{box.id} is {verb} before it was drained")

    def result(self, peak: int, min_serving: int, batches: int) -> Simulation:
        """The end state as a Simulation."""
        live = sorted((b for b in self.boxes.values() if b.alive), key=lambda b: (b.slot, b.id))
        return Simulation(
            fleet=tuple(Server(b.id, b.slot, b.version, b.attached) for b in live),
            peak_containers=peak,
            min_serving=min_serving,
            batches=batches,
            ghosts=tuple(b.id for b in self.boxes.values() if b.attached and not b.alive),
            unready=tuple(b.id for b in live if b.attached and not b.ready),
        )


def simulate(fleet: Sequence[Server], settings: PlanSettings, steps: Sequence[Step]) -> Simulation:
    """Replay ``steps`` over ``fleet``; raise PlanError at the first step that breaks an invariant.

    Checked after every step: serving slots >= min(N - max_unavailable, serving at
    start); live containers <= max(N + max_surge, containers at start); each
    action's own rules (attach only after 'ready'; stop/swap only detached and
    drained servers unless naive; 'term' only on attached servers, with a detach
    lag, and nothing but detach, drain and stop after it; 'kill' only in naive;
    'swap' only in-place;
    'reattach' only from the end of one batch to the start of a later one).
    The end state is not checked here: see ``validate``.
    """
    check_settings(settings)
    _check_fleet(fleet)
    max_unavailable, max_surge = limits(settings)
    sim = _Sim(fleet, settings)
    floor = min(settings.size - max_unavailable, sim.serving())
    ceiling = max(settings.size + max_surge, sim.total())
    peak, min_serving, last_batch = sim.total(), sim.serving(), 0
    for i, step in enumerate(steps, 1):
        where = f"step {i} ({step.action}, batch {step.batch_no})"
        if step.batch_no < max(1, last_batch):
            raise PlanError(f"{where}: batch_no {step.batch_no} goes backwards or is < 1", field="steps")
        last_batch = max(step.batch_no, step.detach_batch or 0)
        try:
            sim.apply(step)
        except ValueError as exc:
            raise PlanError(f"{where}: {exc}", field="steps") from None
        if sim.serving() < floor:
            raise PlanError(f"{where}: only {sim.serving()} slots serving, the floor is {floor}", field="steps")
        if sim.total() > ceiling:
            raise PlanError(f"{where}: {sim.total()} containers, the ceiling is {ceiling}", field="steps")
        peak, min_serving = max(peak, sim.total()), min(min_serving, sim.serving())
    return sim.result(peak, min_serving, last_batch)


def validate(fleet: Sequence[Server], settings: PlanSettings, steps: Sequence[Step]) -> None:
    """Raise PlanError unless ``steps`` take ``fleet`` to the goal without breaking an invariant.

    On top of ``simulate``'s checks: at the end exactly one container per slot
    1..N, all on ``to_version``, attached and ready, and no removed container
    left in the load balancer config.
    """
    end = simulate(fleet, settings, steps)
    problems = []
    slots = sorted(s.slot for s in end.fleet)
    if slots != list(range(1, settings.size + 1)):
        problems.append(f"slots at the end are {slots}, not 1..{settings.size} once each")
    problems += [f"{s.id} ends on {s.version}" for s in end.fleet if s.version != settings.to_version]
    problems += [f"{s.id} ends detached" for s in end.fleet if not s.attached]
    problems += [f"{i} ends attached without passing readiness" for i in end.unready]
    problems += [f"{i} is gone but still in the load balancer config" for i in end.ghosts]
    if problems:
        raise PlanError("plan does not converge: " + "; ".join(problems), field="steps")

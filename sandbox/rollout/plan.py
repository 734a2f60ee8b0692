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

``merge_reloads`` then turns the attach that ends one batch and the detach
that starts the next into one ``reattach`` step (one load balancer reload
instead of two). The executor runs exactly the steps it is given, so
``merge_reloads(plan(...))`` is what runs.

``simulate``/``validate`` replay a plan over a model of the fleet and raise
``PlanError`` on any broken invariant; the tests run every plan through them,
merged and not.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sandbox.errors import PlanError

Version = str  # the user's name for a version: v1, 1.4.2, green (the toy app has v1 and v2)
Strategy = Literal["one-at-a-time", "rolling", "surge", "double-half", "blue-green", "naive"]
Mode = Literal["replace", "in-place"]
Action = Literal["start", "ready", "attach", "detach", "drain", "stop", "kill", "swap", "switch", "reattach"]


@dataclass(frozen=True)
class Server:
    """One app container as the controller sees it now."""

    id: str  # container id (opaque to the planner)
    slot: int  # 1..size
    version: Version
    attached: bool  # in the load balancer config now
    alive: bool = True  # False: the container exited (killed, crashed); it is removed and its slot rebuilt


@dataclass(frozen=True)
class PlanSettings:
    """What the fleet should become and how to get there."""

    size: int  # N: desired number of slots 1..N
    to_version: Version
    strategy: Strategy = "one-at-a-time"
    batch: int = 1  # for rolling, surge and naive; ignored by the others
    mode: Mode = "replace"
    seed: int | None = None  # None: slots in order; else the pick order is a shuffle seeded with it


@dataclass(frozen=True)
class Ref:
    """A server a step acts on: an existing container by id, or the new one to start in a slot."""

    slot: int
    id: str | None = None  # None = the new container of this slot (created by an earlier 'start')


@dataclass(frozen=True)
class Step:
    """One action on a set of servers, executed concurrently on all of them."""

    action: Action
    targets: tuple[Ref, ...]
    batch_no: int  # 1-based batch index, for progress/events
    # only for 'switch' and 'reattach': attach targets, detach these, in ONE reload
    detach: tuple[Ref, ...] = ()
    # only for 'reattach': the (later) batch the detached servers belong to
    detach_batch: int | None = None


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
    for name, kind in (("strategy", Strategy), ("mode", Mode)):
        value = getattr(settings, name)
        if value not in get_args(kind):
            choices = ", ".join(get_args(kind))
            raise PlanError(f"{name}: must be one of {choices}; got {value!r}", field=name)
    seed = settings.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise PlanError(f"seed: must be a whole number >= 0, got {seed!r}", field="seed")
    if settings.mode == "in-place" and settings.strategy in ("surge", "double-half", "blue-green"):
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
    n = settings.size
    b = min(settings.batch, n)
    if settings.strategy == "one-at-a-time":
        return (1, 0)
    if settings.strategy in ("rolling", "naive"):
        return (b, 0)
    if settings.strategy == "surge":
        return (0, b)
    return (0, n)  # double-half, blue-green


def _batch_size(settings: PlanSettings) -> int:
    """How many slots one batch rebuilds."""
    if settings.strategy == "one-at-a-time":
        return 1
    if settings.strategy in ("double-half", "blue-green"):
        return settings.size
    return min(settings.batch, settings.size)


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
    return _Triage(tuple(to_attach), tuple(to_remove), tuple(empty + detached + attached))


def _ref(server: Server) -> Ref:
    """The Ref of an existing container."""
    return Ref(server.slot, server.id)


def _steps(batch_no: int, *pairs: tuple[Action, Iterable[Ref]]) -> list[Step]:
    """Steps for (action, targets) pairs, skipping those with no targets."""
    steps = []
    for action, refs in pairs:
        targets = tuple(refs)
        if targets:
            steps.append(Step(action, targets, batch_no))
    return steps


def _switch(batch_no: int, attach: Sequence[Ref], detach: Sequence[Ref]) -> list[Step]:
    """One 'switch' step (attach and detach in one reload), or none if it has nothing to do."""
    if not attach and not detach:
        return []
    return [Step("switch", tuple(attach), batch_no, detach=tuple(detach))]


def _settle_steps(triage: _Triage, settings: PlanSettings, batch_no: int) -> list[Step]:
    """Bring detached to_version servers in, then take surplus containers out."""
    keep = [_ref(s) for s in triage.to_attach]
    gone = [_ref(s) for s in triage.to_remove]
    live = [_ref(s) for s in triage.to_remove if s.attached]
    steps = _steps(batch_no, ("ready", keep))
    if settings.strategy in ("blue-green", "naive"):
        steps += _switch(batch_no, keep, live)
    else:
        steps += _steps(batch_no, ("attach", keep), ("detach", live))
    return steps + _steps(batch_no, ("drain", gone), ("stop", gone))


def _rebuild_steps(batch: Sequence[tuple[int, Server | None]], settings: PlanSettings, batch_no: int) -> list[Step]:
    """The steps that rebuild one batch of slots with the settings' strategy and mode."""
    olds = [s for _, s in batch if s is not None]
    old = [_ref(s) for s in olds]
    live = [_ref(s) for s in olds if s.attached]
    new = [Ref(slot) for slot, _ in batch]
    if settings.mode == "in-place":
        empty = [Ref(slot) for slot, s in batch if s is None]
        fresh = sorted(old + empty, key=lambda r: r.slot)
        if settings.strategy == "naive":  # swap under traffic; attached servers stay attached
            unattached = sorted([_ref(s) for s in olds if not s.attached] + empty, key=lambda r: r.slot)
            return _steps(batch_no, ("swap", old), ("start", empty), ("ready", fresh), ("attach", unattached))
        return _steps(
            batch_no,
            ("detach", live),
            ("drain", old),
            ("swap", old),
            ("start", empty),
            ("ready", fresh),
            ("attach", fresh),
        )
    if settings.strategy == "naive":
        return _steps(batch_no, ("kill", old), ("start", new), ("ready", new)) + _switch(batch_no, new, live)
    if settings.strategy == "blue-green":
        return (
            _steps(batch_no, ("start", new), ("ready", new))
            + _switch(batch_no, new, live)
            + _steps(batch_no, ("drain", old), ("stop", old))
        )
    if settings.strategy in ("surge", "double-half"):
        return _steps(
            batch_no, ("start", new), ("ready", new), ("attach", new), ("detach", live), ("drain", old), ("stop", old)
        )
    return _steps(  # one-at-a-time, rolling
        batch_no, ("detach", live), ("drain", old), ("stop", old), ("start", new), ("ready", new), ("attach", new)
    )


def plan(fleet: Sequence[Server], settings: PlanSettings) -> list[Step]:
    """The steps that take ``fleet`` to ``settings.size`` attached servers on ``settings.to_version``.

    Works from any fleet: fresh, half-rolled, interrupted mid-step, or over size.
    A converged fleet gives an empty plan.
    """
    check_settings(settings)
    _check_fleet(fleet)
    triage = _triage(fleet, settings)
    steps = _settle_steps(triage, settings, batch_no=1)
    batch_no = 1 if steps else 0
    size = _batch_size(settings)
    for start in range(0, len(triage.to_rebuild), size):
        batch_no += 1
        steps += _rebuild_steps(triage.to_rebuild[start : start + size], settings, batch_no)
    return steps


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


class _Sim:
    """A model of the fleet and the load balancer that steps are applied to."""

    def __init__(self, fleet: Sequence[Server], settings: PlanSettings) -> None:
        self.settings = settings
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

    def _ready(self, box: _Box) -> None:
        self._need_alive(box)
        if box.dead:
            raise ValueError(f"{box.id} exited: it is never ready again")
        box.ready = True

    def _attach(self, box: _Box) -> None:
        self._need_alive(box)
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
        if self.settings.strategy != "naive":
            raise ValueError("'kill' is only for the naive strategy")
        self._need_alive(box)
        box.alive = False  # stays in the load balancer config until a switch/detach

    def _swap(self, box: _Box) -> None:
        if self.settings.mode != "in-place":
            raise ValueError("'swap' is only for mode in-place")
        self._need_alive(box)
        self._need_out_of_service(box, "swapped")
        box.version, box.ready, box.drained = self.settings.to_version, False, False

    def _need_alive(self, box: _Box) -> None:
        if not box.alive:
            raise ValueError(f"{box.id} is already gone")

    def _need_out_of_service(self, box: _Box, verb: str) -> None:
        """Graceful strategies touch only detached, drained servers."""
        if self.settings.strategy == "naive":
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
    drained servers unless naive; 'kill' only in naive; 'swap' only in-place;
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

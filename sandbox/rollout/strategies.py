"""The strategy registry: one class per strategy, one table of them (``REGISTRY``).

Each class owns everything that differs between strategies: its name and help,
its batch-size rule (whether ``--batch`` applies, the batch for a fleet size,
the batch it refuses), its steps (the planner asks it for each batch's steps),
its limits (``max_unavailable``, ``max_surge``: the fewest serving and most
containers the planner's simulator holds it to), whether it can swap code in
place, the strategy its rollback uses, whether ``compare`` judges it, the
promise the dashboard shows and its label in compare tables (``rolling:3``).
Nothing outside this module compares a strategy's name
(tests/unit/test_strategies.py checks that).

Adding a strategy is one class here and its row in the planner's invariant
sweep (``SHAPES`` in tests/unit/test_plan.py). For example, two servers at a
time whatever ``--batch`` says::

    @_registered
    class Pairs(RolloutStrategy):
        name = "pairs"
        help = "2 servers at a time, no extra capacity"
        in_place = True

        def effective_batch(self, batch: int, size: int) -> int:
            return min(2, size)

        def limits(self, batch: int, size: int) -> tuple[int, int]:
            return (self.effective_batch(batch, size), 0)

        def replace(self, batch: Batch, batch_no: int) -> list[Step]:
            return _drain_first(batch, batch_no)

and in ``SHAPES``, (batches, peak containers, fewest serving, reloads saved)::

    "pairs": lambda n, b: (math.ceil(n / 2), n, n - min(2, n), math.ceil(n / 2) - 1),

The CLI's choices, the settings' checks, ``compare``, the reports and the
dashboard take it from here (tests/unit/test_strategies.py plans with it).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from sandbox.errors import PlanError, UsageError
from sandbox.rollout.steps import Batch, Mode, Ref, Server, Step, ref, steps, switch

Strategy = str  # a strategy's name: one of NAMES (the registry checks it, not the type)


class RolloutStrategy(ABC):
    """What one strategy is and does; subclasses set the class attributes and define the steps."""

    name: str
    help: ClassVar[str]
    batched: ClassVar[bool] = False  # --batch applies to it
    in_place: ClassVar[bool] = False  # it keeps its containers, so mode in-place can swap their code
    graceful: ClassVar[bool] = True  # it stops or swaps only detached, drained servers ('kill' is not for it)
    switches: ClassVar[bool] = False  # it attaches and detaches in one reload (a 'switch' step)
    judged_in_compare: ClassVar[bool] = True  # compare's exit code holds it to its verdict
    titled_batch_of_one: ClassVar[bool] = False  # the report's title says "batch 1" too
    weighted: ClassVar[bool] = False  # it sends a share of requests by weight, step by step (--steps)

    # -- the batch -------------------------------------------------------------------------------
    def effective_batch(self, batch: int, size: int) -> int:
        """How many slots one batch rebuilds in a fleet of ``size``, given ``--batch``."""
        return min(batch, size) if self.batched else 1

    def report_batch(self, batch: int, size: int) -> int:
        """The batch the report gives: ``--batch`` as asked where it applies, else the effective one."""
        return batch if self.batched else self.effective_batch(batch, size)

    def check_batch(self, batch: int, size: int) -> None:
        """Raise UsageError for a batch this strategy refuses in a fleet of ``size`` (none by default)."""
        return None

    # -- the plan --------------------------------------------------------------------------------
    @abstractmethod
    def limits(self, batch: int, size: int) -> tuple[int, int]:
        """(max_unavailable, max_surge) it allows, as in Kubernetes."""

    def bounds(self, batch: int, size: int, weights: Sequence[int]) -> tuple[int, int]:
        """(max_unavailable, max_surge) for a plan with these canary ``weights`` (only the canary
        looks at them)."""
        return self.limits(batch, size)

    def roll(self, rebuild: Sequence[tuple[int, Server | None]], *, batch: int, size: int, mode: Mode,
             weights: Sequence[int], first_batch: int) -> list[Step]:
        """The steps that rebuild ``rebuild`` (slot, old server or None), batch after batch, numbered
        from ``first_batch``: chunks of ``effective_batch`` by default."""
        out: list[Step] = []
        chunk = self.effective_batch(batch, size)
        for n, start in enumerate(range(0, len(rebuild), chunk)):
            out += self.rebuild(Batch(tuple(rebuild[start:start + chunk])), mode, first_batch + n)
        return out

    def settle(self, keep: list[Ref], live: list[Ref], gone: list[Ref], batch_no: int) -> list[Step]:
        """Bring detached target-version servers (``keep``) in; take surplus ones (``gone``) out."""
        if self.switches:
            return steps(batch_no, ("ready", keep)) + switch(batch_no, keep, live) + steps(
                batch_no, ("drain", gone), ("stop", gone))
        return steps(batch_no, ("ready", keep), ("attach", keep), ("detach", live), ("drain", gone), ("stop", gone))

    def rebuild(self, batch: Batch, mode: Mode, batch_no: int) -> list[Step]:
        """The steps that rebuild one batch of slots in ``mode``."""
        return self.swap(batch, batch_no) if mode == "in-place" else self.replace(batch, batch_no)

    @abstractmethod
    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        """Mode replace: new containers for old ones."""

    def swap(self, batch: Batch, batch_no: int) -> list[Step]:
        """Mode in-place: out of the load balancer, drained, new code, ready, back in."""
        return steps(batch_no, ("detach", batch.live), ("drain", batch.old), ("swap", batch.old),
                     ("start", batch.empty), ("ready", batch.fresh), ("attach", batch.fresh))

    @property
    def rollback_strategy(self) -> Strategy:
        """The strategy that rolls this one back: itself."""
        return self.name

    # -- how it is shown -------------------------------------------------------------------------
    def promise(self, floor: int, peak: int, size: int) -> str:
        """What the dashboard promises, from the plan's figures."""
        return f"capacity never below {floor} of {size}, at most {peak} containers"

    def label(self, batch: int | None) -> str:
        """Its name as ``compare --strategies`` spells it: ``rolling:3``, ``double-half``."""
        return f"{self.name}:{batch}" if self.batched and batch not in (None, 1) else self.name

    def title_names_batch(self, batch: int) -> bool:
        """Whether the report's title names this batch."""
        return batch != 1 or self.titled_batch_of_one


REGISTRY: dict[Strategy, RolloutStrategy] = {}  # name -> strategy, in the order the CLI lists them


_S = TypeVar("_S", bound=RolloutStrategy)


def _registered(cls: type[_S]) -> type[_S]:
    """Class decorator: one instance of ``cls`` in the registry, under its name."""
    REGISTRY[cls.name] = cls()
    return cls


def _drain_first(batch: Batch, batch_no: int) -> list[Step]:
    """Take the old servers out, then bring the new ones in: capacity dips, no extra containers."""
    return steps(batch_no, ("detach", batch.live), ("drain", batch.old), ("stop", batch.old),
                 ("start", batch.new), ("ready", batch.new), ("attach", batch.new))


def _start_first(batch: Batch, batch_no: int) -> list[Step]:
    """Bring the new servers in, then take the old ones out: extra containers, no dip."""
    return steps(batch_no, ("start", batch.new), ("ready", batch.new), ("attach", batch.new),
                 ("detach", batch.live), ("drain", batch.old), ("stop", batch.old))


@_registered
class OneAtATime(RolloutStrategy):
    name = "one-at-a-time"
    help = "batch of 1, no extra capacity"
    in_place = True

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (1, 0)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return _drain_first(batch, batch_no)


@_registered
class Rolling(RolloutStrategy):
    name = "rolling"
    help = "n servers at a time (--batch n), no extra capacity"
    batched = True
    in_place = True
    titled_batch_of_one = True

    def check_batch(self, batch: int, size: int) -> None:
        """Refuse a batch that would take the whole fleet out at once."""
        if batch >= size:
            raise UsageError(f"batch: {batch} must be smaller than the fleet ({size} servers) for rolling, "
                             "or no server is left serving; surge, double-half or blue-green replace all at once")

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (self.effective_batch(batch, size), 0)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return _drain_first(batch, batch_no)


@_registered
class Surge(RolloutStrategy):
    name = "surge"
    help = "start n new servers before draining n old ones (Kubernetes' maxSurge)"
    batched = True
    titled_batch_of_one = True

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (0, self.effective_batch(batch, size))

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return _start_first(batch, batch_no)


@_registered
class DoubleHalf(RolloutStrategy):
    name = "double-half"
    help = "start N new servers, attach them, then drain and delete the N old ones"

    def effective_batch(self, batch: int, size: int) -> int:
        return size

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (0, size)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return _start_first(batch, batch_no)


@_registered
class BlueGreen(RolloutStrategy):
    name = "blue-green"
    help = "baseline: start a full new fleet, switch all traffic at once"
    switches = True

    def effective_batch(self, batch: int, size: int) -> int:
        return size

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (0, size)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return (steps(batch_no, ("start", batch.new), ("ready", batch.new)) + switch(batch_no, batch.new, batch.live)
                + steps(batch_no, ("drain", batch.old), ("stop", batch.old)))


@_registered
class Naive(RolloutStrategy):
    name = "naive"
    help = "baseline: replace servers without draining (shows what dropping looks like)"
    batched = True
    in_place = True
    graceful = False
    switches = True
    judged_in_compare = False  # it drops by design

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (self.effective_batch(batch, size), 0)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return (steps(batch_no, ("kill", batch.old), ("start", batch.new), ("ready", batch.new))
                + switch(batch_no, batch.new, batch.live))

    def swap(self, batch: Batch, batch_no: int) -> list[Step]:
        """Swap under traffic; attached servers stay attached."""
        return steps(batch_no, ("swap", batch.old), ("start", batch.empty), ("ready", batch.fresh),
                     ("attach", batch.unattached))

    @property
    def rollback_strategy(self) -> Strategy:
        """A rollback drains, even from naive: rolling."""
        return Rolling.name

    def promise(self, floor: int, peak: int, size: int) -> str:
        return "none: naive kills servers while they still get traffic"


DEFAULT_WEIGHTS: tuple[int, ...] = (5, 25, 50, 100)  # --steps: the canary's share of requests, step by step


def canary_new(size: int, weight: int) -> int:
    """New servers the canary runs at ``weight`` % in a fleet of ``size``: enough to carry that share,
    ceil(size x weight / 100), at least 1 (and all of them at 100)."""
    return size if weight >= 100 else min(size, max(1, math.ceil(size * weight / 100)))


def canary_old(size: int, weight: int) -> int:
    """Old servers it keeps at ``weight`` %: enough to carry the rest, ceil(size x (100 - weight) / 100),
    at least 1 below 100, none at 100. With ``canary_new`` that is size or size + 1 servers."""
    return 0 if weight >= 100 else max(1, math.ceil(size * (100 - weight) / 100))


def check_weights(weights: Sequence[int]) -> None:
    """Raise ValueError unless ``weights`` rise strictly from 1 to at most 100 and end at 100."""
    if not weights:
        raise ValueError("must name at least one step, e.g. 5,25,50,100")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 100:
            raise ValueError(f"{w!r} is not a whole percentage from 1 to 100")
    if any(b <= a for a, b in itertools.pairwise(weights)):
        raise ValueError(f"{','.join(map(str, weights))} must rise step by step")
    if weights[-1] != 100:
        raise ValueError(f"{','.join(map(str, weights))} must end at 100 (the whole fleet on the new version)")


@_registered
class Canary(RolloutStrategy):
    """A share of the requests by weight (``--steps``), step by step, with an analysis at each step.

    At weight w the fleet runs ``canary_new(size, w)`` new servers and ``canary_old(size, w)`` old
    ones: each step starts the new servers it lacks, attaches them, then detaches, drains and stops
    the old ones it no longer needs (capacity never dips; at most one slot holds both, plus the new
    servers of the step being started). Batch k is step k (a step with nothing to start or stop has
    no batch: only its weight changes). The weights themselves are the load balancer's (dynamic
    mode; reload mode has only the server count), set by the rehearsal (``rollout.canary``)."""

    name = "canary"
    help = "a share of requests by weight (--steps 5,25,50,100), an analysis of new against old at each step"
    weighted = True

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return self.bounds(batch, size, DEFAULT_WEIGHTS)

    def bounds(self, batch: int, size: int, weights: Sequence[int]) -> tuple[int, int]:
        old, surge = size, 0
        for w in weights:
            surge = max(surge, canary_new(size, w) + old - size)
            old = canary_old(size, w)
        return (0, surge)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return _start_first(batch, batch_no)

    def roll(self, rebuild: Sequence[tuple[int, Server | None]], *, batch: int, size: int, mode: Mode,
             weights: Sequence[int], first_batch: int) -> list[Step]:
        """Step k starts the next new servers (in ``rebuild``'s order) and stops the old ones beyond
        what weight k needs; servers already new (a resumed canary) count towards each step."""
        m = len(rebuild)
        done = size - m  # slots already on the new version
        started = retired = 0
        out: list[Step] = []
        for k, w in enumerate(weights):
            start_to = min(m, max(0, canary_new(size, w) - done))
            retire_to = min(start_to, max(0, m - canary_old(size, w)))
            new = [Ref(slot) for slot, _ in rebuild[started:start_to]]
            gone = [ref(s) for _, s in rebuild[retired:retire_to] if s is not None]
            live = [ref(s) for _, s in rebuild[retired:retire_to] if s is not None and s.attached]
            out += steps(first_batch + k, ("start", new), ("ready", new), ("attach", new), ("detach", live),
                         ("drain", gone), ("stop", gone))
            started, retired = start_to, retire_to
        return out

    @property
    def rollback_strategy(self) -> Strategy:
        """A canary rolls back like surge: an old server started and attached before each new one leaves."""
        return Surge.name

    def promise(self, floor: int, peak: int, size: int) -> str:
        return f"a share of requests by weight; capacity never below {floor} of {size}, at most {peak} containers"


NAMES: tuple[Strategy, ...] = tuple(REGISTRY)
DEFAULT_STRATEGY: Strategy = OneAtATime.name


class Unregistered(RolloutStrategy):
    """A name the registry does not know (compare's swarm-native, a report without a strategy):
    judged, labelled and titled like a plain strategy; the planner refuses it."""

    help = "not a strategy of the planner"

    def __init__(self, name: str) -> None:
        self.name = name

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        raise PlanError(f"strategy: {self.name!r} is not one of {', '.join(NAMES)}", field="strategy")

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        raise PlanError(f"strategy: {self.name!r} is not one of {', '.join(NAMES)}", field="strategy")


def of(name: object) -> RolloutStrategy:
    """The strategy called ``name``; for a name outside the registry, an ``Unregistered`` one."""
    return REGISTRY[name] if isinstance(name, str) and name in REGISTRY else Unregistered(str(name))

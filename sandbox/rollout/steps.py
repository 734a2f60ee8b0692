"""The planner's vocabulary: servers, the steps that act on them, and one batch's refs.

Shared by the planner (``plan``) and the strategies (``strategies``), which build
each batch's steps from these pieces. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Version = str  # the user's name for a version: v1, 1.4.2, green (the toy app has v1 and v2)
Mode = Literal["replace", "in-place"]
# 'term': send the stop signal and wait the detach lag, the server still attached (``plan.signal_first``)
Action = Literal["start", "ready", "attach", "detach", "drain", "stop", "kill", "swap", "switch", "reattach", "term"]


@dataclass(frozen=True)
class Server:
    """One app container as the controller sees it now."""

    id: str  # container id (opaque to the planner)
    slot: int  # 1..size
    version: Version
    attached: bool  # in the load balancer config now
    alive: bool = True  # False: the container exited (killed, crashed); it is removed and its slot rebuilt


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


def ref(server: Server) -> Ref:
    """The Ref of an existing container."""
    return Ref(server.slot, server.id)


@dataclass(frozen=True)
class Batch:
    """The slots one batch rebuilds: (slot, its old server or None if empty), in pick order."""

    slots: tuple[tuple[int, Server | None], ...]

    @property
    def old(self) -> list[Ref]:
        """The old servers."""
        return [ref(s) for _, s in self.slots if s is not None]

    @property
    def live(self) -> list[Ref]:
        """The old servers attached now."""
        return [ref(s) for _, s in self.slots if s is not None and s.attached]

    @property
    def new(self) -> list[Ref]:
        """The new container of every slot."""
        return [Ref(slot) for slot, _ in self.slots]

    @property
    def empty(self) -> list[Ref]:
        """The new containers of the empty slots."""
        return [Ref(slot) for slot, s in self.slots if s is None]

    @property
    def unattached(self) -> list[Ref]:
        """Every server of the batch not attached now (old detached ones, then new ones), by slot."""
        return sorted([ref(s) for _, s in self.slots if s is not None and not s.attached] + self.empty,
                      key=lambda r: r.slot)

    @property
    def fresh(self) -> list[Ref]:
        """In place: every server the batch ends with (old ones swapped, new ones in empty slots), by slot."""
        return sorted(self.old + self.empty, key=lambda r: r.slot)


def steps(batch_no: int, *pairs: tuple[Action, Iterable[Ref]]) -> list[Step]:
    """Steps for (action, targets) pairs, skipping those with no targets."""
    out = []
    for action, refs in pairs:
        targets = tuple(refs)
        if targets:
            out.append(Step(action, targets, batch_no))
    return out


def switch(batch_no: int, attach: Sequence[Ref], detach: Sequence[Ref]) -> list[Step]:
    """One 'switch' step (attach and detach in one reload), or none if it has nothing to do."""
    if not attach and not detach:
        return []
    return [Step("switch", tuple(attach), batch_no, detach=tuple(detach))]

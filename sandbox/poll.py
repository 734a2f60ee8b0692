"""The one way to wait for something with a deadline: poll a check until it gives an answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Deadline:
    """``seconds`` from now (monotonic clock)."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed)

    def expired(self) -> bool:
        return self.elapsed >= self.seconds


async def poll(check: Callable[[], Awaitable[T | None]], *, timeout: float, interval: float) -> T | None:
    """Call ``check`` every ``interval`` seconds until it returns something other than None, and
    return that; return None once ``timeout`` seconds have passed (``check`` runs at least once)."""
    deadline = Deadline(timeout)
    while True:
        answer = await check()
        if answer is not None:
            return answer
        if deadline.expired():
            return None
        await asyncio.sleep(min(interval, deadline.remaining) or interval)

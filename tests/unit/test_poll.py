from __future__ import annotations

import asyncio

import pytest

from sandbox.poll import Deadline, poll


def test_deadline_counts_down() -> None:
    d = Deadline(10, started=0.0)
    assert d.expired()  # the monotonic clock is far past 10 s after 0
    fresh = Deadline(60)
    assert not fresh.expired() and 59 < fresh.remaining <= 60


@pytest.mark.asyncio
async def test_poll_returns_the_first_answer() -> None:
    calls = []

    async def check() -> str | None:
        calls.append(1)
        return "ready" if len(calls) == 3 else None

    assert await poll(check, timeout=5, interval=0.001) == "ready"
    assert len(calls) == 3


@pytest.mark.asyncio
async def test_poll_gives_none_after_the_timeout_and_checks_at_least_once() -> None:
    calls = []

    async def never() -> int | None:
        calls.append(1)
        return None

    assert await poll(never, timeout=0.05, interval=0.01) is None
    assert 2 <= len(calls) <= 10


@pytest.mark.asyncio
async def test_poll_with_zero_timeout_checks_once() -> None:
    async def zero() -> int | None:
        return 0  # a falsy answer is still an answer

    assert await poll(zero, timeout=0, interval=1) == 0
    assert await asyncio.wait_for(poll(lambda: asyncio.sleep(0, None), timeout=0, interval=1), 1) is None

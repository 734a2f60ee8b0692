"""The per-project lock: a second command on a busy project exits 2 naming the holder."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from sandbox import lock
from sandbox.config import Settings
from sandbox.errors import EXIT_USAGE, UsageError, exit_code_for


def _hold(project: str, held: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event) -> None:
    with lock.project_lock(project, "roll"):
        held.set()
        release.wait(30)


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def test_a_second_process_is_refused_naming_the_holder_until_it_ends() -> None:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock inherited
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=("p", held, release))
    holder.start()
    try:
        assert held.wait(30)
        busy = rf"'p' is busy: `.*` \(roll, pid {holder.pid}\) since \d\d:\d\d:\d\d"
        with pytest.raises(UsageError, match=busy) as err, lock.project_lock("p", "down"):
            pass
        assert exit_code_for(err.value) == EXIT_USAGE
        with lock.project_lock("q", "up"):  # another project is free
            pass
    finally:
        release.set()
        holder.join(30)
    with lock.project_lock("p", "down"):  # the holder's exit released it
        pass


def test_the_lock_is_per_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    here = lock.lock_path("p")
    monkeypatch.setenv("DOCKER_HOST", "tcp://elsewhere:2375")
    assert lock.lock_path("p") != here and lock.lock_path("p").parent == here.parent


@pytest.mark.asyncio
async def test_a_command_holds_the_lock_and_may_nest_in_its_own_process() -> None:
    seen: list[str] = []

    @lock.locked("up")
    async def inner(settings: Settings) -> None:
        seen.append(lock.lock_path(settings.project).read_text())

    @lock.locked("demo")
    async def outer(settings: Settings) -> None:
        await inner(settings)

    await outer(Settings(project="p"))
    assert f'"pid": {os.getpid()}, "command": "demo"' in seen[0]
    assert lock.lock_path("p").read_text() == ""  # released: nothing names a holder

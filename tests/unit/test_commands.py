"""Commands' guards that run before anything is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox import commands
from sandbox.config import Settings
from sandbox.errors import EXIT_USAGE, UsageError, exit_code_for
from tests.unit.fakes import FakeRuntime


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # the commands' project locks


@pytest.mark.asyncio
async def test_compare_never_removes_a_project_it_did_not_create() -> None:
    runtime = FakeRuntime("cmp-2")
    runtime.up(2)
    with pytest.raises(UsageError, match=r"cmp-2 already exists; .*--replace removes them first") as err:
        await commands.compare(Settings(project="cmp"), runtime=runtime,  # type: ignore[arg-type]
                               strategies=["one-at-a-time", "rolling"])
    assert exit_code_for(err.value) == EXIT_USAGE
    assert runtime.log == [] and "cmp-2" in runtime.lbs


@pytest.mark.asyncio
async def test_compare_replace_removes_the_existing_fleet_first(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = FakeRuntime("cmp-1")
    runtime.up(2)
    started: list[str] = []

    async def up(settings: Settings, **_: Any) -> None:
        started.append(settings.project)
        raise UsageError("stop here")
    monkeypatch.setattr(commands, "up", up)
    with pytest.raises(UsageError, match="stop here"):
        await commands.compare(Settings(project="cmp"), runtime=runtime,  # type: ignore[arg-type]
                               strategies=["rolling", "one-at-a-time"], replace=True)
    assert runtime.log == ["down cmp-1"] and started == ["cmp-1"]

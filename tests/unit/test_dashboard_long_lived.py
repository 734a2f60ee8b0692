"""The live views' open long-lived connections per version: the dynamic LB's count per server,
summed by the version each address held, polled while the rehearsal runs."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.fleet.engine import Instance
from sandbox.rollout.rehearsal import open_by_version, rehearse
from sandbox.ui.progress import Progress
from sandbox.ui.state import RolloutState
from tests.unit.test_rehearsal import World

STATIC = Path(__file__).resolve().parents[2] / "sandbox" / "ui" / "static"


def inst(name: str, ip: str, version: str) -> Instance:
    return Instance(id=name, name=name, slot=1, version=version, state="running", ip=ip, created="1")


def test_open_connections_are_summed_by_the_version_each_address_held() -> None:
    instances = [inst("a1", "10.0.0.1", "v1"), inst("a2", "10.0.0.2", "v1")]
    address = instances[0].address or ""
    events: list[Any] = [{"t": 1.0, "phase": "start", "instance": "n1", "address": "10.0.0.9:8000", "version": "v2"},
                         {"t": 2.0, "phase": "stop", "instance": "a2", "address": "10.0.0.2:8000", "version": "v1"}]
    counts = {address: 3, "10.0.0.2:8000": 0, "10.0.0.9:8000": 2, "10.9.9.9:8000": 1}
    assert open_by_version(counts, instances, events) == {"v1": 3, "v2": 2, "?": 1}
    assert open_by_version({}, instances, events) == {}


def test_the_state_keeps_the_count_now_and_a_series() -> None:
    state = RolloutState()
    state.long_lived({"v1": 10}, 100.0)
    state.long_lived({"v1": 4, "v2": 6}, 100.5)
    live = state.snapshot()["live"]
    assert live["long_lived"] == {"v1": 4, "v2": 6}
    assert live["long_lived_series"] == [[0.0, {"v1": 10}], [0.5, {"v1": 4, "v2": 6}]]
    assert "long_lived" not in RolloutState().snapshot()["live"]  # the page hides the column then


@pytest.mark.parametrize(("lb_apply", "ws_users", "polled"), [
    ("dynamic", 2, True), ("dynamic", 0, False), ("reload", 2, False),
])
@pytest.mark.asyncio
async def test_the_rehearsal_polls_the_lb_while_it_runs_in_dynamic_mode_with_long_lived_users(
        lb_apply: str, ws_users: int, polled: bool) -> None:
    world = World(3)
    world.balancer.state.lb_apply = lb_apply
    world.deps = replace(world.deps, long_lived_check=_no_problem)
    a1 = world.runtime.containers["a1"]
    world.balancer.long_lived_counts = {a1.address or "": 7}
    state = RolloutState()
    settings = Settings(project="p", size=3, settle_s=0, ready_timeout=0.05, drain_timeout=1, warmup_s=0.3,
                        cooldown_s=0.01, ws_users=ws_users)
    await rehearse(settings, runtime=world.runtime, progress=Progress(io.StringIO(), state=state),
                   deps=world.deps, install_sigint=False)
    live = state.snapshot()["live"]
    if polled:
        assert {"v1": 7} in [counts for _, counts in live["long_lived_series"]], live
    else:
        assert "long_lived" not in live


async def _no_problem(url: str, **kw: Any) -> str | None:
    return None


def test_the_page_has_the_column_and_shows_it_only_with_long_lived_figures() -> None:
    page, script = (STATIC / "index.html").read_text(), (STATIC / "page.js").read_text()
    assert 'id="ll-v1"' in page and 'id="ll-v2"' in page and "open ws/sse" in page
    assert "live.long_lived" in script and "el.hidden = !ll" in script

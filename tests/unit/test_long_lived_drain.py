"""Dynamic mode: the drain of a detached server that holds long-lived connections sends its stop
signal, waits until the LB counts none open to it, and only then is the server stopped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.fleet.engine import Instance
from tests.unit.fakes import FakeBalancer, FakeRuntime
from tests.unit.test_executor import fleet_and_executor, roll, settings_for


def long_lived_seen(balancer: FakeBalancer, runtime: FakeRuntime, counts: list[int]) -> list[str]:
    """The LB reports ``counts`` (the last one forever) for the one server; returns the runtime
    log as it was at each LB read, to show what had happened by then."""
    (inst,) = runtime.containers.values()
    seen: Iterator[int] = iter(counts)
    at_read: list[str] = []

    async def long_lived() -> dict[str, int]:
        at_read.append(" | ".join(runtime.log))
        return {inst.address or "": next(seen, counts[-1]), "10.0.0.99:8000": 7}  # another server's
    balancer.long_lived = long_lived  # type: ignore[method-assign]
    return at_read


def one_server(**settings: Any) -> tuple[FakeRuntime, FakeBalancer, Any, Instance, Any]:
    s = settings_for(1, **settings)
    runtime, balancer, executor = fleet_and_executor(1, s)
    balancer.state.lb_apply = "dynamic"
    (inst,) = runtime.containers.values()
    return runtime, balancer, executor, inst, s


def drain_of(executor: Any) -> dict[str, Any]:
    (drain,) = [e for e in executor.events if e["phase"] == "drain"]
    detail: dict[str, Any] = drain["detail"]
    return detail


@pytest.mark.asyncio
async def test_the_stop_signal_closes_them_and_the_server_is_stopped_once_the_lb_counts_none() -> None:
    runtime, balancer, executor, inst, settings = one_server()
    at_read = long_lived_seen(balancer, runtime, [4, 4, 2, 0])
    await roll(runtime, executor, settings)
    assert runtime.log[:3] == [f"lb -{inst.name}", f"term {inst.name}", f"stop {inst.name}"]
    # the signal went before the second read, the stop only after the read that saw 0
    assert "term" not in at_read[0] and f"term {inst.name}" in at_read[1]
    assert all("stop" not in log for log in at_read)
    detail = drain_of(executor)
    assert detail["long_lived"] == 4 and detail["long_lived_left"] == 0, detail
    assert detail["long_lived_timed_out"] is False and detail["timed_out"] is False
    assert detail["long_lived_close_s"] >= 0
    phases = [e["phase"] for e in executor.events if e["instance"] == inst.name]
    assert phases.index("drain") < phases.index("stop")


@pytest.mark.asyncio
async def test_connections_still_open_at_the_drain_timeout_make_a_timed_out_drain() -> None:
    runtime, balancer, executor, inst, settings = one_server(drain_timeout=0.05)
    long_lived_seen(balancer, runtime, [3])  # an app that ignores its stop signal's meaning
    await roll(runtime, executor, settings)
    detail = drain_of(executor)
    assert detail["long_lived"] == 3 and detail["long_lived_left"] == 3, detail
    assert detail["long_lived_timed_out"] is True and detail["timed_out"] is True
    assert f"stop {inst.name}" in runtime.log  # the stop still comes: the rollout goes on


@pytest.mark.asyncio
async def test_no_long_lived_connection_no_early_signal() -> None:
    runtime, balancer, executor, inst, settings = one_server()
    long_lived_seen(balancer, runtime, [0])
    await roll(runtime, executor, settings)
    assert f"term {inst.name}" not in runtime.log
    assert drain_of(executor)["long_lived"] == 0


@pytest.mark.asyncio
async def test_a_server_signalled_by_the_detach_lag_is_not_signalled_twice() -> None:
    runtime, balancer, executor, inst, settings = one_server(detach_lag_s=0.01)
    long_lived_seen(balancer, runtime, [2, 1, 0])
    await roll(runtime, executor, settings)
    assert runtime.log.count(f"term {inst.name}") == 1
    assert runtime.log.index(f"term {inst.name}") < runtime.log.index(f"lb -{inst.name}")
    assert drain_of(executor)["long_lived_left"] == 0


@pytest.mark.asyncio
async def test_in_place_the_swap_restarts_the_app_and_nothing_is_signalled() -> None:
    runtime, balancer, executor, inst, settings = one_server(mode="in-place")
    at_read = long_lived_seen(balancer, runtime, [5])
    await roll(runtime, executor, settings)
    assert at_read == [] and f"term {inst.name}" not in runtime.log
    assert "long_lived" not in drain_of(executor)

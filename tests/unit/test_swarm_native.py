"""swarm-native against fakes: the fleet's declared versions, the shared load phases and report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.fleet.images import ImageSet
from sandbox.fleet.swarm import UpdatePolicy
from sandbox.load.run import LoadEnd
from sandbox.results.records import RequestRow
from sandbox.rollout.rehearsal import Deps
from sandbox.rollout.swarm_native import rehearse
from tests.unit.fakes import FakeBalancer, FakeLoad, row

NAMED = ImageSet(base="base:test", app={"old": "app:old", "new": "app:new"}, lb="lb:test")


class FakeSwarm:
    """Swarm as one service whose tasks serve at once; its update completes when asked."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.tasks: dict[str, str] = {}
        self.started: tuple[str, str] | None = None  # (version, image) of the service
        self.updated_to: str | None = None
        self.removed: list[str] = []

    async def ensure_network(self, project: str) -> None:
        self.log.append(f"network {project}")

    async def start_lb(self, project: str, port: int, image: str) -> None:
        self.log.append(f"lb {image}")

    async def start_replicated(self, project: str, version: str, image: str, env: dict[str, str],
                               replicas: int, healthcheck: bool = False) -> str:
        self.started = (version, image)
        self.tasks = {f"task{n:012d}": f"10.0.0.{n}:8000" for n in range(1, replicas + 1)}
        return "service"

    async def serving(self, project: str, service_id: str) -> tuple[dict[str, str], int]:
        return dict(self.tasks), len(self.tasks)

    async def update_image(self, service_id: str, image: str, policy: UpdatePolicy) -> None:
        self.updated_to = image

    async def update_state(self, service_id: str) -> str:
        return "completed"

    async def down(self, project: str) -> dict[str, int]:
        self.removed.append(project)
        return {}


async def native(settings: Settings, *, dies: bool = False) -> tuple[FakeSwarm, dict[str, Any]]:
    swarm = FakeSwarm()
    versions = iter(["old", "new"])

    def served() -> list[RequestRow]:  # one answer from each version, stamped now
        version = next(versions, None)
        return [row(time.time(), version=version, user=version)] if version else []

    def load(url: str, load_settings: Any, path: Path) -> FakeLoad:
        fake = FakeLoad(url, load_settings, path, feed=served)
        fake.dies = dies
        return fake

    deps = Deps(balancer=lambda runtime, project, port: FakeBalancer(runtime, project, port),  # type: ignore[arg-type]
                load=load, tick_s=0.001)  # type: ignore[arg-type]
    out = await rehearse(settings, runtime=swarm, images=NAMED, order="start-first", deps=deps)  # type: ignore[arg-type]
    return swarm, out


def settings(**extra: Any) -> Settings:
    return Settings(**{"project": "n", "size": 2, "warmup_s": 0.01, "cooldown_s": 0, **extra})


@pytest.mark.asyncio
async def test_it_rolls_the_declared_versions_and_reports_like_every_rehearsal() -> None:
    swarm, report = await native(settings())
    assert swarm.started == ("old", "app:old") and swarm.updated_to == "app:new"
    assert (report["from_version"], report["to_version"]) == ("old", "new")
    assert report["strategy"] == "swarm-native:start-first" and report["outcome"] == "completed"
    assert report["load"] is True and report["load_alive"] is True and report["users"] == settings().users
    assert swarm.removed == ["n"]  # the fleet is removed afterwards
    phases = [s["phase"] for s in report["steps"]]
    assert phases[:3] == ["attach", "attach", "load-start"] and "rollout-start" in phases and phases[-1] == "load-stop"


@pytest.mark.asyncio
async def test_a_load_generator_that_died_is_reported() -> None:
    _, report = await native(settings(), dies=True)
    assert report["load_alive"] is False
    assert next(c for c in report["verdict"]["checks"] if c["name"] == "load_alive")["pass"] is False


@pytest.mark.asyncio
async def test_its_versions_follow_the_settings() -> None:
    swarm, report = await native(settings(images=dict(NAMED.app), version="new", to_version="old"))
    assert swarm.started == ("new", "app:new") and swarm.updated_to == "app:old"
    assert (report["from_version"], report["to_version"]) == ("new", "old")


@pytest.mark.asyncio
async def test_swarms_own_update_says_its_checks_did_not_run() -> None:
    _, report = await native(settings(mixed_checks=("./a.sh",)))
    assert report["mixed_checks"][0]["status"] == "not_run" and "Swarm" in report["mixed_checks"][0]["reason"]
    assert next(c for c in report["verdict"]["checks"] if c["name"] == "mixed_check_1")["skipped"] is True


@pytest.mark.asyncio
@pytest.mark.parametrize(("end", "status"), [
    (LoadEnd(0, False, None, False, False, sent=2, written=2), "PASS"),
    (LoadEnd(-9, True, 1.0, False, False), "FAIL"),  # died mid-run
    (LoadEnd(-9, False, None, True, True), "FAIL"),  # SIGKILLed at its stop: rows may be lost
])
async def test_swarms_own_update_reports_whether_the_load_ran_whole(end: LoadEnd, status: str) -> None:
    """The controller's report judges swarm-native's load as any other run's, and its LB log is read."""
    swarm = FakeSwarm()

    def load(url: str, load_settings: Any, path: Path) -> FakeLoad:
        fake = FakeLoad(url, load_settings, path)
        fake.end = end
        return fake

    deps = Deps(balancer=lambda runtime, project, port: FakeBalancer(runtime, project, port),  # type: ignore[arg-type]
                load=load, tick_s=0.001)  # type: ignore[arg-type]
    report = await rehearse(settings(), runtime=swarm, images=NAMED, order="stop-first", deps=deps)  # type: ignore[arg-type]
    assert next(c for c in report["verdict"]["checks"] if c["name"] == "load_alive")["status"] == status
    assert report["unrecorded"] == 0  # read from the LB's log, not unknown

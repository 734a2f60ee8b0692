"""The engine and load-balancer seams: every implementation (the fakes included) has the
protocol's methods with the protocol's parameters, a type checker holds the fakes to the
protocols (``mypy tests/unit/test_protocols.py``), and no Docker SDK object is used above
``sandbox/fleet/``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from sandbox.fleet.balancer import NginxBalancer
from sandbox.fleet.engine import Engine
from sandbox.fleet.loadbalancer import LoadBalancer
from sandbox.fleet.runtime import DockerEngine
from sandbox.fleet.swarm import SwarmEngine
from tests.unit.fakes import FakeBalancer, FakeRuntime

SANDBOX = Path(__file__).resolve().parents[2] / "sandbox"


def test_the_fakes_are_what_the_protocols_say() -> None:
    runtime = FakeRuntime()
    engine: Engine = runtime  # a type checker rejects these two lines if a fake drifts
    balancer: LoadBalancer = FakeBalancer(runtime)
    assert engine.engine == "fake" and balancer.url == "http://127.0.0.1:18080"


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if not name.startswith("_") and inspect.isfunction(member)}


def _assert_implements(cls: type, protocol: type) -> None:
    """Every method of ``protocol`` on ``cls``, async where the protocol's is, with the same parameters."""
    for name, wanted in _methods(protocol).items():
        method = getattr(cls, name, None)
        is_async = inspect.iscoroutinefunction(getattr(protocol, name))
        assert method is not None and inspect.iscoroutinefunction(method) == is_async, f"{cls.__name__}.{name}"
        assert list(inspect.signature(method).parameters) == list(wanted.parameters), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("cls", [DockerEngine, SwarmEngine, FakeRuntime])
def test_every_engine_has_every_method_with_its_parameters(cls: type) -> None:
    _assert_implements(cls, Engine)


@pytest.mark.parametrize("cls", [NginxBalancer, FakeBalancer])
def test_every_balancer_has_every_method_with_its_parameters(cls: type) -> None:
    _assert_implements(cls, LoadBalancer)
    assert isinstance(getattr(cls, "url", None), property) and isinstance(getattr(cls, "dynamic", None), property)


def test_swarm_is_a_sibling_of_docker_not_a_kind_of_it() -> None:
    assert not issubclass(SwarmEngine, DockerEngine) and not issubclass(DockerEngine, SwarmEngine)


DOCKER_IMPORT = re.compile(r"^\s*(import docker\b|from docker\b)", re.MULTILINE)
CLIENT = re.compile(r"\b(?!self\.|http\.)\w+\.client\b")  # runtime.client; not Locust's self.client, not http.client


def test_no_docker_sdk_above_fleet() -> None:
    above = [p for p in SANDBOX.rglob("*.py") if "fleet" not in p.relative_to(SANDBOX).parts]
    assert len(above) > 20
    found = [f"{p.relative_to(SANDBOX)}: {m.group(0).strip()}" for p in above
             for pattern in (DOCKER_IMPORT, CLIENT) for m in pattern.finditer(p.read_text())]
    assert found == []

"""Helpers shared by the unit and end-to-end tests, and the check that every end-to-end test is marked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.ports import free_port  # the one way the project picks a port; tests import it from here

__all__ = ["free_port"]

pytest_plugins = ["pytester"]  # tests of the sandbox_fleet plugin run small pytest sessions of their own

E2E = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test under tests/e2e lacks the ``e2e`` marker (``-m "not e2e"`` would run it).

    ``SANDBOX_TEST_PHASE`` (set by scripts/test.sh) splits the suite in two runs: ``shared`` deselects
    the ``swarm_mode`` tests, ``swarm`` keeps only them (they must not overlap other fleets).
    """
    unmarked = [item.nodeid for item in items
                if item.path.is_relative_to(E2E) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("tests under tests/e2e without the e2e marker: " + ", ".join(unmarked))
    phase = os.environ.get("SANDBOX_TEST_PHASE", "")
    if phase not in ("", "shared", "swarm"):
        raise pytest.UsageError(f"SANDBOX_TEST_PHASE: {phase!r} must be shared or swarm")
    if phase:
        keep = [item for item in items if (item.get_closest_marker("swarm_mode") is not None) == (phase == "swarm")]
        dropped = [item for item in items if item not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

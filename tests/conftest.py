"""Helpers shared by the unit and end-to-end tests, and the check that every end-to-end test is marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.ports import free_port  # the one way the project picks a port; tests import it from here

__all__ = ["free_port"]

pytest_plugins = ["pytester"]  # tests of the sandbox_fleet plugin run small pytest sessions of their own

E2E = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run when a test under tests/e2e lacks the ``e2e`` marker (``-m "not e2e"`` would run it)."""
    unmarked = [item.nodeid for item in items
                if item.path.is_relative_to(E2E) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("tests under tests/e2e without the e2e marker: " + ", ".join(unmarked))

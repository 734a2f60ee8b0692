"""Helpers shared by the unit and end-to-end tests, and the check that every end-to-end test is marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.ports import free_port  # the one way the project picks a port; tests import it from here

__all__ = ["free_port"]

pytest_plugins = ["pytester"]  # tests of the sandbox_fleet plugin run small pytest sessions of their own

E2E = Path(__file__).parent / "e2e"
# Seconds each test file took in a whole run (scripts/suite_durations.py writes it from a JUnit file): the
# suite runs the costliest files first, so no worker starts a long end-to-end file when the rest are done
DURATIONS = Path(__file__).parent / "durations.json"
UNKNOWN_E2E_S = 60.0  # a file the table does not know yet: an end-to-end file costs about a fleet's minute


def file_costs() -> dict[str, float]:
    """The table of seconds per test file (path relative to the repository), empty when absent or unreadable."""
    try:
        table = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in table.items()} if isinstance(table, dict) else {}


def costliest_first(items: list[pytest.Item], costs: dict[str, float], root: Path) -> list[pytest.Item]:
    """``items`` with their files ordered by cost, highest first (unknown e2e files at UNKNOWN_E2E_S, other
    unknown files at 0), each file's own tests in their order. The sort is stable, so files of equal cost
    keep the collection's order. With ``--dist loadfile --no-loadscope-reorder`` (scripts/test.sh), xdist
    hands the files out in this order: longest processing time first."""
    def cost(item: pytest.Item) -> float:
        rel = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else str(item.path)
        return costs.get(rel, UNKNOWN_E2E_S if item.path.is_relative_to(E2E) else 0.0)
    first_seen: dict[Path, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)
    return sorted(items, key=lambda item: (-cost(item), first_seen[item.path]))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test under tests/e2e lacks the ``e2e`` marker (``-m "not e2e"`` would run it);
    then order the files costliest first (:func:`costliest_first`)."""
    unmarked = [item.nodeid for item in items
                if item.path.is_relative_to(E2E) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("tests under tests/e2e without the e2e marker: " + ", ".join(unmarked))
    items[:] = costliest_first(items, file_costs(), config.rootpath)

"""Helpers shared by the unit and end-to-end tests."""

from __future__ import annotations

from sandbox.ports import free_port  # the one way the project picks a port; tests import it from here

__all__ = ["free_port"]

pytest_plugins = ["pytester"]  # tests of the sandbox_fleet plugin run small pytest sessions of their own

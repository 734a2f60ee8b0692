"""Helpers shared by the unit and end-to-end tests."""

from __future__ import annotations

import socket

pytest_plugins = ["pytester"]  # tests of the sandbox_fleet plugin run small pytest sessions of their own


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

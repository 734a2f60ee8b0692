"""Unit tests keep the per-project runtime files (locks, the steering socket) in a private directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A short private XDG_RUNTIME_DIR (a Unix socket's path must fit in 108 bytes)."""
    path = tempfile.mkdtemp(prefix="sbx-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", path)
    yield
    shutil.rmtree(path, ignore_errors=True)

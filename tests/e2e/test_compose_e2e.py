"""compose/docker-compose.yml is valid for Debian's docker-compose."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: scripts/setup.sh installs it"
    proc = subprocess.run([exe, "-f", str(REPO / "compose" / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for service in ("app1:", "app2:", "app3:", "lb:"):
        assert service in proc.stdout
    assert "rolling-sandbox/app:v1" in proc.stdout and "127.0.0.1" in proc.stdout
